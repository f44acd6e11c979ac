// Activation selected by the ACT define: none, relu, leaky_relu, silu, gelu, tanh.
// GELU is exact (erf) GELU; WGSL has no erf, so it is approximated to within 1.5e-7 absolute
// (Abramowitz & Stegun 7.1.26), which keeps GELU within 1e-6 of the exact value.

fn erf_approx(x: f32) -> f32 {
    let ax = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * ax);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let y = 1.0 - poly * exp(-ax * ax);
    return select(y, -y, x < 0.0);
}

fn gelu(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752));
}

fn activate(x: f32, slope: f32) -> f32 {
    var y = x;
#if ACT_RELU
    y = max(x, 0.0);
#endif
#if ACT_LEAKY_RELU
    y = select(x * slope, x, x >= 0.0);
#endif
#if ACT_SILU
    y = x / (1.0 + exp(-x));
#endif
#if ACT_GELU
    y = gelu(x);
#endif
#if ACT_TANH
    // tanh saturates to +-1 in f32 beyond |x| = 9; clamping keeps exp-based implementations finite.
    y = tanh(clamp(x, -15.0, 15.0));
#endif
    return y;
}
