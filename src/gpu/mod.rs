//! The GPU engine: a wgpu context, tensors, WGSL kernels and a graph executor. It knows nothing of
//! AudioLDM.

pub mod context;
pub mod error;
pub mod graph;
pub mod kernel;
pub mod ops;
pub mod profile;
pub mod tensor;

pub use context::{Capabilities, Context, GpuMemory, KernelVariants, LimitsProfile};
pub use error::{GpuError, Result};
pub use graph::{Coef, Executable, Graph, GraphStats, OpCost, Scalar, Var};
pub use ops::Activation;
pub use profile::{OpTiming, Profile};
pub use tensor::{DType, Shape, Tensor};
