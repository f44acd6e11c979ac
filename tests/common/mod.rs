//! Shared by the kernel tests: one GPU context, seeded inputs, error measures.
#![allow(dead_code)]

use std::sync::OnceLock;

use audioldm::gpu::{Context, Graph, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The process's GPU context. There is no skip: a machine without an adapter fails the tests
/// (CI installs lavapipe, a software Vulkan adapter).
pub fn ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| match Context::new_blocking() {
        Ok(ctx) => {
            let info = ctx.adapter_info();
            eprintln!(
                "adapter: {} ({:?}, {:?})",
                info.name, info.backend, info.device_type
            );
            ctx
        }
        Err(e) => panic!("GPU tests need a GPU adapter: {e}"),
    })
}

/// Uniform values in [-1, 1) from a fixed seed.
pub fn random(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Largest absolute difference, relative to the largest magnitude of the reference. This is the
/// "max relative error" the tests report: a per-element ratio would blow up wherever the
/// reference crosses zero.
pub fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            if g.is_nan() {
                f64::INFINITY
            } else {
                (g as f64 - w).abs()
            }
        })
        .fold(0.0, f64::max)
        / scale
}

pub fn max_abs_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            if g.is_nan() {
                f64::INFINITY
            } else {
                (g as f64 - w).abs()
            }
        })
        .fold(0.0, f64::max)
}

/// Asserts `got` is within `tol` max relative error of `want`, printing the error either way.
pub fn assert_close(name: &str, got: &[f32], want: &[f64], tol: f64) {
    let err = max_rel_err(got, want);
    println!("{name}: max rel err {err:.3e} (tol {tol:.0e})");
    assert!(err <= tol, "{name}: max rel err {err:.3e} > {tol:.0e}");
}

pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Uploads f32 data as a graph input.
pub fn input(g: &mut Graph, shape: &[usize], data: &[f32]) -> Var {
    let t = Tensor::from_f32(ctx(), shape, audioldm::gpu::DType::F32, data).expect("upload");
    g.input(&t)
}

/// Builds the graph with `out` as its output, runs it once and reads `out` back.
pub fn run(mut g: Graph, out: Var) -> Vec<f32> {
    g.output(out).expect("output");
    let mut exe = g.build().expect("build");
    exe.run().expect("run");
    exe.read(out).expect("read")
}

/// Rounds through f16 and back, as f16 weight storage does.
pub fn f16_round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}
