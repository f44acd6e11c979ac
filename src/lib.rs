//! AudioLDM text-to-audio on any GPU: WGSL compute shaders through wgpu.
//!
//! Layers, each importing only those below it: [`engine`] (the engine, which knows nothing of
//! AudioLDM), [`checkpoint`] (weights), [`model`] (the four networks), [`pipeline`] (text to
//! audio, shared by the front ends) and [`app`] (the desktop front end); [`audio`] and [`hub`] sit
//! beside them, and [`noise`] (NumPy's seeded generator, importing nothing of the crate) under
//! all of them: models, audio and pipeline draw from it.

#[cfg(feature = "app")]
pub mod app;
pub mod audio;
pub mod checkpoint;
pub mod engine;
pub mod error;
pub mod hub;
pub mod model;
#[cfg(target_arch = "wasm32")]
pub mod mounted;
pub mod noise;
pub mod pipeline;
pub mod untrusted;

pub use error::{Error, Result};
