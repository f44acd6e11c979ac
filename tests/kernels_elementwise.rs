//! Activations, scale, broadcasting binary ops and GEGLU against f64 CPU references, on the GPU
//! and on the CPU backend.

mod common;

use audioldm::engine::{Activation, Context, Graph};
use common::reference::act_ref;
use common::*;

fn act_ref_gelu(x: f64) -> f64 {
    act_ref(x, Activation::Gelu)
}

/// Index of `b`'s element that numpy broadcasting pairs with element `i` of `a`.
fn broadcast_index(i: usize, a: &[usize], b: &[usize]) -> usize {
    let lead = a.len() - b.len();
    let (mut rest, mut at, mut stride) = (i, 0, 1);
    for d in (0..a.len()).rev() {
        let coord = rest % a[d];
        rest /= a[d];
        if d >= lead {
            let nb = b[d - lead];
            if nb != 1 {
                at += coord * stride;
            }
            stride *= nb;
        }
    }
    at
}

const ACTS: [Activation; 6] = [
    Activation::None,
    Activation::Relu,
    Activation::LeakyRelu(0.2),
    Activation::Silu,
    Activation::Gelu,
    Activation::Tanh,
];

fn run_activation(ctx: &Context, dims: &[usize], x: &[f32], act: Activation) -> Vec<f32> {
    let mut g = Graph::new(ctx);
    let vx = input(&mut g, dims, x);
    let y = g.activation(vx, act).unwrap();
    assert_eq!(g.dims(y), dims);
    run(g, y)
}

#[test]
fn activations_match_reference() {
    for (seed, dims) in [vec![1usize], vec![7, 13], vec![2, 3, 33, 17], vec![1000]]
        .into_iter()
        .enumerate()
    {
        let n: usize = dims.iter().product();
        let x: Vec<f32> = random(seed as u64, n).iter().map(|v| v * 6.0).collect();
        for act in ACTS {
            let want: Vec<f64> = x.iter().map(|&v| act_ref(v as f64, act)).collect();
            let tol = match act {
                Activation::None | Activation::Relu | Activation::LeakyRelu(_) => 1e-7,
                _ => 1e-6,
            };
            for (backend, ctx) in backends() {
                let got = run_activation(ctx, &dims, &x, act);
                assert_close(
                    &format!("activation {act:?} {dims:?} on {backend}"),
                    &got,
                    &want,
                    tol,
                );
            }
        }
    }
}

/// Saturating inputs: no NaN or infinity, and each value within 1e-6 of the reference relative to
/// max(1, |reference|).
#[test]
fn activations_saturate_without_nan() {
    let x = [
        -1000.0f32, -100.0, -89.0, -50.0, -20.0, -15.0, -10.0, -9.0, -1e-3, -1e-30, 0.0, 1e-30,
        1e-3, 9.0, 10.0, 15.0, 20.0, 50.0, 89.0, 100.0, 1000.0,
    ];
    for (backend, ctx) in backends() {
        for act in ACTS {
            let got = run_activation(ctx, &[x.len()], &x, act);
            let mut worst = 0.0f64;
            for (&xi, &gi) in x.iter().zip(&got) {
                assert!(gi.is_finite(), "{act:?}({xi}) = {gi} on {backend}");
                let want = act_ref(xi as f64, act);
                let err = (gi as f64 - want).abs() / want.abs().max(1.0);
                assert!(
                    err <= 1e-6,
                    "{act:?}({xi}) = {gi}, want {want} on {backend}"
                );
                worst = worst.max(err);
            }
            println!("activation {act:?} at large |x| on {backend}: max err {worst:.3e}");
        }
    }
}

#[test]
fn gelu_is_within_1e6_absolute_on_minus_10_to_10() {
    let n = 200_001;
    let x: Vec<f32> = (0..n)
        .map(|i| -10.0 + 20.0 * i as f32 / (n - 1) as f32)
        .collect();
    let want: Vec<f64> = x.iter().map(|&v| act_ref_gelu(v as f64)).collect();
    for (backend, ctx) in backends() {
        let mut g = Graph::new(ctx);
        let vx = input(&mut g, &[n], &x);
        let y = g.activation(vx, Activation::Gelu).unwrap();
        let got = run(g, y);
        let err = max_abs_err(&got, &want);
        println!("gelu on [-10, 10] on {backend}: max abs err {err:.3e}");
        assert!(err <= 1e-6, "gelu on {backend}: max abs err {err:.3e}");
    }
}

#[test]
fn scale_and_axpby_coefficients_change_on_replay() {
    for (backend, ctx) in backends() {
        let dims = [3, 5, 7];
        let n = 105;
        let a = random(11, n);
        let b = random(12, 7);
        let mut g = Graph::new(ctx);
        let va = input(&mut g, &dims, &a);
        let vb = input(&mut g, &[7], &b);
        let alpha = g.scalar(2.0);
        let beta = g.scalar(-0.5);
        let scaled = g.scale(va, alpha, 0.25).unwrap();
        let shifted = g.scale(va, 1.5, beta).unwrap();
        let combo = g.axpby(va, vb, alpha, beta).unwrap();
        for v in [scaled, shifted, combo] {
            g.output(v).unwrap();
        }
        let mut exe = g.build().unwrap();
        for (al, be) in [(2.0f32, -0.5f32), (-3.25, 0.75), (0.0, 1.0)] {
            exe.set_scalar(alpha, al);
            exe.set_scalar(beta, be);
            exe.run().unwrap();
            let (al, be) = (al as f64, be as f64);
            let want_scaled: Vec<f64> = a.iter().map(|&v| al * v as f64 + 0.25).collect();
            let want_shifted: Vec<f64> = a.iter().map(|&v| 1.5 * v as f64 + be).collect();
            let want_combo: Vec<f64> = a
                .iter()
                .enumerate()
                .map(|(i, &v)| al * v as f64 + be * b[i % 7] as f64)
                .collect();
            assert_close(
                &format!("scale alpha={al} on {backend}"),
                &exe.read(scaled).unwrap(),
                &want_scaled,
                1e-6,
            );
            assert_close(
                &format!("scale beta={be} on {backend}"),
                &exe.read(shifted).unwrap(),
                &want_shifted,
                1e-6,
            );
            assert_close(
                &format!("axpby alpha={al} beta={be} on {backend}"),
                &exe.read(combo).unwrap(),
                &want_combo,
                1e-6,
            );
        }
    }
}

#[test]
fn binary_ops_broadcast_numpy_style() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[2, 3, 4, 5], &[2, 3, 4, 5]),
        (&[2, 3, 4, 5], &[5]),
        (&[2, 3, 4, 5], &[4, 1]),
        (&[2, 3, 4, 5], &[1, 3, 1, 1]),
        (&[2, 3, 4, 5], &[2, 3, 1, 1]),
        (&[2, 3, 4, 5], &[3, 1, 1]),
        (&[2, 3, 4, 5], &[2, 1, 4, 1]),
        (&[2, 3, 4, 5], &[1]),
        (&[2, 3, 4, 5], &[]),
        (&[1, 7, 1, 13], &[7, 1, 1]),
        (&[1, 7, 1, 13], &[1, 13]),
        (&[3, 2, 5, 1, 3, 4], &[3, 1, 5, 1, 1, 4]),
        (&[3, 2, 5, 2, 3, 4], &[2, 1, 2, 1, 4]),
        (&[2, 320, 9, 17], &[2, 320, 1, 1]),
        (&[1], &[1]),
        (&[4099], &[4099]),
    ];
    for (seed, &(da, db)) in cases.iter().enumerate() {
        let na: usize = da.iter().product();
        let nb: usize = db.iter().product();
        let a = random(100 + seed as u64, na);
        let b = random(200 + seed as u64, nb);
        let bi: Vec<usize> = (0..na).map(|i| broadcast_index(i, da, db)).collect();
        type Op = fn(f64, f64) -> f64;
        let ops: [(&str, Op); 5] = [
            ("add", |x, y| x + y),
            ("sub", |x, y| x - y),
            ("mul", |x, y| x * y),
            ("axpby", |x, y| 0.5 * x - 2.0 * y),
            ("axpby_scalar", |x, y| -1.25 * x + 3.0 * y),
        ];
        for (name, f) in ops {
            let want: Vec<f64> = (0..na).map(|i| f(a[i] as f64, b[bi[i]] as f64)).collect();
            for (backend, ctx) in backends() {
                let mut g = Graph::new(ctx);
                let va = input(&mut g, da, &a);
                let vb = input(&mut g, db, &b);
                let y = match name {
                    "add" => g.add(va, vb),
                    "sub" => g.sub(va, vb),
                    "mul" => g.mul(va, vb),
                    "axpby" => g.axpby(va, vb, 0.5, -2.0),
                    _ => {
                        let alpha = g.scalar(-1.25);
                        let beta = g.scalar(3.0);
                        g.axpby(va, vb, alpha, beta)
                    }
                }
                .unwrap();
                assert_eq!(g.dims(y), da);
                let got = run(g, y);
                assert_close(
                    &format!("{name} {da:?} <- {db:?} on {backend}"),
                    &got,
                    &want,
                    1e-6,
                );
            }
        }
    }
}

#[test]
fn geglu_matches_diffusers() {
    for (seed, dims) in [
        vec![1usize, 2],
        vec![2, 7, 10],
        vec![3, 5, 2, 6],
        vec![4, 1280],
    ]
    .into_iter()
    .enumerate()
    {
        let n: usize = dims.iter().product();
        let x: Vec<f32> = random(300 + seed as u64, n)
            .iter()
            .map(|v| v * 4.0)
            .collect();
        let two_h = *dims.last().unwrap();
        let h = two_h / 2;
        let want: Vec<f64> = (0..n / 2)
            .map(|i| {
                let (r, j) = (i / h, i % h);
                x[r * two_h + j] as f64 * act_ref_gelu(x[r * two_h + h + j] as f64)
            })
            .collect();
        let mut out_dims = dims.clone();
        *out_dims.last_mut().unwrap() = h;
        for (backend, ctx) in backends() {
            let mut g = Graph::new(ctx);
            let vx = input(&mut g, &dims, &x);
            let y = g.geglu(vx).unwrap();
            assert_eq!(g.dims(y), &out_dims[..]);
            let got = run(g, y);
            assert_close(&format!("geglu {dims:?} on {backend}"), &got, &want, 2e-6);
        }
    }
}

#[test]
fn shape_mismatch_is_an_error_naming_the_op_and_shapes() {
    for (backend, ctx) in backends() {
        let mut g = Graph::new(ctx);
        let a = input(&mut g, &[2, 3, 4], &random(1, 24));
        let b = input(&mut g, &[3, 5], &random(2, 15));
        let c = input(&mut g, &[1, 2, 3, 4], &random(3, 24));
        for (name, err) in [
            ("add", g.add(a, b)),
            ("sub", g.sub(a, b)),
            ("mul", g.mul(a, b)),
            ("axpby", g.axpby(a, b, 1.0, 2.0)),
        ] {
            let err = err.unwrap_err().to_string();
            assert!(
                err.contains(name) && err.contains("[2, 3, 4]") && err.contains("[3, 5]"),
                "{backend}: {err}"
            );
        }
        // b may not have more dims than a.
        let err = g.add(a, c).unwrap_err().to_string();
        assert!(
            err.contains("add") && err.contains("[2, 3, 4]") && err.contains("[1, 2, 3, 4]"),
            "{backend}: {err}"
        );
        let odd = input(&mut g, &[4, 7], &random(4, 28));
        let err = g.geglu(odd).unwrap_err().to_string();
        assert!(
            err.contains("geglu") && err.contains("[4, 7]"),
            "{backend}: {err}"
        );
    }
}
