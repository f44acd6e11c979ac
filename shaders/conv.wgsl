#if F16_MATH
enable f16;
#else
#if XP_F16
enable f16;
#endif
#endif

#if XP_F16
alias XpVec = vec4<f16>;
#else
alias XpVec = vec4<f32>;
#endif

// 2-D convolution as an implicit GEMM (1-D convolutions run as height-1 2-D ones), in two passes.
//
// INPUT (entry `conv_input`): the NCHW input is copied once into a zero-padded channels-last
// tensor xp[b, y, x, c] of shape [B, H + pad_top + pad_bottom, W + pad_left + pad_right, C4],
// with C4 = Cin rounded up to 4 (the extra channels are zero, as are their weights), applying
// HiFi-GAN's leaky ReLU to the inputs on the way (IN_LEAKY_RELU; zero stays zero).
//
// (default, entries `conv2d` and `conv2d_naive`): with taps inside the padded tensor and the
// channels of one tap contiguous, the reduction runs over (ky, kx, c) reading vec4s along c from
// both operands, as `matmul_k4` does (a software adapter turns every per-lane load into a gather;
// vec4s quarter them), and needs no bounds checks:
// out[b, co, oy, ox] = act(bias[co] + sum_{ky, kx, c} xp[b, oy*sh + ky*dh, ox*sw + kx*dw, c]
//                                                      * w[co, ky, kx, c]) + residual[b, co, oy, ox]
// The weight is laid out once at load as [Cout, kh, kw, C4]. Defines: ACT (epilogue), W_F16, BIAS,
// RESIDUAL, TM (pixels) x TN (output channels) per thread, PHASES: a transposed convolution
// computed phase by phase (weight row r * phase_cout + co is phase r of output channel co; see
// `Graph::conv_transpose1d`), whose results are stored interleaved into [B, phase_cout, out_len].
//
// `conv2d_tiles` is the GPU variant: a 16 x 16 workgroup computes 64 pixels x 64 output channels,
// staging four vec4s of the reduction for its 64 pixels and 64 channels in workgroup memory per
// step; F16_MATH (needs SHADER_F16) stages them as f16 and multiplies in f16, accumulating in f32.
//
// XP_F16 (with F16_MATH, and in the portable kernel standing by for it): the padded tensor is
// stored in f16, written so by the input pass. F16_MATH rounds its values to f16 anyway, so the
// products are the same and half the bytes are written and read.
//
// Tensors larger than one binding: `Graph::conv_ops` then copies windows of padded rows (one batch
// item, the output rows' inputs with their halo) and convolves each into the output part that
// holds its channels. Both passes take the window's place in the whole tensor from the uniform
// block; every output is the same sum in the same order as unsplit.

#if INPUT
// A window of the padded tensor: rows row0.. (padded coordinates) of batch items b0.., holding
// p.hp rows each. x is bound from its (item, channel) plane unit0 on; this dispatch writes
// channels c_lo..c_hi, and with MERGE keeps what earlier dispatches wrote for the others.
// With NORM, a GroupNorm of `groups` groups (`cpg` channels each) is applied to the values read:
// stats[3 * (b * groups + g)] holds (shift, mean, rstd) of item b's group g (see norm.wgsl's
// `group_stats`), then gamma, beta and, with ACT_SILU, SiLU, as `group_norm` computes them.
struct Params {
    n: u32, cin: u32, h: u32, w: u32,
    c4: u32, hp: u32, wp: u32, pad_top: u32,
    pad_left: u32, in_slope: f32, row0: u32, b0: u32,
    unit0: u32, c_lo: u32, c_hi: u32, groups: u32,
    cpg: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
#if NORM
@group(0) @binding(2) var<storage, read> stats: array<f32>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> beta: array<f32>;
@group(0) @binding(5) var<storage, read_write> xp: array<XpVec>;
#include "_activation.wgsl"
#else
@group(0) @binding(2) var<storage, read_write> xp: array<XpVec>;
#endif

// One thread per vec4 of the output.
@compute @workgroup_size(256, 1, 1)
fn conv_input(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * groups.x) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    let c0 = (i % p.c4) * 4u;
    let at = i / p.c4;
    let iy = i32(p.row0 + (at / p.wp) % p.hp) - i32(p.pad_top);
    let ix = i32(at % p.wp) - i32(p.pad_left);
    let b = p.b0 + at / (p.wp * p.hp);
    let inside = iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w);
    let plane = p.h * p.w;
    var v = vec4<f32>(0.0);
#if MERGE
    v = vec4<f32>(xp[i]);
#endif
    for (var t = 0u; t < 4u; t++) {
        let c = c0 + t;
        if (c >= p.c_lo && c < p.c_hi) {
            var e = 0.0;
            if (inside) {
                e = x[(b * p.cin + c - p.unit0) * plane + u32(iy) * p.w + u32(ix)];
#if NORM
                let at = 3u * (b * p.groups + c / p.cpg);
                e = ((e - stats[at]) - stats[at + 1u]) * stats[at + 2u] * gamma[c] + beta[c];
                e = activate(e, 0.0);
#endif
            }
#if IN_LEAKY_RELU
            e = select(e * p.in_slope, e, e >= 0.0);
#endif
            v[t] = e;
        }
    }
    xp[i] = XpVec(v);
}
#else
struct Params {
    batch: u32, c4: u32, hp: u32, wp: u32,
    cout: u32, oh: u32, ow: u32, kh: u32,
    kw: u32, stride_h: u32, stride_w: u32, dil_h: u32,
    dil_w: u32, slope: f32, phases: u32, phase_cout: u32,
    out_len: u32, phase_pad: u32,
    // The window (see `Graph::conv_spec`): oh above counts its rows, from output row row0 of
    // out_h; cout counts its channels, from weight row co_lo; items from b0; the output is bound
    // from (item, channel) plane unit0 of out_c channels per item.
    row0: u32, out_h: u32, out_c: u32, b0: u32,
    unit0: u32, co_lo: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> xp: array<XpVec>;
#include "_weights_vec4.wgsl"
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

#include "_activation.wgsl"

fn load_x(i: u32) -> vec4<f32> {
    return vec4<f32>(xp[i]);
}

fn store(pixel: u32, row: u32, acc: f32) {
    let plane = p.oh * p.ow;
    let b = pixel / plane;
#if PHASES
    // Row r * phase_cout + co, position q is output (co, phases * q + r - phase_pad).
    let co = row % p.phase_cout;
    let t = i32(p.phases * (pixel % plane) + row / p.phase_cout) - i32(p.phase_pad);
    if (t < 0 || t >= i32(p.out_len)) {
        return;
    }
    let at = (b * p.phase_cout + co) * p.out_len + u32(t);
#else
    let co = p.co_lo + row;
    let at = ((p.b0 + b) * p.out_c + co - p.unit0) * (p.out_h * p.ow) + p.row0 * p.ow
        + pixel % plane;
#endif
    var v = acc;
#if BIAS
    v = v + bias[co];
#endif
    v = activate(v, p.slope);
#if RESIDUAL
    v = v + residual[at];
#endif
    out[at] = v;
}

// Where output pixel `pixel`'s tap (0, 0) starts in xp, in vec4s.
fn first_tap(pixel: u32) -> u32 {
    let b = pixel / (p.oh * p.ow);
    let rem = pixel % (p.oh * p.ow);
    let y = (rem / p.ow) * p.stride_h;
    let x = (rem % p.ow) * p.stride_w;
    return ((b * p.hp + y) * p.wp + x) * p.c4;
}

// Each thread: TM consecutive output pixels (flattened over batch, rows, columns) x TN output
// channels, accumulated in registers.
@compute @workgroup_size(8, 8, 1)
fn conv2d(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let pixels = p.batch * p.oh * p.ow;
    let pix0 = ((wg.y + wg.z * 65535u) * 8u + lid.y) * ${TM}u;
    // Output channels are interleaved across the 8 threads of a row (channel = co0 + 8 j), so
    // that neighbouring threads (SIMD lanes on a CPU adapter) read neighbouring weight rows.
    let co0 = wg.x * 8u * ${TN}u + lid.x;
    if (pix0 >= pixels || co0 >= p.cout) {
        return;
    }
    // Pixels and channels past the edge are clamped for loading and skipped at the store.
    var x_at: array<u32, ${TM}>;
    for (var i = 0u; i < ${TM}u; i++) {
        x_at[i] = first_tap(min(pix0 + i, pixels - 1u));
    }
    let row = p.kh * p.kw * p.c4;
    var w_at: array<u32, ${TN}>;
    for (var j = 0u; j < ${TN}u; j++) {
        w_at[j] = (p.co_lo + min(co0 + 8u * j, p.cout - 1u)) * row;
    }
    var acc: array<array<f32, ${TN}>, ${TM}>;
    var w_tap = 0u;
    for (var ky = 0u; ky < p.kh; ky++) {
        for (var kx = 0u; kx < p.kw; kx++) {
            let x_tap = (ky * p.dil_h * p.wp + kx * p.dil_w) * p.c4;
            for (var c = 0u; c < p.c4; c++) {
                var xv: array<vec4<f32>, ${TM}>;
                for (var i = 0u; i < ${TM}u; i++) {
                    xv[i] = load_x(x_at[i] + x_tap + c);
                }
                for (var j = 0u; j < ${TN}u; j++) {
                    let wv = load_w4(w_at[j] + w_tap + c);
                    for (var i = 0u; i < ${TM}u; i++) {
                        acc[i][j] += dot(xv[i], wv);
                    }
                }
            }
            w_tap += p.c4;
        }
    }
    for (var i = 0u; i < ${TM}u; i++) {
        for (var j = 0u; j < ${TN}u; j++) {
            if (pix0 + i < pixels && co0 + 8u * j < p.cout) {
                store(pix0 + i, co0 + 8u * j, acc[i][j]);
            }
        }
    }
}

#if F16_MATH
alias Vec = vec4<f16>;
#else
alias Vec = vec4<f32>;
#endif

// Four vec4s of the reduction for 64 pixels and for 64 channels: tile[step * 64 + pixel].
var<workgroup> x_tile: array<Vec, 256>;
var<workgroup> w_tile: array<Vec, 256>;

// Where vec4 q of the reduction over (ky, kx, c4) lies from a pixel's first tap, in vec4s.
fn tap_offset(q: u32) -> u32 {
    let tap = q / p.c4;
    return ((tap / p.kw) * p.dil_h * p.wp + (tap % p.kw) * p.dil_w) * p.c4 + q % p.c4;
}

@compute @workgroup_size(16, 16, 1)
fn conv2d_tiles(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let pixels = p.batch * p.oh * p.ow;
    let pix0 = (wg.y + wg.z * 65535u) * 64u;
    let co0 = wg.x * 64u;
    let total = p.kh * p.kw * p.c4;
    // This thread loads vec4 `step` of pixel pix0 + li / 4 and of channel co0 + li / 4 (clamped
    // at the edges, skipped at the store).
    let step = li % 4u;
    let x_at = first_tap(min(pix0 + li / 4u, pixels - 1u));
    let w_at = (p.co_lo + min(co0 + li / 4u, p.cout - 1u)) * total;
    var acc: array<array<f32, 4>, 4>;
    for (var q0 = 0u; q0 < total; q0 += 4u) {
        let q = q0 + step;
        var xv = vec4<f32>(0.0);
        var wv = vec4<f32>(0.0);
        if (q < total) {
            xv = load_x(x_at + tap_offset(q));
            wv = load_w4(w_at + q);
        }
        x_tile[step * 64u + li / 4u] = Vec(xv);
        w_tile[step * 64u + li / 4u] = Vec(wv);
        workgroupBarrier();
        for (var k = 0u; k < 4u; k++) {
            var xr: array<Vec, 4>;
            var wr: array<Vec, 4>;
            for (var i = 0u; i < 4u; i++) {
                xr[i] = x_tile[k * 64u + lid.y * 4u + i];
                // Channels interleaved across the 16 threads of a row.
                wr[i] = w_tile[k * 64u + lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] += f32(dot(xr[i], wr[j]));
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            let pixel = pix0 + lid.y * 4u + i;
            let co = co0 + lid.x + 16u * j;
            if (pixel < pixels && co < p.cout) {
                store(pixel, co, acc[i][j]);
            }
        }
    }
}

// One thread per output: the baseline the benchmark compares against.
@compute @workgroup_size(8, 8, 1)
fn conv2d_naive(@builtin(global_invocation_id) gid: vec3<u32>) {
    let pixels = p.batch * p.oh * p.ow;
    let pixel = gid.y + gid.z * 65535u * 8u;
    let co = gid.x;
    if (pixel >= pixels || co >= p.cout) {
        return;
    }
    let x_at = first_tap(pixel);
    var w_at = (p.co_lo + co) * p.kh * p.kw * p.c4;
    var acc = 0.0;
    for (var ky = 0u; ky < p.kh; ky++) {
        for (var kx = 0u; kx < p.kw; kx++) {
            let x_tap = x_at + (ky * p.dil_h * p.wp + kx * p.dil_w) * p.c4;
            for (var c = 0u; c < p.c4; c++) {
                acc += dot(load_x(x_tap + c), load_w4(w_at));
                w_at++;
            }
        }
    }
    store(pixel, co, acc);
}
#endif
