// Nearest-neighbour upsampling of x [B, C, H, W] to [B, C, out_h, out_w], as PyTorch's
// F.interpolate(mode="nearest", size=...): src = min(floor(dst * scale), in - 1) with
// scale = in / out rounded to f32 on the CPU (passed in the uniform block, so the GPU's division
// cannot differ) and dst * scale one f32 multiply. Moves 32-bit words unchanged; one thread per
// output element. A tensor stored in parts is resized a run of whole planes at a time.

struct Params {
    n: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    scale_h: f32,
    scale_w: f32,
    // The first (item, channel) plane of this dispatch, in x's binding and in y's.
    in_plane0: u32,
    out_plane0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>;

@compute @workgroup_size(256, 1, 1)
fn upsample_nearest(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * groups.x) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    let ox = i % p.out_w;
    let rows = i / p.out_w;
    let oy = rows % p.out_h;
    let plane = rows / p.out_h;
    let sy = min(u32(floor(f32(oy) * p.scale_h)), p.in_h - 1u);
    let sx = min(u32(floor(f32(ox) * p.scale_w)), p.in_w - 1u);
    y[p.out_plane0 * p.out_h * p.out_w + i] = x[((p.in_plane0 + plane) * p.in_h + sy) * p.in_w + sx];
}
