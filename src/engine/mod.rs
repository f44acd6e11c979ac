//! The engine: a context, tensors, op builders recording a graph, and two backends that run it:
//! WGSL kernels through wgpu (`graph/execute.rs`, `kernel.rs`, `shaders/`) and Rust kernels on the
//! host's cores (`cpu/`). It knows nothing of AudioLDM.

pub mod context;
pub mod cpu;
pub mod error;
pub mod graph;
pub mod kernel;
pub mod ops;
pub mod profile;
pub mod tensor;

pub use context::{Capabilities, Context, DeviceChoice, GpuMemory, KernelVariants, LimitsProfile};
pub use error::{GpuError, Result};
pub use graph::{Coef, Executable, Graph, GraphStats, OpCost, Scalar, Var};
pub use ops::Activation;
pub use profile::{OpTiming, Profile};
pub use tensor::{DType, Shape, Tensor};
