// The weight operand at binding 2, stored as f32 or, with W_F16, as f16 pairs packed in u32
// words. `load_w(i)` returns element i as f32; with W_VEC4 the operand is read four elements at a
// time instead, `load_w4(i)` returning elements 4i..4i+3 (f16: four halves in two words).

#if W_VEC4
#if W_F16
@group(0) @binding(2) var<storage, read> wt: array<vec2<u32>>;
fn load_w4(i: u32) -> vec4<f32> {
    let words = wt[i];
    return vec4<f32>(unpack2x16float(words.x), unpack2x16float(words.y));
}
#else
@group(0) @binding(2) var<storage, read> wt: array<vec4<f32>>;
fn load_w4(i: u32) -> vec4<f32> {
    return wt[i];
}
#endif
#else
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
#endif
