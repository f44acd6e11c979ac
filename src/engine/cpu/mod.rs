//! The CPU backend's kernels: what the WGSL kernels compute, in Rust over host slices, for machines
//! whose only adapter is a software rasteriser (or none). Products go through faer's GEMM on
//! rayon's threads (`RAYON_NUM_THREADS` is honoured); elementwise work stays in the compiler's
//! hands. Like the rest of the engine it knows nothing of AudioLDM.
//!
//! So far: [`gemm`], [`conv2d`] (and so `conv1d`, a height-1 `conv2d`), [`conv_transpose1d`],
//! [`attention`], the normalisations ([`norm`]), the elementwise ops ([`elementwise`]), data
//! movement ([`layout`]: permute, slice, concat, nearest upsampling) and the lookups
//! ([`embedding`]: token and timestep embeddings), with the per-value functions of `math`
//! (`exp`, `erf`, the activations) and its `widest`, which compiles a hot loop for AVX2 or
//! AVX-512 where the CPU has them. `executor` runs a recorded graph's nodes as these kernels.
//! Each is tested against the same f64 references as its GPU kernel (`tests/cpu_kernels.rs`).

pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod embedding;
pub(crate) mod executor;
pub mod gemm;
pub mod layout;
mod math;
pub mod norm;

pub use attention::{Attention, Heads, attention, attention_strided};
pub use conv::{Conv2d, ConvTranspose1d, conv_transpose1d, conv2d};
pub use gemm::{Epilogue, MatSlice, gemm};
use math::widest;
pub use math::{activate, activate_with, erf, erf_with, exp, exp_with};

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
