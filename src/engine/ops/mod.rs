//! Op builders: each checks its inputs' shapes and dtypes, picks a kernel and records it in a
//! [`Graph`](super::Graph). One file per kernel family, as in `shaders/`.

pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod embedding;
pub mod layout;
pub mod matmul;
pub mod norm;
pub mod timestep;
pub mod upsample;

use super::kernel::KernelKey;

/// An activation fused into a kernel's epilogue, or applied on its own.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Activation {
    #[default]
    None,
    Relu,
    /// Leaky ReLU with this negative slope.
    LeakyRelu(f32),
    Silu,
    /// Exact (erf) GELU.
    Gelu,
    Tanh,
}

impl Activation {
    pub(crate) fn specialise(self, key: KernelKey) -> KernelKey {
        let name = match self {
            Activation::None => return key,
            Activation::Relu => "ACT_RELU",
            Activation::LeakyRelu(_) => "ACT_LEAKY_RELU",
            Activation::Silu => "ACT_SILU",
            Activation::Gelu => "ACT_GELU",
            Activation::Tanh => "ACT_TANH",
        };
        key.define(name, 1)
    }

    pub(crate) fn slope(self) -> f32 {
        match self {
            Activation::LeakyRelu(slope) => slope,
            _ => 0.0,
        }
    }
}
