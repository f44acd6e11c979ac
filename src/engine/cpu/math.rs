//! The scalar functions the kernels apply per value (`e^x`, `erf`, the activations), written
//! without branches so that loops over slices vectorise, and [`widest`], which compiles such a
//! loop for the widest vectors the CPU has.

use crate::engine::Activation;

/// `f(fused)` compiled for the widest vectors the CPU has, `fused` saying whether it has FMA (for
/// [`exp_with`] and kin). The crate targets baseline x86-64: 4-wide SSE2, no FMA; x86 CPUs
/// since 2013 do 8 lanes with AVX2 and FMA, those with AVX-512 16. `f` must be an
/// `#[inline(always)]` closure calling only `#[inline(always)]` work, so that all of it is
/// compiled inside the wider function: anything left out of line is built for SSE2, and its
/// fused multiply-adds become library calls.
#[inline(always)]
pub(super) fn widest<R>(f: impl FnOnce(bool) -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("fma") {
            // SAFETY: the CPU has AVX-512F and FMA, checked just above.
            return unsafe { avx512(f) };
        }
        if has!("avx2") && has!("fma") {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { avx2(f) };
        }
    }
    // Every aarch64 CPU fuses; x86-64 and WebAssembly builds only with the feature named.
    f(cfg!(any(target_feature = "fma", target_arch = "aarch64")))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn avx512<R>(f: impl FnOnce(bool) -> R) -> R {
    f(true)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn avx2<R>(f: impl FnOnce(bool) -> R) -> R {
    f(true)
}

/// `a * b + c`, rounded once where `fused`: one instruction for two in loops compiled with FMA
/// (`elementwise::widest` passes `true` only there), a library call per value anywhere else.
#[inline(always)]
fn madd(a: f32, b: f32, c: f32, fused: bool) -> f32 {
    if fused { a.mul_add(b, c) } else { a * b + c }
}

/// `e^x` within 2e-7 relative, without branches, so that loops over slices vectorise. The
/// C library's `expf` is a call per value and, for arguments whose result over- or underflows
/// (large negative attention scores, SiLU of a large activation), a slow path that set `errno`:
/// it made the UNet's attention run at 1.5 GFLOP/s. Cephes' `expf`: `x = n ln 2 + r` with
/// `|r| <= ln 2 / 2`, a degree-6 polynomial for `e^r`, `2^n` put into the exponent bits.
/// Arguments are clamped to where `2^n` is a normal f32: below -87.3 the result is 1.2e-38
/// instead of smaller, which no softmax or sigmoid can tell from 0.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    exp_with(x, false)
}

/// [`exp`], its multiply-adds fused where `fused`: only in loops compiled with FMA.
#[inline(always)]
pub fn exp_with(x: f32, fused: bool) -> f32 {
    // Round-to-nearest by adding and removing 1.5 * 2^23, which SSE2 vectorises (`round` does not).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let t = madd(x, std::f32::consts::LOG2_E, ROUND, fused);
    let n = t - ROUND;
    // ln 2 in two parts, so that `n ln 2` loses nothing to rounding.
    let r = madd(n, 2.121_944_4e-4, madd(n, -0.693_359_4, x, fused), fused);
    let mut p = 1.987_569_1e-4_f32;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = madd(p, r, c, fused);
    }
    let y = madd(p * r, r, r, fused) + 1.0;
    // `t`'s low mantissa bits hold `n`: `2^n` from them, as `n as i32` (saturating, so a
    // compare and select per value) would keep the loop scalar.
    let biased = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127);
    y * f32::from_bits(biased << 23)
}

/// `erf(x)` within 1e-7 absolute, without branches, so that GELU vectorises (`libm::erff` is a
/// call per value: 20 ns each). Two minimax fits, both computed and one selected: below 1,
/// `x (1 + P(x^2))`; above, `1 - e^(Q(|x|) - x^2)`, `Q` fitting `ln erfc(t) + t^2`, which is
/// smooth where `erfc` itself falls by seven orders of magnitude. From 4 on `erf` is 1 in f32.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    erf_with(x, false)
}

/// [`erf`], its multiply-adds fused where `fused`: only in loops compiled with FMA.
#[inline(always)]
pub fn erf_with(x: f32, fused: bool) -> f32 {
    let near = poly(
        [
            1.283_789_3e-1,
            -3.761_194_6e-1,
            1.127_811_5e-1,
            -2.666_512_7e-2,
            4.872_174_5e-3,
            -5.468_839e-4,
        ],
        x * x,
        fused,
    );
    let near = madd(x, near, x, fused);
    // `if` rather than `min`, which would turn a NaN into 4.
    let t = x.abs();
    let t = if t > 4.0 { 4.0 } else { t };
    // `Q` in `u = (t - 2.5) / 1.5`, over [-1, 1] on [1, 4].
    let u = madd(t, 2.0 / 3.0, -5.0 / 3.0, fused);
    let q = poly(
        [
            -1.556_808_4,
            -5.292_498_5e-1,
            1.241_571_3e-1,
            -4.304_535_7e-2,
            2.014_552_2e-3,
            -8.735_877e-3,
        ],
        u,
        fused,
    );
    let far = (1.0 - exp_with(madd(-t, t, q, fused), fused)).copysign(x);
    if t < 1.0 { near } else { far }
}

/// `c[0] + c[1] u + ... + c[5] u^5`.
#[inline(always)]
fn poly(c: [f32; 6], u: f32, fused: bool) -> f32 {
    c[..5].iter().rev().fold(c[5], |p, &k| madd(p, u, k, fused))
}

/// `act(x)`, as `_activation.wgsl` computes it (GELU is the exact erf form).
#[inline(always)]
pub fn activate(x: f32, act: Activation) -> f32 {
    activate_with(x, act, false)
}

/// [`activate`], its multiply-adds fused where `fused`: only in loops compiled with FMA.
#[inline(always)]
pub fn activate_with(x: f32, act: Activation, fused: bool) -> f32 {
    match act {
        Activation::None => x,
        Activation::Relu => x.max(0.0),
        Activation::LeakyRelu(slope) => {
            if x >= 0.0 {
                x
            } else {
                x * slope
            }
        }
        Activation::Silu => x / (1.0 + exp_with(-x, fused)),
        Activation::Gelu => 0.5 * x * (1.0 + erf_with(x * std::f32::consts::FRAC_1_SQRT_2, fused)),
        Activation::Tanh => x.tanh(),
    }
}
