// Elementwise kernels. The entry point is chosen by defines, each with its own bindings:
//
// (default) unary   y[i] = act(alpha * x[i] + beta)                  (activation, scale)
// BINARY    binary  y[i] = alpha * a[i] + beta * b[bi]               (axpby, add, sub)
//                   y[i] = a[i] * b[bi]           with OP_MUL        (mul)
//           b is broadcast onto a's shape through strides: y's (collapsed) dims and b's stride
//           along each (0 where b is broadcast) travel in the uniform block.
// GEGLU     geglu   y[r, j] = x[r, j] * gelu(x[r, H + j]) for x [R, 2H] (diffusers GEGLU)
//
// One thread per output element, 256 per workgroup, over a 2-D grid of workgroups.

#if BINARY
struct Params {
    n: u32,
    rank: u32,
    alpha: f32,
    beta: f32,
    // Up to 8 dims of y, innermost last, and b's element stride along each.
    dims: array<vec4<u32>, 2>,
    b_strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#else
#if GEGLU
struct Params {
    n: u32,
    h: u32,
}
#else
struct Params {
    n: u32,
    alpha: f32,
    beta: f32,
    slope: f32,
}
#endif

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
#endif

#include "_activation.wgsl"

fn linear_index(wg: vec3<u32>, groups: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * groups.x) * 256u + lid;
}

#if BINARY
// Element of b that broadcasts onto element i of y.
fn b_index(i: u32) -> u32 {
    var rest = i;
    var at = 0u;
    for (var d = p.rank; d > 0u; d--) {
        let axis = d - 1u;
        let dim = p.dims[axis >> 2u][axis & 3u];
        at += (rest % dim) * p.b_strides[axis >> 2u][axis & 3u];
        rest = rest / dim;
    }
    return at;
}

@compute @workgroup_size(256, 1, 1)
fn binary(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = linear_index(wg, groups, lid);
    if (i >= p.n) {
        return;
    }
    let bv = b[b_index(i)];
#if OP_MUL
    y[i] = a[i] * bv;
#else
    y[i] = p.alpha * a[i] + p.beta * bv;
#endif
}
#else
#if GEGLU
@compute @workgroup_size(256, 1, 1)
fn geglu(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = linear_index(wg, groups, lid);
    if (i >= p.n) {
        return;
    }
    let row = i / p.h;
    let at = i + row * p.h;
    y[i] = x[at] * gelu(x[at + p.h]);
}
#else
@compute @workgroup_size(256, 1, 1)
fn unary(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = linear_index(wg, groups, lid);
    if (i >= p.n) {
        return;
    }
    y[i] = activate(p.alpha * x[i] + p.beta, p.slope);
}
#endif
#endif
