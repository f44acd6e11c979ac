// Transposed 1-D convolution (PyTorch ConvTranspose1d, groups 1), gathered per output:
// out[b, co, t] = bias[co] + sum_{ci, j : (t + pad - j) = s*src, 0 <= src < L_in} in_act(x[b, ci, src]) * w[ci, j, co]
// The weight is laid out once at load as [Cin, k, Cout] (PyTorch stores [Cin, Cout, k]).
// Defines: IN_LEAKY_RELU, ACT, W_F16, BIAS, TN output channels per thread.

struct Params {
    batch: u32, cin: u32, lin: u32, cout: u32,
    lout: u32, k: u32, stride: u32, pad: u32,
    slope: f32, in_slope: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
#include "_weights.wgsl"
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

#include "_activation.wgsl"

@compute @workgroup_size(64, 1, 1)
fn conv_transpose1d(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let index = gid.x + gid.y * groups.x * 64u;
    let blocks = (p.cout + ${TN}u - 1u) / ${TN}u;
    let t = index % p.lout;
    let co0 = ((index / p.lout) % blocks) * ${TN}u;
    let b = index / (p.lout * blocks);
    if (b >= p.batch) {
        return;
    }
    var col: array<u32, ${TN}>;
    for (var j = 0u; j < ${TN}u; j++) {
        col[j] = min(co0 + j, p.cout - 1u);
    }
    var acc: array<f32, ${TN}>;
    let shifted = t + p.pad;
    let first_tap = shifted % p.stride;
    for (var ci = 0u; ci < p.cin; ci++) {
        let row = (b * p.cin + ci) * p.lin;
        for (var tap = first_tap; tap < p.k && tap <= shifted; tap += p.stride) {
            let src = (shifted - tap) / p.stride;
            if (src < p.lin) {
                var v = x[row + src];
#if IN_LEAKY_RELU
                v = select(v * p.in_slope, v, v >= 0.0);
#endif
                let w_at = (ci * p.k + tap) * p.cout;
                for (var j = 0u; j < ${TN}u; j++) {
                    acc[j] = fma(v, load_w(w_at + col[j]), acc[j]);
                }
            }
        }
    }
    for (var j = 0u; j < ${TN}u; j++) {
        let co = co0 + j;
        if (co < p.cout) {
            var v = acc[j];
#if BIAS
            v = v + bias[co];
#endif
            out[(b * p.cout + co) * p.lout + t] = activate(v, p.slope);
        }
    }
}
