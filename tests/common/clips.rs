//! Test clips made in code, so no audio tool is needed: the quiet edge of the silence rule.
#![allow(dead_code)]

/// One second of 16-bit TPDF dither alone at 16 kHz (±1 LSB, peak -90.3 dBFS): what
/// `sox -n -r 16000 -b 16 x.wav trim 0 1` writes.
pub fn dither() -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..16_000)
        .map(|_| ((uniform() - uniform()).round() / 32768.0) as f32)
        .collect()
}

/// A 440 Hz sine at `dbfs` peak, `samples` long at 16 kHz.
pub fn sine_at(dbfs: f64, samples: usize) -> Vec<f32> {
    let amplitude = 10f64.powf(dbfs / 20.0);
    (0..samples)
        .map(|i| (amplitude * (i as f64 * 440.0 * std::f64::consts::TAU / 16_000.0).sin()) as f32)
        .collect()
}
