//! The CPU backend's kernels: what the WGSL kernels compute, in Rust over host slices, for machines
//! whose only adapter is a software rasteriser (or none). Products go through faer's GEMM on
//! rayon's threads (`RAYON_NUM_THREADS` is honoured); elementwise work stays in the compiler's
//! hands. Like the rest of the engine it knows nothing of AudioLDM.
//!
//! So far: [`gemm`], [`conv2d`] (and so `conv1d`, a height-1 `conv2d`), [`conv_transpose1d`],
//! [`attention`], the normalisations ([`norm`]), the elementwise ops ([`elementwise`]), data
//! movement ([`layout`]: permute, slice, concat, nearest upsampling) and the lookups
//! ([`embedding`]: token and timestep embeddings).
//! The graph does not lower to these kernels yet (issue 23); each is tested
//! against the same f64 references as its GPU kernel (`tests/cpu_kernels.rs`).

pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod embedding;
pub(crate) mod executor;
pub mod gemm;
pub mod layout;
pub mod norm;

use crate::engine::Activation;

pub use attention::{Attention, Heads, attention, attention_strided};
pub use conv::{Conv2d, ConvTranspose1d, conv_transpose1d, conv2d};
pub use gemm::{Epilogue, MatSlice, gemm};

/// Below this many multiply-adds a product runs on the calling thread: splitting it costs more
/// than it saves.
#[cfg(not(target_arch = "wasm32"))]
const PARALLEL_MACS: usize = 1 << 18;

/// The threads the kernels run on: rayon's pool (`RAYON_NUM_THREADS`, else one per core).
#[cfg(not(target_arch = "wasm32"))]
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// A page has one thread for the kernels.
#[cfg(target_arch = "wasm32")]
pub fn threads() -> usize {
    1
}

/// How faer splits a product of `macs` multiply-adds.
#[cfg(not(target_arch = "wasm32"))]
fn parallelism(macs: usize) -> faer::Par {
    let threads = threads();
    if macs >= PARALLEL_MACS && threads > 1 {
        faer::Par::rayon(threads)
    } else {
        faer::Par::Seq
    }
}

/// A page has no threads for faer here: every product runs on the calling thread.
#[cfg(target_arch = "wasm32")]
fn parallelism(_macs: usize) -> faer::Par {
    faer::Par::Seq
}

/// `f(0), ..., f(n - 1)`, on rayon's threads where there are any.
fn par_map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        (0..n).into_par_iter().map(f).collect()
    }
    #[cfg(target_arch = "wasm32")]
    {
        (0..n).map(f).collect()
    }
}

/// `f(i, chunk)` for each `size`-long chunk `i` of `out`, on rayon's threads where there are any.
fn par_chunks(out: &mut [f32], size: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(size)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    }
    #[cfg(target_arch = "wasm32")]
    {
        out.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// `e^x` within 2e-7 relative, without branches, so that loops over slices vectorise. The
/// C library's `expf` is a call per value and, for arguments whose result over- or underflows
/// (large negative attention scores, SiLU of a large activation), a slow path that set `errno`:
/// it made the UNet's attention run at 1.5 GFLOP/s. Cephes' `expf`: `x = n ln 2 + r` with
/// `|r| <= ln 2 / 2`, a degree-6 polynomial for `e^r`, `2^n` put into the exponent bits.
/// Arguments are clamped to where `2^n` is a normal f32: below -87.3 the result is 1.2e-38
/// instead of smaller, which no softmax or sigmoid can tell from 0.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Round-to-nearest by adding and removing 1.5 * 2^23, which SSE2 vectorises (`round` does not).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `act(x)`, as `_activation.wgsl` computes it (GELU is the exact erf form).
pub fn activate(x: f32, act: Activation) -> f32 {
    match act {
        Activation::None => x,
        Activation::Relu => x.max(0.0),
        Activation::LeakyRelu(slope) => {
            if x >= 0.0 {
                x
            } else {
                x * slope
            }
        }
        Activation::Silu => x / (1.0 + exp(-x)),
        Activation::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
        Activation::Tanh => x.tanh(),
    }
}
