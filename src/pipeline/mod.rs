//! Text-to-audio: prompt in, waveform out, with progress events. Knows nothing of any front end.

pub mod ddim;
pub mod noise;
