//! Audio in and out: WAV files (decoding of other formats, resampling and playback come with the
//! desktop app).

pub mod wav;
