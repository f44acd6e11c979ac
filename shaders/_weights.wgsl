// The weight operand at binding 2, stored as f32 or, with W_F16, as f16 pairs packed in u32
// words; `load_w(i)` returns element i as f32 either way. `_weights_vec4.wgsl` reads the same
// storage four elements at a time.

#if W_F16
@group(0) @binding(2) var<storage, read> wt: array<u32>;
fn load_w(i: u32) -> f32 {
    let pair = unpack2x16float(wt[i >> 1u]);
    return select(pair.x, pair.y, (i & 1u) == 1u);
}
#else
@group(0) @binding(2) var<storage, read> wt: array<f32>;
fn load_w(i: u32) -> f32 {
    return wt[i];
}
#endif
