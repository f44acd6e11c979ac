//! The CPU backend's kernels against the f64 references the GPU kernel tests use, on seeded
//! random inputs of odd shapes, each printing its max relative error.

mod common;

use audioldm::cpu::{self, Conv2d, ConvTranspose1d, Epilogue, MatSlice, gemm};
use audioldm::gpu::Activation;
use common::reference::{act_ref, conv_transpose1d_ref, conv2d_ref, matmul_ref, max_rel_err};

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
        let a = common::random(seed, batch * m * k);
        let b = common::random(seed + 1, batch * k * n);
        let bias = common::random(seed + 2, n);
        let residual = common::random(seed + 3, batch * m * n);
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
    let stored_a = common::random(1, 5 + batch * k * m);
    let b = common::random(2, 3 + k * n);
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
    let a = common::random(1, 6 * 4);
    let b = common::random(2, 4 * 5);
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

/// conv2d against PyTorch's definition: odd sizes, strides, dilations, the VAE down-sampler's
/// one-sided padding, a height-1 case (conv1d), the input leaky ReLU and the whole epilogue.
#[test]
fn conv2d_matches_the_reference() {
    let cases = [
        // b, cin, h, w, cout, kh, kw, stride, pad [t, b, l, r], dilation
        (1, 3, 7, 9, 5, 3, 3, [1, 1], [1, 1, 1, 1], [1, 1]),
        (2, 8, 13, 11, 7, 3, 3, [2, 2], [0, 1, 0, 1], [1, 1]),
        (1, 5, 1, 97, 6, 1, 7, [1, 1], [0, 0, 9, 9], [1, 3]),
        (1, 16, 10, 16, 32, 1, 1, [1, 1], [0; 4], [1, 1]),
        (1, 4, 40, 30, 3, 3, 3, [1, 1], [1, 1, 1, 1], [1, 1]),
        // 576-deep columns: tiles of 455 of the 630 positions, the last one partial.
        (1, 64, 30, 21, 8, 3, 3, [1, 1], [1, 1, 1, 1], [1, 1]),
    ];
    for (i, &(b, cin, h, w, cout, kh, kw, stride, pad, dil)) in cases.iter().enumerate() {
        let reference = common::reference::Conv {
            b,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            stride,
            pad,
            dil,
        };
        let conv = Conv2d {
            batch: b,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            stride,
            padding: pad,
            dilation: dil,
            input_leaky_relu: (i % 2 == 1).then_some(0.1),
        };
        let seed = 100 + 10 * i as u64;
        let x = common::random(seed, b * cin * h * w);
        let weight = common::random(seed + 1, cout * cin * kh * kw);
        let bias = common::random(seed + 2, cout);
        let (plain, oh, ow) = conv2d_ref(&reference, &x, &weight, &bias, conv.input_leaky_relu);
        assert_eq!(conv.out_hw().expect("fits"), (oh, ow));
        let residual = common::random(seed + 3, plain.len());
        let act = Activation::Silu;
        let mut got = vec![0.0; plain.len()];
        cpu::conv2d(
            &mut got,
            &x,
            &weight,
            &conv,
            Epilogue {
                bias: Some(&bias),
                act,
                residual: Some(&residual),
            },
        )
        .expect("conv2d");
        let want: Vec<f64> = plain
            .iter()
            .zip(&residual)
            .map(|(&v, &r)| act_ref(v, act) + f64::from(r))
            .collect();
        let err = max_rel_err(&got, &want);
        println!("conv2d case {i} ({cin}->{cout}, {h}x{w}, k {kh}x{kw}): max rel err {err:.2e}");
        assert!(err <= 1e-5, "case {i}: {err:.2e}");
    }
}

/// conv_transpose1d against PyTorch's definition, with HiFi-GAN's up-sampling shapes (kernel
/// twice the stride, padding half the difference) and odd ones.
#[test]
fn conv_transpose1d_matches_the_reference() {
    let cases = [
        // b, cin, len, cout, k, stride, padding, output_padding
        (1, 16, 25, 8, 16, 8, 4, 0),
        (2, 6, 13, 5, 4, 2, 1, 0),
        (1, 3, 7, 4, 5, 3, 2, 1),
        (1, 9, 31, 7, 3, 1, 0, 0),
    ];
    for (i, &(b, cin, len, cout, k, stride, padding, output_padding)) in cases.iter().enumerate() {
        let seed = 200 + 10 * i as u64;
        let x = common::random(seed, b * cin * len);
        let weight = common::random(seed + 1, cin * cout * k);
        let bias = common::random(seed + 2, cout);
        let slope = 0.1;
        let want = conv_transpose1d_ref(
            &x,
            &weight,
            &bias,
            b,
            cin,
            len,
            cout,
            k,
            stride,
            padding,
            output_padding,
            slope,
        );
        let conv = ConvTranspose1d {
            batch: b,
            cin,
            len,
            cout,
            k,
            stride,
            padding,
            output_padding,
            input_leaky_relu: Some(slope),
        };
        assert_eq!(conv.out_len().expect("fits") * b * cout, want.len());
        let mut got = vec![0.0; want.len()];
        cpu::conv_transpose1d(
            &mut got,
            &x,
            &weight,
            &conv,
            Epilogue {
                bias: Some(&bias),
                ..Epilogue::default()
            },
        )
        .expect("conv_transpose1d");
        let err = max_rel_err(&got, &want);
        println!(
            "conv_transpose1d case {i} ({cin}->{cout}, len {len}, k {k}, stride {stride}): max rel err {err:.2e}"
        );
        assert!(err <= 1e-5, "case {i}: {err:.2e}");
    }
}

/// Sizes that do not fit are errors naming the op.
#[test]
fn convolutions_refuse_what_does_not_fit() {
    let conv = Conv2d {
        batch: 1,
        cin: 2,
        h: 2,
        w: 2,
        cout: 1,
        kh: 3,
        kw: 3,
        stride: [1, 1],
        padding: [0; 4],
        dilation: [1, 1],
        input_leaky_relu: None,
    };
    let err = conv.out_hw().expect_err("3x3 over 2x2");
    assert!(err.to_string().starts_with("conv2d: a 3x3 kernel"), "{err}");
    let fits = Conv2d {
        padding: [1; 4],
        ..conv
    };
    let err = cpu::conv2d(
        &mut [0.0; 4],
        &[0.0; 7],
        &[0.0; 18],
        &fits,
        Epilogue::default(),
    )
    .expect_err("input one short");
    assert!(
        err.to_string().contains("the input holds 7 values, not 8"),
        "{err}"
    );
    let t = ConvTranspose1d {
        batch: 1,
        cin: 1,
        len: 1,
        cout: 1,
        k: 2,
        stride: 1,
        padding: 1,
        output_padding: 0,
        input_leaky_relu: None,
    };
    let err = t.out_len().expect_err("no output");
    assert!(err.to_string().starts_with("conv_transpose1d:"), "{err}");
}

/// GroupNorm (with and without affine and SiLU), LayerNorm, softmax and L2 normalisation against
/// the references, including a group of mean 100 and spread 0.01 (precision of the variance).
#[test]
fn normalisations_match_the_reference() {
    use audioldm::cpu::norm;
    use common::reference::{group_norm_ref, l2_ref, layer_norm_ref, softmax_ref};
    let cases = [(2, 64, 37, 32), (1, 6, 250, 3), (3, 10, 1, 5)];
    for (i, &(b, c, s, groups)) in cases.iter().enumerate() {
        let seed = 300 + 10 * i as u64;
        let x = common::random(seed, b * c * s);
        let gamma = common::random(seed + 1, c);
        let beta = common::random(seed + 2, c);
        for (affine, silu) in [(false, false), (true, true)] {
            let (g, bt) = if affine {
                (Some(&gamma[..]), Some(&beta[..]))
            } else {
                (None, None)
            };
            let want = group_norm_ref(&x, &[b, c, s], groups, g, bt, 1e-6, silu);
            let mut got = vec![0.0; x.len()];
            norm::group_norm(&mut got, &x, (b, c, s), groups, g, bt, 1e-6, silu).expect("gn");
            let err = max_rel_err(&got, &want);
            println!("group_norm {b}x{c}x{s} G{groups} affine {affine} silu {silu}: {err:.2e}");
            assert!(err <= 1e-5, "{err:.2e}");
        }
    }
    let far: Vec<f32> = common::random(400, 640 * 50)
        .iter()
        .map(|v| 100.0 + 0.01 * v)
        .collect();
    let want = group_norm_ref(&far, &[1, 640, 50], 32, None, None, 1e-6, false);
    let mut got = vec![0.0; far.len()];
    norm::group_norm(&mut got, &far, (1, 640, 50), 32, None, None, 1e-6, false).expect("gn");
    let err = max_rel_err(&got, &want);
    println!("group_norm of mean 100, spread 0.01: {err:.2e}");
    assert!(err <= 1e-4, "{err:.2e}");

    for &(rows, d) in &[(77, 768), (5, 3), (400, 129)] {
        let x = common::random(500 + d as u64, rows * d);
        let gamma = common::random(501, d);
        let beta = common::random(502, d);
        let mut got = vec![0.0; x.len()];
        norm::layer_norm(&mut got, &x, d, &gamma, &beta, 1e-12).expect("ln");
        let err = max_rel_err(&got, &layer_norm_ref(&x, d, &gamma, &beta, 1e-12));
        println!("layer_norm {rows}x{d}: {err:.2e}");
        assert!(err <= 1e-5, "{err:.2e}");
        norm::softmax(&mut got, &x, d, 0.125).expect("softmax");
        let err = max_rel_err(&got, &softmax_ref(&x, d, 0.125));
        println!("softmax {rows}x{d}: {err:.2e}");
        assert!(err <= 1e-5, "{err:.2e}");
        norm::l2_normalize(&mut got, &x, d, 1e-12).expect("l2");
        let err = max_rel_err(&got, &l2_ref(&x, d, 1e-12));
        println!("l2_normalize {rows}x{d}: {err:.2e}");
        assert!(err <= 1e-5, "{err:.2e}");
    }
    let err = norm::group_norm(
        &mut [0.0; 6],
        &[0.0; 6],
        (1, 6, 1),
        4,
        None,
        None,
        1e-6,
        false,
    )
    .expect_err("6 channels, 4 groups");
    assert!(
        err.to_string().starts_with("group_norm: 6 channels"),
        "{err}"
    );
    let err = norm::softmax(&mut [0.0; 7], &[0.0; 7], 3, 1.0).expect_err("7 values, rows of 3");
    assert!(err.to_string().contains("not rows of 3"), "{err}");
}

/// Attention against the reference: odd sizes, more queries and keys than a block (so the online
/// softmax rescales across key blocks), head widths unlike the value widths, and the UNet's 8
/// heads of 40 over 1000 tokens.
#[test]
fn attention_matches_the_reference() {
    use audioldm::cpu::{Attention, attention};
    use common::reference::AttentionProblem;
    let cases = [
        AttentionProblem::new(1, 1, 1, 1, 1, 1),
        AttentionProblem::new(2, 3, 70, 1100, 9, 5),
        AttentionProblem::new(1, 8, 1000, 77, 40, 40),
        AttentionProblem::new(1, 2, 130, 600, 64, 64),
    ];
    for (i, p) in cases.iter().enumerate() {
        let seed = 600 + 10 * i as u64;
        let q = common::random(seed, p.batch * p.tq * p.heads * p.d);
        let k = common::random(seed + 1, p.batch * p.tk * p.heads * p.d);
        // Large keys make the scores' max move between key blocks.
        let k: Vec<f32> = k.iter().map(|x| 4.0 * x).collect();
        let v = common::random(seed + 2, p.batch * p.tk * p.heads * p.dv);
        let (h, d, dv, tq, tk) = (p.heads, p.d, p.dv, p.tq, p.tk);
        let want = p.reference(
            (&q, &|b, t, hh| (b * tq + t) * h * d + hh * d),
            (&k, &|b, t, hh| (b * tk + t) * h * d + hh * d),
            (&v, &|b, t, hh| (b * tk + t) * h * dv + hh * dv),
        );
        let mut got = vec![0.0; want.len()];
        let a = Attention {
            batch: p.batch,
            heads: h,
            tq,
            tk,
            d,
            dv,
            scale: p.scale,
        };
        attention(&mut got, &q, &k, &v, &a).expect("attention");
        let err = max_rel_err(&got, &want);
        println!("cpu {}: max rel err {err:.2e}", p.name());
        assert!(err <= 1e-5, "{}: {err:.2e}", p.name());
    }
    let a = Attention {
        batch: 1,
        heads: 2,
        tq: 3,
        tk: 4,
        d: 5,
        dv: 5,
        scale: 1.0,
    };
    let err = attention(&mut [0.0; 30], &[0.0; 29], &[0.0; 40], &[0.0; 40], &a)
        .expect_err("queries one short");
    assert!(
        err.to_string()
            .contains("the queries hold 29 values, not 30"),
        "{err}"
    );
}

/// The elementwise ops against direct f64 computation: every activation after a scale, sums and
/// products with `b` broadcast from the trailing dims and over size-1 dims, and GEGLU.
#[test]
fn elementwise_ops_match_the_reference() {
    use audioldm::cpu::elementwise::{Combine, binary, geglu, unary};
    let x = common::random(700, 40_000);
    for act in [
        Activation::None,
        Activation::LeakyRelu(0.2),
        Activation::Gelu,
    ] {
        let mut got = vec![0.0; x.len()];
        unary(&mut got, &x, act, 1.5, -0.25).expect("unary");
        let want: Vec<f64> = x
            .iter()
            .map(|&v| act_ref(1.5 * f64::from(v) - 0.25, act))
            .collect();
        let err = max_rel_err(&got, &want);
        println!("unary {act:?}: {err:.2e}");
        assert!(err <= 1e-6, "{err:.2e}");
    }
    let a_dims = [2, 5, 7, 3];
    let a = common::random(701, 2 * 5 * 7 * 3);
    for b_dims in [
        vec![2, 5, 7, 3],
        vec![7, 3],
        vec![5, 1, 3],
        vec![1],
        vec![2, 1, 1, 1],
    ] {
        let b = common::random(702, b_dims.iter().product());
        let b_at = |idx: [usize; 4]| {
            // The reference's own broadcast: align trailing dims, index 0 where b has a 1.
            let lead = 4 - b_dims.len();
            let mut at = 0;
            for (i, &n) in b_dims.iter().enumerate() {
                at = at * n + if n == 1 { 0 } else { idx[lead + i] };
            }
            f64::from(b[at])
        };
        for combine in [
            Combine::Axpby {
                alpha: 0.5,
                beta: -2.0,
            },
            Combine::Mul,
        ] {
            let mut got = vec![0.0; a.len()];
            binary(&mut got, (&a, &a_dims), (&b, &b_dims), combine).expect("binary");
            let mut want = Vec::with_capacity(a.len());
            for i0 in 0..2 {
                for i1 in 0..5 {
                    for i2 in 0..7 {
                        for i3 in 0..3 {
                            let av = f64::from(a[((i0 * 5 + i1) * 7 + i2) * 3 + i3]);
                            let bv = b_at([i0, i1, i2, i3]);
                            want.push(match combine {
                                Combine::Axpby { alpha, beta } => {
                                    f64::from(alpha) * av + f64::from(beta) * bv
                                }
                                Combine::Mul => av * bv,
                            });
                        }
                    }
                }
            }
            let err = max_rel_err(&got, &want);
            println!("binary {b_dims:?} onto {a_dims:?} {combine:?}: {err:.2e}");
            assert!(err <= 1e-6, "{err:.2e}");
        }
    }
    let err = binary(
        &mut [0.0; 6],
        (&[0.0; 6], &[2, 3]),
        (&[0.0; 2], &[2]),
        Combine::Mul,
    )
    .expect_err("[2] onto [2, 3]");
    assert!(
        err.to_string().contains("cannot broadcast [2] onto [2, 3]"),
        "{err}"
    );

    let h = 37;
    let x = common::random(703, 11 * 2 * h);
    let mut got = vec![0.0; 11 * h];
    geglu(&mut got, &x, h).expect("geglu");
    let want: Vec<f64> = (0..11 * h)
        .map(|i| {
            let (r, j) = (i / h, i % h);
            f64::from(x[2 * h * r + j]) * act_ref(f64::from(x[2 * h * r + h + j]), Activation::Gelu)
        })
        .collect();
    let err = max_rel_err(&got, &want);
    println!("geglu: {err:.2e}");
    assert!(err <= 1e-6, "{err:.2e}");
}
