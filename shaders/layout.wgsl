// Copies into a contiguous output, moving 32-bit words unchanged (f32 and u32 alike), one thread
// per output element, 256 per workgroup over a 2-D grid of workgroups.
//
// (default) strided_copy: y[i] = x[offset + sum_d coord_d(i) * strides[d]], where coord_d(i) are
//           i's coordinates in y's (collapsed) dims. Serves permute and slice.
// CONCAT    concat: y [outer, ca + cb, inner] from a [outer, ca, inner] and b [outer, cb, inner].

#if CONCAT
struct Params {
    n: u32,
    inner: u32,
    ca: u32,
    cb: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<u32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<u32>;

@compute @workgroup_size(256, 1, 1)
fn concat(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * groups.x) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    let k = i % p.inner;
    let rows = i / p.inner;
    let c = rows % (p.ca + p.cb);
    let outer = rows / (p.ca + p.cb);
    if (c < p.ca) {
        y[i] = a[(outer * p.ca + c) * p.inner + k];
    } else {
        y[i] = b[(outer * p.cb + (c - p.ca)) * p.inner + k];
    }
}
#else
struct Params {
    n: u32,
    rank: u32,
    offset: u32,
    _pad: u32,
    dims: array<vec4<u32>, 2>,
    strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>;

@compute @workgroup_size(256, 1, 1)
fn strided_copy(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * groups.x) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    var rest = i;
    var at = p.offset;
    for (var d = p.rank; d > 0u; d--) {
        let axis = d - 1u;
        let dim = p.dims[axis >> 2u][axis & 3u];
        at += (rest % dim) * p.strides[axis >> 2u][axis & 3u];
        rest = rest / dim;
    }
    y[i] = x[at];
}
#endif
