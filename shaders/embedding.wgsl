// Embedding lookup: y[r, j] = table[ids[r], j] for a table [V, D], one thread per output element.
//
// A table larger than one storage binding is bound in windows of whole rows, one op per window,
// all writing the same output: the op for rows [r0, r0 + rows) writes the outputs whose id falls
// in its window. The first op (p.first = 1) also writes zeros for every other id, so ids that no
// window holds (id >= V) give a zero row, and later windows overwrite their own rows.
//
// Defines: W_F16 (table stored as packed f16, two halves per u32; the window starts on a word).

struct Params {
    n: u32,
    d: u32,
    r0: u32,
    rows: u32,
    first: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
#include "_weights.wgsl"
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn embedding(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * groups.x) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    let j = i % p.d;
    let id = ids[i / p.d];
    if (id >= p.r0 && id - p.r0 < p.rows) {
        y[i] = load_w((id - p.r0) * p.d + j);
    } else if (p.first != 0u) {
        y[i] = 0.0;
    }
}
