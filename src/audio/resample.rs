//! Sample-rate conversion through rubato's FFT resampler.

use rubato::audioadapter_buffers::owned::InterleavedOwned;
use rubato::{Fft, FixedSync, Resampler};

use crate::error::{Error, Result};

/// Resamples mono `samples` from `from` Hz to `to` Hz; the output has `ceil(len * to / from)`
/// samples, aligned with the input to within a fraction of a sample (rubato removes its own
/// delay in whole samples).
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    if from == 0 || to == 0 {
        return Err(Error::Input(format!(
            "cannot resample from {from} Hz to {to} Hz"
        )));
    }
    if from == to || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let failed = |e: &dyn std::fmt::Display| Error::Input(format!("resampling failed: {e}"));
    let mut resampler = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Input)
        .map_err(|e| failed(&e))?;
    let input =
        InterleavedOwned::new_from(samples.to_vec(), 1, samples.len()).map_err(|e| failed(&e))?;
    let capacity = resampler.process_all_needed_output_len(samples.len());
    let mut output = InterleavedOwned::new(0.0f32, 1, capacity);
    let (_, produced) = resampler
        .process_all_into_buffer(&input, &mut output, samples.len(), None)
        .map_err(|e| failed(&e))?;
    let mut out = output.take_data();
    out.truncate(produced);
    Ok(out)
}
