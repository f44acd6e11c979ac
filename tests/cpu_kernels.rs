//! The CPU backend's kernels against the f64 references the GPU kernel tests use, on seeded
//! random inputs of odd shapes, each printing its max relative error.

mod common;

use audioldm::engine::Activation;
use audioldm::engine::cpu::{self, Conv2d, ConvTranspose1d, Epilogue, MatSlice, gemm};
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
    use audioldm::engine::cpu::norm;
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
    use audioldm::engine::cpu::{Attention, attention};
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
    use audioldm::engine::cpu::elementwise::{Combine, binary, geglu, unary};
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

/// Row-major coordinates of element `i` of `dims`.
fn coords(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut c = vec![0; dims.len()];
    for d in (0..dims.len()).rev() {
        c[d] = i % dims[d];
        i /= dims[d];
    }
    c
}

/// Row-major index of `coords` in `dims`.
fn index(coords: &[usize], dims: &[usize]) -> usize {
    coords.iter().zip(dims).fold(0, |at, (&c, &n)| at * n + c)
}

/// Permutes of rank 1 to 4, identity and full reversal included, element by element against
/// `out[c] = x[c permuted back]`: exact.
#[test]
fn permute_matches_the_reference() {
    use audioldm::engine::cpu::layout::permute;
    let cases: &[(&[usize], &[usize])] = &[
        (&[7], &[0]),
        (&[3, 5, 7], &[0, 1, 2]),
        (&[3, 5, 7], &[2, 1, 0]),
        (&[3, 5, 7], &[0, 2, 1]),
        (&[3, 5, 7], &[1, 0, 2]),
        (&[3, 1, 7], &[2, 0, 1]),
        (&[2, 3, 5, 7], &[0, 1, 2, 3]),
        (&[2, 3, 5, 7], &[3, 2, 1, 0]),
        (&[2, 3, 5, 7], &[0, 2, 1, 3]),
        (&[2, 3, 5, 7], &[1, 3, 0, 2]),
        (&[2, 77, 8, 40], &[0, 2, 1, 3]),
        (&[130, 257], &[1, 0]),
    ];
    for (i, &(dims, perm)) in cases.iter().enumerate() {
        let n: usize = dims.iter().product();
        let x = common::random(800 + i as u64, n);
        let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
        let want: Vec<f32> = (0..n)
            .map(|o| {
                let oc = coords(o, &out_dims);
                let mut ic = vec![0; dims.len()];
                for (d, &p) in perm.iter().enumerate() {
                    ic[p] = oc[d];
                }
                x[index(&ic, dims)]
            })
            .collect();
        let mut got = vec![0.0; n];
        permute(&x, dims, perm, &mut got).expect("permute");
        assert_eq!(got, want, "permute {dims:?} by {perm:?}");
    }
    let err = permute(&[0.0; 6], &[2, 3], &[1, 1], &mut [0.0; 6]).expect_err("not a permutation");
    assert!(
        err.to_string().starts_with("permute: [1, 1] is not"),
        "{err}"
    );
    let err = permute(&[0.0; 6], &[2, 3], &[1, 0], &mut [0.0; 5]).expect_err("output one short");
    assert!(
        err.to_string().contains("the output holds 5 values, not 6"),
        "{err}"
    );
    let err = permute(&[0.0; 5], &[2, 3], &[1, 0], &mut [0.0; 6]).expect_err("input one short");
    assert!(err.to_string().contains("input holds 5"), "{err}");
    let err = permute(&[], &[usize::MAX, 3], &[1, 0], &mut []).expect_err("overflowing dims");
    assert!(err.to_string().starts_with("permute:"), "{err}");
}

/// Slices at the start, middle and end of every axis (whole axis and one element included),
/// against per-element indexing: exact.
#[test]
fn slice_matches_the_reference() {
    use audioldm::engine::cpu::layout::slice;
    for (case, dims) in [vec![5usize, 7, 3], vec![2, 3, 5, 7], vec![1, 9]]
        .iter()
        .enumerate()
    {
        let n: usize = dims.iter().product();
        let x = common::random(900 + case as u64, n);
        for axis in 0..dims.len() {
            let len = dims[axis];
            let mut ranges = vec![(0, len), (0, 1), (len - 1, len), (len / 2, len / 2 + 1)];
            if len >= 3 {
                ranges.extend([(1, len - 1), (0, len - 1), (1, len)]);
            }
            for (start, end) in ranges {
                let mut out_dims = dims.clone();
                out_dims[axis] = end - start;
                let m: usize = out_dims.iter().product();
                let want: Vec<f32> = (0..m)
                    .map(|o| {
                        let mut c = coords(o, &out_dims);
                        c[axis] += start;
                        x[index(&c, dims)]
                    })
                    .collect();
                let mut got = vec![0.0; m];
                slice(&x, dims, axis, start, end, &mut got).expect("slice");
                assert_eq!(got, want, "slice {start}..{end} of axis {axis} of {dims:?}");
            }
        }
    }
    let x = [0.0; 6];
    for (axis, start, end) in [(2, 0, 1), (1, 2, 2), (1, 2, 4), (0, 1, 0)] {
        let err = slice(&x, &[2, 3], axis, start, end, &mut [0.0; 6]).expect_err("bad range");
        assert!(
            err.to_string()
                .starts_with(&format!("slice: cannot take {start}..{end} of axis {axis}")),
            "{err}"
        );
    }
    let err = slice(&x, &[2, 3], 1, 0, 2, &mut [0.0; 6]).expect_err("output too long");
    assert!(
        err.to_string().contains("the output holds 6 values, not 4"),
        "{err}"
    );
    let err = slice(&x[..5], &[2, 3], 1, 0, 2, &mut [0.0; 4]).expect_err("input one short");
    assert!(err.to_string().contains("input holds 5"), "{err}");
}

/// Concat along every axis of rank-3 and rank-4 tensors, against per-element indexing: exact.
#[test]
fn concat_matches_the_reference() {
    use audioldm::engine::cpu::layout::concat;
    for (case, dims) in [vec![3usize, 5, 7], vec![2, 3, 1, 5], vec![4]]
        .iter()
        .enumerate()
    {
        for axis in 0..dims.len() {
            let (mut a_dims, mut b_dims) = (dims.clone(), dims.clone());
            a_dims[axis] += 1;
            b_dims[axis] = 2;
            let a = common::random(1000 + 10 * case as u64, a_dims.iter().product());
            let b = common::random(1001 + 10 * case as u64, b_dims.iter().product());
            let mut out_dims = a_dims.clone();
            out_dims[axis] += b_dims[axis];
            let m: usize = out_dims.iter().product();
            let want: Vec<f32> = (0..m)
                .map(|o| {
                    let mut c = coords(o, &out_dims);
                    if c[axis] < a_dims[axis] {
                        a[index(&c, &a_dims)]
                    } else {
                        c[axis] -= a_dims[axis];
                        b[index(&c, &b_dims)]
                    }
                })
                .collect();
            let mut got = vec![0.0; m];
            concat(&a, &a_dims, &b, &b_dims, axis, &mut got).expect("concat");
            assert_eq!(got, want, "concat {a_dims:?} and {b_dims:?} along {axis}");
        }
    }
    let err = concat(&[0.0; 6], &[2, 3], &[0.0; 6], &[3, 2], 0, &mut [0.0; 12])
        .expect_err("mismatched dims");
    assert!(
        err.to_string()
            .starts_with("concat: cannot join [2, 3] and [3, 2] along axis 0"),
        "{err}"
    );
    let err = concat(&[0.0; 6], &[2, 3], &[0.0; 3], &[1, 3], 2, &mut [0.0; 9])
        .expect_err("axis out of range");
    assert!(err.to_string().starts_with("concat: cannot join"), "{err}");
    let err = concat(&[0.0; 6], &[2, 3], &[0.0; 3], &[1, 3], 0, &mut [0.0; 8])
        .expect_err("output one short");
    assert!(
        err.to_string().contains("the output holds 8 values, not 9"),
        "{err}"
    );
    let err = concat(&[0.0; 6], &[2, 3], &[0.0; 2], &[1, 3], 0, &mut [0.0; 8])
        .expect_err("second input one short");
    assert!(err.to_string().contains("second input holds 2"), "{err}");
}

/// Nearest resizing by 2x, by non-integer ratios both ways and where the f32 scale rounds down
/// (26 -> 44 reads row 12 at row 22), against PyTorch's index formula written out here: exact.
#[test]
fn upsample_nearest_matches_the_reference() {
    use audioldm::engine::cpu::layout::upsample_nearest;
    let source = |dst: usize, input: usize, output: usize| {
        let scale = input as f32 / output as f32;
        ((dst as f32 * scale).floor() as usize).min(input - 1)
    };
    let cases: &[([usize; 4], usize, usize)] = &[
        ([1, 1, 8, 8], 16, 16),
        ([2, 3, 5, 7], 10, 14),
        ([1, 2, 63, 5], 125, 9),
        ([2, 1, 32, 7], 63, 13),
        ([3, 2, 9, 10], 4, 7),
        ([1, 2, 26, 2], 44, 82),
        ([1, 1, 1, 1], 3, 2),
        ([1, 4, 5, 6], 5, 6),
        ([2, 8, 64, 40], 128, 80),
    ];
    for (i, &(dims, out_h, out_w)) in cases.iter().enumerate() {
        let [b, c, h, w] = dims;
        let x = common::random(1100 + i as u64, b * c * h * w);
        let mut want = Vec::with_capacity(b * c * out_h * out_w);
        for plane in 0..b * c {
            for oy in 0..out_h {
                for ox in 0..out_w {
                    let (sy, sx) = (source(oy, h, out_h), source(ox, w, out_w));
                    want.push(x[(plane * h + sy) * w + sx]);
                }
            }
        }
        let mut got = vec![0.0; want.len()];
        upsample_nearest(&x, &dims, out_h, out_w, &mut got).expect("upsample");
        assert_eq!(got, want, "upsample_nearest {dims:?} -> {out_h}x{out_w}");
    }
    let err = upsample_nearest(&[0.0; 24], &[2, 3, 4], 8, 8, &mut [0.0; 384]).expect_err("rank 3");
    assert!(
        err.to_string()
            .starts_with("upsample_nearest: input [2, 3, 4] is not [B, C, H, W]"),
        "{err}"
    );
    let err =
        upsample_nearest(&[0.0; 4], &[1, 1, 2, 2], 0, 8, &mut []).expect_err("zero output height");
    assert!(
        err.to_string()
            .starts_with("upsample_nearest: cannot resize"),
        "{err}"
    );
    let err = upsample_nearest(&[0.0; 4], &[1, 1, 2, 2], 4, 4, &mut [0.0; 15])
        .expect_err("output one short");
    assert!(
        err.to_string()
            .contains("the output holds 15 values, not 16"),
        "{err}"
    );
}

/// Rows gathered for repeated and unordered ids, first and last rows included: exact. An id past
/// the table is an error naming it (where the GPU op writes zeros), and nothing is written.
#[test]
fn embedding_matches_the_reference() {
    use audioldm::engine::cpu::embedding::embedding;
    let (rows, dim) = (37, 13);
    let table = common::random(1200, rows * dim);
    let ids = [0u32, 5, 5, 36, 1, 0, 36, 17, 5];
    let want: Vec<f32> = (0..ids.len() * dim)
        .map(|i| table[ids[i / dim] as usize * dim + i % dim])
        .collect();
    let mut got = vec![0.0; want.len()];
    embedding(&ids, &table, rows, dim, &mut got).expect("embedding");
    assert_eq!(got, want);

    let mut out = vec![7.0; 3 * dim];
    let err = embedding(&[3, 37, 2], &table, rows, dim, &mut out).expect_err("id 37 of 37 rows");
    assert!(
        err.to_string().starts_with("embedding: id 37 (position 1)"),
        "{err}"
    );
    assert!(out.iter().all(|&v| v == 7.0), "written before failing");
    let err = embedding(&[0], &table, rows, dim, &mut [0.0; 12]).expect_err("output one short");
    assert!(
        err.to_string()
            .contains("the output holds 12 values, not 13"),
        "{err}"
    );
    let err = embedding(&[0], &table[1..], rows, dim, &mut [0.0; 13]).expect_err("table short");
    assert!(err.to_string().contains("the table holds"), "{err}");
    let err = embedding(&[0], &[], 0, dim, &mut [0.0; 13]).expect_err("empty table");
    assert!(
        err.to_string()
            .starts_with("embedding: table [0, 13] is empty"),
        "{err}"
    );
}

/// Timestep embeddings with both flip settings, even and odd dims and a shift of 0 and 1, against
/// diffusers' formula written out in f64 (with PyTorch's f32 frequencies and f32 `t * f`).
#[test]
fn timestep_embedding_matches_the_reference() {
    use audioldm::engine::cpu::embedding::timestep_embedding;
    for (dim, shift, t) in [
        (320, 0.0f32, 981.0f32),
        (129, 1.0, 17.0),
        (7, 0.0, 0.5),
        (2, 0.0, 999.0),
    ] {
        let half = dim / 2;
        for flip in [false, true] {
            let batch = 3;
            let row: Vec<f64> = (0..dim)
                .map(|c| {
                    if c >= 2 * half {
                        return 0.0;
                    }
                    let j = c % half;
                    let f = (-(10000f64.ln()) * j as f64 / (half as f64 - f64::from(shift))).exp()
                        as f32;
                    let arg = f64::from(t * f);
                    if (c < half) == flip {
                        arg.cos()
                    } else {
                        arg.sin()
                    }
                })
                .collect();
            let want: Vec<f64> = row.iter().cycle().take(batch * dim).copied().collect();
            let mut got = vec![f32::NAN; batch * dim];
            timestep_embedding(t, batch, dim, flip, shift, 10000.0, &mut got).expect("timestep");
            let err = max_rel_err(&got, &want);
            println!("timestep_embedding dim {dim} shift {shift} t {t} flip {flip}: {err:.2e}");
            assert!(err <= 1e-6, "{err:.2e}");
            if dim % 2 == 1 {
                assert!(
                    got.chunks(dim).all(|r| r[dim - 1] == 0.0),
                    "odd dim's last column"
                );
            }
        }
    }
    let err = timestep_embedding(1.0, 2, 8, false, 0.0, 10000.0, &mut [0.0; 15])
        .expect_err("output one short");
    assert!(
        err.to_string()
            .contains("the output holds 15 values, not 16"),
        "{err}"
    );
    let err = timestep_embedding(1.0, 1, 1, false, 0.0, 10000.0, &mut [0.0; 1]).expect_err("dim 1");
    assert!(
        err.to_string().starts_with("timestep_embedding: needs"),
        "{err}"
    );
    let err = timestep_embedding(1.0, 1, 4, false, 2.0, 10000.0, &mut [0.0; 4])
        .expect_err("shift equal to half");
    assert!(err.to_string().contains("no finite frequencies"), "{err}");
    let err =
        timestep_embedding(1.0, 1, 4, false, 0.0, 0.0, &mut [0.0; 4]).expect_err("zero period");
    assert!(err.to_string().contains("no finite frequencies"), "{err}");
}

/// The vectorisable `exp` the CPU kernels use (softmax, attention, SiLU) against f64's, over the
/// range where the result is a normal f32, and its clamped ends.
#[test]
fn exp_is_within_2e7_of_f64() {
    use audioldm::engine::cpu::exp;
    let mut worst = 0.0f64;
    for i in 0..=200_000 {
        let x = -87.0 + 175.0 * i as f32 / 200_000.0;
        let want = f64::from(x).exp();
        let err = ((f64::from(exp(x)) - want) / want).abs();
        worst = worst.max(err);
    }
    println!("exp: max rel err {worst:.2e} on [-87, 88]");
    assert!(worst <= 2e-7, "{worst:.2e}");
    assert!(exp(-1000.0) < 2e-38 && exp(-1000.0) >= 0.0);
    assert!(exp(f32::NEG_INFINITY) < 2e-38);
    assert!(exp(100.0) > 1e38 && exp(100.0).is_finite());
    assert!(exp(f32::NAN).is_nan());
    assert_eq!(exp(0.0), 1.0);
    // The fused build the kernels run where the CPU has FMA: no less accurate.
    let worst = (0..=200_000)
        .map(|i| {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let want = f64::from(x).exp();
            ((f64::from(cpu::exp_with(x, true)) - want) / want).abs()
        })
        .fold(0.0, f64::max);
    println!("exp, fused: max rel err {worst:.2e} on [-87, 88]");
    assert!(worst <= 2e-7, "{worst:.2e}");
}

/// The vectorisable `erf` of GELU against f64's over [-10, 10] (from 4 on it is 1 in f32), fused
/// and not, and GELU made with it against the exact GELU.
#[test]
fn erf_is_within_1e7_of_f64() {
    use audioldm::engine::cpu::{activate_with, erf, erf_with};
    for fused in [false, true] {
        let (mut worst, mut gelu_worst) = (0.0f64, 0.0f64);
        for i in 0..=400_000 {
            let x = -10.0 + 20.0 * i as f32 / 400_000.0;
            let want = libm::erf(f64::from(x));
            worst = worst.max((f64::from(erf_with(x, fused)) - want).abs());
            // Relative where GELU is large, absolute where it is small (there f32's 1 + erf
            // cancels, exactly as with the C library's erff).
            let want = act_ref(f64::from(x), Activation::Gelu);
            let got = f64::from(activate_with(x, Activation::Gelu, fused));
            gelu_worst = gelu_worst.max((got - want).abs() / want.abs().max(1.0));
        }
        println!("erf, fused {fused}: max abs err {worst:.2e}; GELU: {gelu_worst:.2e}");
        assert!(worst <= 1e-7, "{worst:.2e}");
        assert!(gelu_worst <= 2e-7, "{gelu_worst:.2e}");
    }
    assert_eq!(erf(0.0), 0.0);
    assert_eq!(erf(f32::INFINITY), 1.0);
    assert_eq!(erf(f32::NEG_INFINITY), -1.0);
    assert_eq!(erf(-20.0), -1.0);
    assert!(erf(f32::NAN).is_nan());
}
