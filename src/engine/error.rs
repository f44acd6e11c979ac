use thiserror::Error;

/// Everything the engine can fail with. GPU failures (out of memory, device loss, validation) come
/// back here instead of reaching wgpu's default handler, which would panic.
#[derive(Debug, Error)]
pub enum GpuError {
    #[error(
        "no GPU adapter found ({0}); install a Vulkan, Metal or DX12 driver, or run on the \
         processor with --device cpu (AUDIOLDM_DEVICE=cpu)"
    )]
    NoAdapter(String),
    #[error("the GPU adapter refused to create a device: {0}")]
    RequestDevice(String),
    #[error("out of GPU memory while {0}")]
    OutOfMemory(String),
    /// The CPU backend could not allocate host memory (its tensors and arenas ask first, so a
    /// failure is this error rather than an abort).
    #[error("out of host memory while {0}")]
    HostOutOfMemory(String),
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    #[error("GPU error while {context}: {message}")]
    Wgpu { context: String, message: String },
    #[error("{op}: {detail}")]
    Shape { op: String, detail: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = GpuError> = std::result::Result<T, E>;

pub(crate) fn shape_error(op: &str, detail: impl Into<String>) -> GpuError {
    GpuError::Shape {
        op: op.to_string(),
        detail: detail.into(),
    }
}
