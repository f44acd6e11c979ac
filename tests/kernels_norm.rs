//! GroupNorm (+SiLU), LayerNorm, L2 normalisation and softmax against f64 CPU references, with
//! the portable workgroup reductions and with the subgroup ones (`KernelVariants::subgroups`),
//! and on the CPU backend.

mod common;

use std::sync::OnceLock;
use std::time::Instant;

use audioldm::engine::{Context, Graph, KernelVariants, Tensor};
use common::reference::*;
use common::*;

/// The process's context (portable reductions on lavapipe), one with the subgroup reductions
/// forced on, and the CPU backend. CI's adapter (lavapipe) offers SUBGROUP, so there both GPU
/// reductions always run.
fn contexts() -> Vec<(&'static str, &'static Context)> {
    static SUBGROUPS: OnceLock<Option<Context>> = OnceLock::new();
    let subgroups = SUBGROUPS.get_or_init(|| {
        let ctx = new_ctx();
        match ctx.set_variants(KernelVariants {
            subgroups: true,
            ..ctx.variants()
        }) {
            Ok(()) => Some(ctx),
            Err(e) => {
                assert!(
                    std::env::var("CI").is_err(),
                    "CI's lavapipe has SUBGROUP: {e}"
                );
                println!("subgroup reductions not tested: {e}");
                None
            }
        }
    });
    let mut all = vec![("portable", ctx())];
    if ctx().variants().subgroups {
        all[0].0 = "subgroups (the adapter's choice)";
    }
    all.extend(subgroups.as_ref().map(|s| ("subgroups", s)));
    all.push(("cpu", cpu_ctx()));
    all
}

/// Builds the graph with `out` as its output, runs it once and reads `out` back: every op on the
/// kernel its context's variants chose (none fell back to the portable one).
fn run(mut g: Graph, out: audioldm::engine::Var) -> Vec<f32> {
    g.output(out).expect("output");
    let mut exe = g.build().expect("build");
    assert_eq!(exe.stats().fallbacks, 0, "a kernel variant did not compile");
    exe.run().expect("run");
    exe.read(out).expect("read")
}

/// `scale * u + offset` for seeded uniform `u` in [-1, 1): inputs far from zero show whether the
/// statistics are computed stably.
fn shifted(seed: u64, len: usize, scale: f32, offset: f32) -> Vec<f32> {
    random(seed, len)
        .into_iter()
        .map(|v| v * scale + offset)
        .collect()
}

/// One GroupNorm test: input `x * scale + offset` for seeded uniform x in [-1, 1).
#[derive(Clone, Copy)]
struct GroupNormCase<'a> {
    dims: &'a [usize],
    groups: usize,
    gamma: bool,
    beta: bool,
    silu: bool,
    eps: f32,
    scale: f32,
    offset: f32,
    seed: u64,
}

impl<'a> GroupNormCase<'a> {
    fn new(dims: &'a [usize], groups: usize) -> Self {
        Self {
            dims,
            groups,
            gamma: true,
            beta: true,
            silu: false,
            eps: 1e-5,
            scale: 1.0,
            offset: 0.0,
            seed: 0,
        }
    }

    fn check(self, tol: f64) {
        let GroupNormCase {
            dims,
            groups,
            eps,
            scale,
            offset,
            seed,
            ..
        } = self;
        let numel: usize = dims.iter().product();
        let c = dims[1];
        let x = shifted(seed, numel, scale, offset);
        let gamma = shifted(seed + 1, c, 0.5, 1.0);
        let beta = random(seed + 2, c);
        let want = group_norm_ref(
            &x,
            dims,
            groups,
            self.gamma.then_some(&gamma[..]),
            self.beta.then_some(&beta[..]),
            eps as f64,
            self.silu,
        );
        for (reductions, ctx) in contexts() {
            let mut g = Graph::new(ctx);
            let vx = input(&mut g, dims, &x);
            let vg = self.gamma.then(|| input(&mut g, &[c], &gamma));
            let vb = self.beta.then(|| input(&mut g, &[c], &beta));
            let out = g.group_norm(vx, groups, vg, vb, eps, self.silu).unwrap();
            assert_eq!(g.dims(out), dims);
            let got = run(g, out);
            assert_close(
                &format!(
                    "group_norm {dims:?} G={groups} gamma={} beta={} silu={} eps={eps:e} x*{scale}+{offset}, {reductions}",
                    self.gamma, self.beta, self.silu
                ),
                &got,
                &want,
                tol,
            );
        }
    }
}

#[test]
fn group_norm_matches_reference_on_odd_shapes() {
    let cases: &[(&[usize], usize)] = &[
        (&[2, 6, 5], 3),
        (&[1, 4, 3, 7], 4),    // one channel per group
        (&[3, 8], 2),          // rank 2: no spatial dims
        (&[2, 32, 17, 3], 8),  // 204 elements per group: under one workgroup's 256 threads
        (&[1, 12, 13, 29], 3), // 1508 per group: not a multiple of 256
        (&[2, 3, 2, 2, 3], 1), // rank 5, one group
        (&[1, 64, 1000], 32),  // a 1-D UNet/VAE-like shape
    ];
    let mut seed = 0;
    for &(dims, groups) in cases {
        for (gamma, beta) in [(true, true), (false, false), (true, false), (false, true)] {
            for silu in [false, true] {
                seed += 10;
                GroupNormCase {
                    gamma,
                    beta,
                    silu,
                    seed,
                    ..GroupNormCase::new(dims, groups)
                }
                .check(1e-5);
            }
        }
    }
}

/// A group of one element has zero variance: the output is `beta` (after SiLU when fused).
#[test]
fn group_norm_of_single_element_groups_is_beta() {
    GroupNormCase::new(&[2, 5, 1], 5).check(1e-5);
    GroupNormCase {
        silu: true,
        eps: 1e-6,
        seed: 4,
        ..GroupNormCase::new(&[1, 3], 3)
    }
    .check(1e-5);
}

/// AudioLDM's largest GroupNorm: 640 channels in 32 groups over a 250x16 latent (80,000 elements
/// per group), on data with mean 10 and spread 3, where a one-pass sum of squares would lose
/// the variance to cancellation; and a mean of 100 with spread 0.01, where even an f32 mean loses
/// digits unless the statistics are taken relative to a shift.
#[test]
fn group_norm_is_stable_on_large_offset_groups() {
    let start = Instant::now();
    let offset = |dims, groups, scale, offset, seed| GroupNormCase {
        scale,
        offset,
        seed,
        ..GroupNormCase::new(dims, groups)
    };
    GroupNormCase {
        silu: true,
        ..offset(&[1, 640, 250, 16], 32, 3.0, 10.0, 7)
    }
    .check(1e-5);
    GroupNormCase {
        eps: 1e-6,
        ..offset(&[2, 128, 64, 16], 32, 3.0, 10.0, 8)
    }
    .check(1e-5);
    GroupNormCase {
        gamma: false,
        beta: false,
        eps: 1e-9,
        ..offset(&[1, 4, 33, 31], 2, 0.01, 100.0, 9)
    }
    .check(1e-5);
    println!("large group norms: {:.2?}", start.elapsed());
}

#[test]
fn layer_norm_matches_reference() {
    let cases: &[(&[usize], f32, f32, f32)] = &[
        // dims, eps, scale, offset
        (&[1, 1], 1e-5, 1.0, 0.0), // D = 1: zero variance, the output is beta
        (&[3, 7], 1e-5, 1.0, 0.0),
        (&[1, 64], 1e-12, 3.0, 10.0),
        (&[2, 5, 33], 1e-5, 1.0, 0.5),
        (&[2, 77, 768], 1e-12, 3.0, 10.0), // the CLAP text encoder (RoBERTa)
        (&[4, 1024], 1e-12, 3.0, 10.0),
        (&[3, 3001], 1e-5, 2.0, -4.0), // over 2048: the 256-thread variant
        (&[5, 300], 1e-12, 0.01, 100.0), // mean 100, spread 0.01
        (&[2, 4000, 128], 1e-5, 1.0, 0.0), // a UNet transformer block's rows
    ];
    for (seed, &(dims, eps, scale, offset)) in cases.iter().enumerate() {
        let seed = seed as u64 * 10 + 100;
        let numel: usize = dims.iter().product();
        let d = *dims.last().unwrap();
        let x = shifted(seed, numel, scale, offset);
        let gamma = shifted(seed + 1, d, 0.5, 1.0);
        let beta = random(seed + 2, d);
        let want = layer_norm_ref(&x, d, &gamma, &beta, eps as f64);
        for (reductions, ctx) in contexts() {
            let mut g = Graph::new(ctx);
            let vx = input(&mut g, dims, &x);
            let vg = input(&mut g, &[d], &gamma);
            let vb = input(&mut g, &[d], &beta);
            let out = g.layer_norm(vx, vg, vb, eps).unwrap();
            assert_eq!(g.dims(out), dims);
            let got = run(g, out);
            assert_close(
                &format!("layer_norm {dims:?} eps={eps:e} x*{scale}+{offset}, {reductions}"),
                &got,
                &want,
                1e-5,
            );
        }
    }
}

#[test]
fn l2_normalize_matches_reference() {
    let cases: &[(&[usize], f32)] = &[
        (&[1, 1], 1e-12),
        (&[5, 17], 1e-12),
        (&[2, 512], 1e-12), // the CLAP embedding
        (&[3, 2, 100], 1e-12),
        (&[2, 5000], 1e-12),
        (&[4, 3], 10.0), // every norm under eps: x / eps
    ];
    for (seed, &(dims, eps)) in cases.iter().enumerate() {
        let numel: usize = dims.iter().product();
        let d = *dims.last().unwrap();
        let x = random(seed as u64 + 200, numel);
        for (reductions, ctx) in contexts() {
            let mut g = Graph::new(ctx);
            let vx = input(&mut g, dims, &x);
            let out = g.l2_normalize(vx, eps).unwrap();
            let got = run(g, out);
            assert_close(
                &format!("l2_normalize {dims:?} eps={eps:e}, {reductions}"),
                &got,
                &l2_ref(&x, d, eps as f64),
                1e-5,
            );
        }
    }
    // A zero row stays zero (divided by eps, not by its zero norm).
    for (_, ctx) in contexts() {
        let mut g = Graph::new(ctx);
        let vx = input(&mut g, &[2, 4], &[0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 4.0, 0.0]);
        let out = g.l2_normalize(vx, 1e-12).unwrap();
        let got = run(g, out);
        assert_eq!(got, [0.0, 0.0, 0.0, 0.0, 0.6, 0.0, 0.8, 0.0]);
    }
}

#[test]
fn softmax_matches_reference() {
    let cases: &[(&[usize], f32, f32)] = &[
        // dims, scale, input spread
        (&[1, 1], 1.0, 1.0),
        (&[3, 7], 0.125, 1.0),
        (&[2, 4, 1000], 1.0, 5.0),
        (&[5, 65], -2.0, 3.0),    // a negative scale flips the maximum
        (&[2, 4097], 1.0, 40.0),  // large logits: only max subtraction keeps exp finite
        (&[64, 77], 0.125, 10.0), // attention probabilities over CLAP's 77 tokens
        (&[40000, 3], 1.0, 1.0),  // more rows than one grid dimension takes (32768)
    ];
    for (seed, &(dims, scale, spread)) in cases.iter().enumerate() {
        let numel: usize = dims.iter().product();
        let d = *dims.last().unwrap();
        let x = shifted(seed as u64 + 300, numel, spread, 0.0);
        let want = softmax_ref(&x, d, scale as f64);
        for (reductions, ctx) in contexts() {
            let mut g = Graph::new(ctx);
            let vx = input(&mut g, dims, &x);
            let out = g.softmax(vx, scale).unwrap();
            let got = run(g, out);
            // Each row sums to one, so compare per row: the max-relative measure of the whole
            // tensor would hide the error of rows with small probabilities.
            for (r, (got_row, want_row)) in got.chunks(d).zip(want.chunks(d)).enumerate().take(8) {
                let err = max_rel_err(got_row, want_row);
                assert!(
                    err <= 1e-5,
                    "softmax {dims:?} row {r}, {reductions}: {err:.3e}"
                );
            }
            assert_close(
                &format!("softmax {dims:?} scale={scale} spread={spread}, {reductions}"),
                &got,
                &want,
                1e-5,
            );
        }
    }
}

#[test]
fn shape_mismatch_is_an_error_naming_the_op_and_shapes() {
    for (backend, ctx) in backends() {
        let mut g = Graph::new(ctx);
        let x = input(&mut g, &[2, 6, 5], &random(1, 60));
        let err = g
            .group_norm(x, 4, None, None, 1e-5, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("group_norm") && err.contains("[2, 6, 5]"),
            "{backend}: {err}"
        );
        let gamma = input(&mut g, &[5], &random(2, 5));
        let err = g
            .group_norm(x, 3, Some(gamma), None, 1e-5, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("group_norm") && err.contains("[2, 6, 5]") && err.contains("[5]"),
            "{backend}: {err}"
        );
        let flat = input(&mut g, &[7], &random(3, 7));
        let err = g
            .group_norm(flat, 1, None, None, 1e-5, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("group_norm") && err.contains("[7]"),
            "{backend}: {err}"
        );

        let beta = input(&mut g, &[6], &random(4, 6));
        let err = g.layer_norm(x, gamma, beta, 1e-5).unwrap_err().to_string();
        assert!(
            err.contains("layer_norm") && err.contains("[2, 6, 5]") && err.contains("[6]"),
            "{backend}: {err}"
        );

        let ids = Tensor::from_u32(ctx, [2, 3], &[0, 1, 2, 3, 4, 5]).unwrap();
        let ids = g.input(&ids);
        for err in [
            g.softmax(ids, 1.0).unwrap_err().to_string(),
            g.l2_normalize(ids, 1e-12).unwrap_err().to_string(),
        ] {
            assert!(
                err.contains("U32") && err.contains("[2, 3]"),
                "{backend}: {err}"
            );
        }
    }
}
