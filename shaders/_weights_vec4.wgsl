// The weight operand at binding 2 (f32, or with W_F16 packed f16 as in `_weights.wgsl`) read four
// elements at a time: `load_w4(i)` returns elements 4i..4i+3 as f32 (f16: four halves in two
// words), so the caller's offsets are in vec4s and the data must be aligned to them.

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
