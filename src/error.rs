use std::path::PathBuf;

use thiserror::Error;

use crate::checkpoint::CheckpointError;
use crate::engine::GpuError;

/// Errors of the model and pipeline layers, each saying what the user can do about it.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Input(String),
    /// An input clip too quiet to work from (see [`crate::audio::check_audible`]).
    #[error(
        "{clip} is silent: its peak is {peak_dbfs:.1} dBFS, below the {threshold} dBFS \
         threshold: there is no sound to work from",
        threshold = crate::audio::SILENCE_DBFS
    )]
    Silent { clip: String, peak_dbfs: f64 },
    #[error("{stage} produced a non-finite value (NaN or infinity)")]
    NonFinite { stage: String },
    #[error("cancelled")]
    Cancelled,
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the GPU ran out of memory: the front ends then say how to need less.
    pub fn is_out_of_gpu_memory(&self) -> bool {
        matches!(self, Self::Gpu(GpuError::OutOfMemory(_)))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
