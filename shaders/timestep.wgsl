// Sinusoidal timestep embedding (diffusers get_timestep_embedding), every row for the same t:
//
//   y[r, c] = sin(t * freq[c])          c < half        ([cos, sin] when FLIP: p.flip = 1)
//             cos(t * freq[c - half])   half <= c < 2 half
//             0                         c = 2 half      (odd dim)
//
// freq[j] = exp(-ln(max_period) j / (half - shift)) is computed on the CPU in f64 and rounded to
// f32; arg = t * freq[j] is one f32 multiply, as in PyTorch. Args reach ~1000 rad, where a
// driver's sin/cos may lose accuracy (Vulkan only promises 2^-11 absolute on [-pi, pi]), so the
// argument is reduced here: k = round(arg * 2/pi), r = arg - k pi/2 with pi/2 split Cody-Waite
// style into PIO2_1 (8 significant bits: k * PIO2_1 is exact for |k| < 2^16, and so is
// arg - k * PIO2_1), PIO2_2 (11 bits: exact products for |k| < 2^13) and PIO2_3 (the rest), then
// sin or cos of r in [-pi/4, pi/4] from Cephes' sinf/cosf minimax polynomials, picked by k mod 4.
// Within ~1e-7 of sin/cos of the f32 argument for |arg| < 12800.

struct Params {
    n: u32,
    dim: u32,
    half: u32,
    flip: u32,
    t: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> freq: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

const TWO_OVER_PI: f32 = 0.636619772367581343;
const PIO2_1: f32 = 1.5703125;
const PIO2_2: f32 = 4.837512969970703125e-4;
const PIO2_3: f32 = 7.54978995489188216e-8;

// sin(x + q pi/2) for |x| <= pi/4 (a little beyond is fine).
fn sin_quadrant(x: f32, q: u32) -> f32 {
    let z = x * x;
    var v: f32;
    if ((q & 1u) == 0u) {
        v = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * x + x;
    } else {
        v = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z
            - 0.5 * z + 1.0;
    }
    return select(v, -v, (q & 2u) != 0u);
}

// sin(arg) (cosine: shift = 1) with the argument reduction described above.
fn sin_reduced(arg: f32, shift: u32) -> f32 {
    let k = round(arg * TWO_OVER_PI);
    var r = arg - k * PIO2_1;
    r = r - k * PIO2_2;
    r = r - k * PIO2_3;
    return sin_quadrant(r, u32(i32(k)) + shift);
}

@compute @workgroup_size(256, 1, 1)
fn timestep(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * groups.x) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    let c = i % p.dim;
    if (c >= 2u * p.half) {
        y[i] = 0.0;
        return;
    }
    let first_half = c < p.half;
    let j = select(c - p.half, c, first_half);
    let arg = p.t * freq[j];
    // First half: sin, or cos when flipped; second half the other.
    let cosine = first_half == (p.flip != 0u);
    y[i] = sin_reduced(arg, select(0u, 1u, cosine));
}
