//! Audio in and out: WAV files, decoding of common formats (symphonia), resampling (rubato), the
//! log-mel front end AudioLDM was trained on, and playback (cpal).

pub mod decode;
pub mod mel;
pub mod playback;
pub mod resample;
pub mod wav;

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// Opens `path` for reading if it is a regular file: a FIFO or a device would block the caller
/// or never end.
pub fn open_regular(path: &Path) -> Result<File> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if !std::fs::metadata(path).map_err(io)?.is_file() {
        return Err(Error::Input(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    File::open(path).map_err(io)
}

/// A (log-)mel spectrogram, time-major: `data[frame * bins + bin]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mel {
    pub frames: usize,
    pub bins: usize,
    pub data: Vec<f32>,
}

/// Mono audio.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Audio {
    pub sample_rate: u32,
    pub samples: Vec<f32>,
}

impl Audio {
    pub fn duration_s(&self) -> f64 {
        if self.sample_rate == 0 {
            0.0
        } else {
            self.samples.len() as f64 / self.sample_rate as f64
        }
    }
}
