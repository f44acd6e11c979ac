// 2-D convolution as an implicit GEMM (1-D convolutions run as height-1 2-D ones).
//
// out[b, co, oy, ox] = act(bias[co] + sum_{ci, ky, kx} in_act(x[b, ci, iy, ix]) * w[ci, ky, kx, co])
//                      + residual[b, co, oy, ox]
// with iy = oy*stride_h - pad_top + ky*dil_h (likewise x); taps outside the input read zero.
// The weight is laid out once at load as [Cin, kh, kw, Cout] so a thread's output channels are
// contiguous. Defines: ACT (epilogue), IN_LEAKY_RELU (applied to inputs as they are read, as
// HiFi-GAN does before each convolution), W_F16, BIAS, RESIDUAL, TM (pixels) x TN (channels).

struct Params {
    batch: u32, cin: u32, h: u32, w: u32,
    cout: u32, oh: u32, ow: u32, kh: u32,
    kw: u32, stride_h: u32, stride_w: u32, pad_top: u32,
    pad_left: u32, dil_h: u32, dil_w: u32, slope: f32,
    in_slope: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
#include "_weights.wgsl"
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

#include "_activation.wgsl"

fn load_x(index: u32, valid: bool) -> f32 {
    var v = select(0.0, x[select(0u, index, valid)], valid);
#if IN_LEAKY_RELU
    v = select(v * p.in_slope, v, v >= 0.0);
#endif
    return v;
}

fn store(pixel: u32, co: u32, acc: f32) {
    let plane = p.oh * p.ow;
    let b = pixel / plane;
    let at = (b * p.cout + co) * plane + pixel % plane;
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

// Each thread: TM consecutive output pixels (flattened over batch, rows, columns) x TN consecutive
// output channels, accumulated in registers.
@compute @workgroup_size(8, 8, 1)
fn conv2d(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let pixels = p.batch * p.oh * p.ow;
    let pix0 = ((wg.y + wg.z * 65535u) * 8u + lid.y) * ${TM}u;
    // Output channels are interleaved across the 8 threads of a row (channel = co0 + 8 j), so
    // that neighbouring threads (SIMD lanes on a CPU adapter) read neighbouring weights.
    let co0 = wg.x * 8u * ${TN}u + lid.x;
    if (pix0 >= pixels || co0 >= p.cout) {
        return;
    }
    let plane_in = p.h * p.w;
    var base: array<u32, ${TM}>;
    var iy0: array<i32, ${TM}>;
    var ix0: array<i32, ${TM}>;
    for (var i = 0u; i < ${TM}u; i++) {
        let pixel = min(pix0 + i, pixels - 1u);
        let b = pixel / (p.oh * p.ow);
        let rem = pixel % (p.oh * p.ow);
        base[i] = b * p.cin * plane_in;
        iy0[i] = i32((rem / p.ow) * p.stride_h) - i32(p.pad_top);
        ix0[i] = i32((rem % p.ow) * p.stride_w) - i32(p.pad_left);
    }
    var col: array<u32, ${TN}>;
    for (var j = 0u; j < ${TN}u; j++) {
        col[j] = min(co0 + 8u * j, p.cout - 1u);
    }
    var acc: array<array<f32, ${TN}>, ${TM}>;
    var k = 0u;
    for (var ci = 0u; ci < p.cin; ci++) {
        let chan = ci * plane_in;
        for (var ky = 0u; ky < p.kh; ky++) {
            for (var kx = 0u; kx < p.kw; kx++) {
                var xv: array<f32, ${TM}>;
                for (var i = 0u; i < ${TM}u; i++) {
                    let iy = iy0[i] + i32(ky * p.dil_h);
                    let ix = ix0[i] + i32(kx * p.dil_w);
                    let valid = iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w);
                    xv[i] = load_x(base[i] + chan + u32(iy) * p.w + u32(ix), valid);
                }
                var wv: array<f32, ${TN}>;
                for (var j = 0u; j < ${TN}u; j++) {
                    wv[j] = load_w(k * p.cout + col[j]);
                }
                for (var i = 0u; i < ${TM}u; i++) {
                    for (var j = 0u; j < ${TN}u; j++) {
                        acc[i][j] = fma(xv[i], wv[j], acc[i][j]);
                    }
                }
                k++;
            }
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

// One thread per output: the baseline the benchmark compares against.
@compute @workgroup_size(8, 8, 1)
fn conv2d_naive(@builtin(global_invocation_id) gid: vec3<u32>) {
    let pixels = p.batch * p.oh * p.ow;
    let pixel = gid.y + gid.z * 65535u * 8u;
    let co = gid.x;
    if (pixel >= pixels || co >= p.cout) {
        return;
    }
    let b = pixel / (p.oh * p.ow);
    let rem = pixel % (p.oh * p.ow);
    let iy0 = i32((rem / p.ow) * p.stride_h) - i32(p.pad_top);
    let ix0 = i32((rem % p.ow) * p.stride_w) - i32(p.pad_left);
    var acc = 0.0;
    var k = 0u;
    for (var ci = 0u; ci < p.cin; ci++) {
        for (var ky = 0u; ky < p.kh; ky++) {
            for (var kx = 0u; kx < p.kw; kx++) {
                let iy = iy0 + i32(ky * p.dil_h);
                let ix = ix0 + i32(kx * p.dil_w);
                let valid = iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w);
                let at = ((b * p.cin + ci) * p.h + u32(iy)) * p.w + u32(ix);
                acc = fma(load_x(at, valid), load_w(k * p.cout + co), acc);
                k++;
            }
        }
    }
    store(pixel, co, acc);
}
