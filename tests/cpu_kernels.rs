//! The CPU backend's kernels against the f64 references the GPU kernel tests use, on seeded
//! random inputs of odd shapes, each printing its max relative error.

mod common;

use audioldm::cpu::{Epilogue, MatSlice, gemm};
use audioldm::gpu::Activation;
use common::reference::{act_ref, matmul_ref, max_rel_err};

fn random(seed: u64, n: usize) -> Vec<f32> {
    common::random(seed, n)
}

/// Plain and batched products of shapes that divide no block size, with every activation, a
/// bias and a residual.
#[test]
fn gemm_matches_the_reference_with_its_epilogue() {
    let acts = [
        Activation::None,
        Activation::Relu,
        Activation::LeakyRelu(0.1),
        Activation::Silu,
        Activation::Gelu,
        Activation::Tanh,
    ];
    for (case, &(batch, m, k, n)) in [
        (1, 1, 1, 1),
        (1, 37, 70, 29),
        (3, 5, 129, 67),
        (2, 300, 64, 257),
    ]
    .iter()
    .enumerate()
    {
        let seed = 10 * case as u64;
        let a = random(seed, batch * m * k);
        let b = random(seed + 1, batch * k * n);
        let bias = random(seed + 2, n);
        let residual = random(seed + 3, batch * m * n);
        let product = matmul_ref(&a, &b, batch, m, k, n, true);
        for act in acts {
            let alpha = 0.75;
            let mut got = vec![0.0; batch * m * n];
            gemm(
                &mut got,
                MatSlice::row_major(&a, m, k),
                MatSlice::row_major(&b, k, n),
                (batch, m, k, n),
                alpha,
                Epilogue {
                    bias: Some(&bias),
                    act,
                    residual: Some(&residual),
                },
            )
            .expect("gemm");
            let want: Vec<f64> = product
                .iter()
                .enumerate()
                .map(|(i, &p)| {
                    let x = f64::from(alpha) * p + f64::from(bias[i % n]);
                    act_ref(x, act) + f64::from(residual[i])
                })
                .collect();
            let err = max_rel_err(&got, &want);
            println!("gemm {batch}x{m}x{k}x{n} {act:?}: max rel err {err:.2e}");
            assert!(err <= 1e-5, "gemm {batch}x{m}x{k}x{n} {act:?}: {err:.2e}");
        }
    }
}

/// Operands read through strides, as attention reads its heads: A transposed, B shared by every
/// batch (batch stride 0), both at an offset inside a larger buffer.
#[test]
fn gemm_reads_strided_views() {
    let (batch, m, k, n) = (4, 19, 33, 23);
    // A stored as [batch, k, m] (so read transposed), after 5 values of padding.
    let stored_a = random(1, 5 + batch * k * m);
    let b = random(2, 3 + k * n);
    let a_view = MatSlice {
        data: &stored_a,
        offset: 5,
        sb: k * m,
        sr: 1,
        sc: m,
    };
    let b_view = MatSlice {
        data: &b,
        offset: 3,
        sb: 0,
        sr: n,
        sc: 1,
    };
    let mut a_plain = vec![0.0f32; batch * m * k];
    for bi in 0..batch {
        for r in 0..m {
            for c in 0..k {
                a_plain[bi * m * k + r * k + c] = stored_a[5 + bi * k * m + c * m + r];
            }
        }
    }
    let want = matmul_ref(&a_plain, &b[3..], batch, m, k, n, false);
    let mut got = vec![0.0; batch * m * n];
    gemm(
        &mut got,
        a_view,
        b_view,
        (batch, m, k, n),
        1.0,
        Epilogue::default(),
    )
    .expect("gemm");
    let err = max_rel_err(&got, &want);
    println!("strided gemm: max rel err {err:.2e}");
    assert!(err <= 1e-5, "{err:.2e}");

    // The same through `t()`: a [k, m] matrix read as [m, k].
    let single = &stored_a[5..5 + k * m];
    let mut got = vec![0.0; m * n];
    gemm(
        &mut got,
        MatSlice::row_major(single, k, m).t(),
        MatSlice::row_major(&b[3..], k, n),
        (1, m, k, n),
        1.0,
        Epilogue::default(),
    )
    .expect("gemm");
    let err = max_rel_err(&got, &want[..m * n]);
    assert!(err <= 1e-5, "transposed view: {err:.2e}");
}

/// Views that reach past their data, and outputs, biases or residuals of the wrong size, are
/// errors naming the op, not out-of-bounds reads.
#[test]
fn gemm_refuses_views_outside_their_data() {
    let a = random(1, 6 * 4);
    let b = random(2, 4 * 5);
    let mut out = vec![0.0; 6 * 5];
    let dims = (1, 6, 4, 5);
    let short = MatSlice::row_major(&a[..23], 6, 4);
    let err = gemm(
        &mut out,
        short,
        MatSlice::row_major(&b, 4, 5),
        dims,
        1.0,
        Epilogue::default(),
    )
    .expect_err("A is one value short");
    assert!(err.to_string().starts_with("gemm: A of 1 x 6 x 4"), "{err}");
    let batched = (2, 6, 4, 5);
    let err = gemm(
        &mut vec![0.0; 2 * 30],
        MatSlice::row_major(&a, 6, 4),
        MatSlice::row_major(&b, 4, 5),
        batched,
        1.0,
        Epilogue::default(),
    )
    .expect_err("a second batch of A is not there");
    assert!(err.to_string().contains("A of 2 x 6 x 4"), "{err}");
    let bias = [0.0; 4];
    let err = gemm(
        &mut out,
        MatSlice::row_major(&a, 6, 4),
        MatSlice::row_major(&b, 4, 5),
        dims,
        1.0,
        Epilogue {
            bias: Some(&bias),
            ..Epilogue::default()
        },
    )
    .expect_err("bias of 4 for 5 columns");
    assert!(err.to_string().contains("bias of 4 values"), "{err}");
    let err = gemm(
        &mut out[..29],
        MatSlice::row_major(&a, 6, 4),
        MatSlice::row_major(&b, 4, 5),
        dims,
        1.0,
        Epilogue::default(),
    )
    .expect_err("output one short");
    assert!(err.to_string().contains("output holds 29"), "{err}");
}
