//! Fused multi-head attention against an f64 CPU reference, on the GPU and on the CPU backend.
//! Key splits, the loop budget and the workgroup-memory variant are the GPU's and GPU-only.

mod common;

use std::time::Instant;

use audioldm::engine::ops::attention::{Attention, HeadView};
use audioldm::engine::{Context, DType, Graph, KernelVariants, Tensor};
use common::reference::AttentionProblem as Problem;
use common::*;

impl Problem {
    /// Seeded inputs, uniform in [-1, 1).
    fn inputs(&self, seed: u64) -> [Vec<f32>; 3] {
        let &Problem {
            batch,
            heads,
            tq,
            tk,
            d,
            dv,
            ..
        } = self;
        [
            random(seed, batch * tq * heads * d),
            random(seed + 1, batch * tk * heads * d),
            random(seed + 2, batch * tk * heads * dv),
        ]
    }

    /// Runs `Graph::attention` (or, with `key_chunk`, the split form) against the reference;
    /// returns the number of dispatches it took (2 when the keys were split).
    fn check_with(&self, inputs: &[Vec<f32>; 3], key_chunk: Option<usize>, tol: f64) -> usize {
        self.check_on(ctx(), inputs, key_chunk, tol)
    }

    /// The f64 reference of interleaved `[B, T, H*D]` inputs.
    fn reference_of(&self, [q, k, v]: &[Vec<f32>; 3]) -> Vec<f64> {
        let Problem { heads, d, dv, .. } = *self;
        let rows = |t: usize, w: usize| {
            move |b: usize, i: usize, h: usize| (b * t + i) * heads * w + h * w
        };
        self.reference(
            (q, &rows(self.tq, d)),
            (k, &rows(self.tk, d)),
            (v, &rows(self.tk, dv)),
        )
    }

    /// [`Self::check_with`] on a context of the caller's (its kernel variants).
    fn check_on(
        &self,
        ctx: &Context,
        inputs: &[Vec<f32>; 3],
        key_chunk: Option<usize>,
        tol: f64,
    ) -> usize {
        self.check_against(ctx, inputs, &self.reference_of(inputs), key_chunk, tol)
    }

    /// [`Self::check_on`] against a reference already computed.
    fn check_against(
        &self,
        ctx: &Context,
        [q, k, v]: &[Vec<f32>; 3],
        want: &[f64],
        key_chunk: Option<usize>,
        tol: f64,
    ) -> usize {
        let &Problem {
            batch,
            heads,
            tq,
            tk,
            d,
            dv,
            scale,
        } = self;
        let mut g = Graph::new(ctx);
        let mut input = |shape: &[usize], data: &[f32]| {
            g.input(&Tensor::from_f32(ctx, shape, DType::F32, data).unwrap())
        };
        let vq = input(&[batch, tq, heads * d], q);
        let vk = input(&[batch, tk, heads * d], k);
        let vv = input(&[batch, tk, heads * dv], v);
        let out = match key_chunk {
            None => g.attention(vq, vk, vv, heads, scale).unwrap(),
            Some(chunk) => {
                let view = |var, t, w| HeadView::interleaved(var, t, heads, w);
                let a = Attention {
                    q: view(vq, tq, d),
                    k: view(vk, tk, d),
                    v: view(vv, tk, dv),
                    batch,
                    heads,
                    tq,
                    tk,
                    d,
                    dv,
                    scale,
                };
                g.attention_split(a, chunk).unwrap()
            }
        };
        assert_eq!(g.dims(out), &[batch, tq, heads * dv]);
        let dispatches = g.len();
        g.output(out).unwrap();
        let mut exe = g.build().unwrap();
        exe.run().unwrap();
        let got = exe.read(out).unwrap();
        let chunked = key_chunk.map_or(String::new(), |c| format!(" key_chunk={c}"));
        let backend = if ctx.is_cpu() { "cpu" } else { "gpu" };
        assert_close(
            &format!("{}{chunked} on {backend}", self.name()),
            &got,
            want,
            tol,
        );
        if self.flops() > 1e8 {
            // A second replay, without pipeline compilation and upload.
            let start = Instant::now();
            exe.run().unwrap();
            ctx.wait().unwrap();
            let t = start.elapsed();
            println!(
                "  replay on {backend} {t:.2?}: {:.2} GFLOP/s",
                self.flops() / t.as_secs_f64() / 1e9
            );
        }
        dispatches
    }

    /// Seeded inputs on the GPU; returns the dispatches.
    fn check(&self, seed: u64, tol: f64) -> usize {
        self.check_with(&self.inputs(seed), None, tol)
    }

    /// Seeded inputs on both backends, against one reference.
    fn check_both(&self, seed: u64, tol: f64) {
        self.check_inputs_both(&self.inputs(seed), tol);
    }

    /// `inputs` on both backends, against one reference.
    fn check_inputs_both(&self, inputs: &[Vec<f32>; 3], tol: f64) {
        let want = self.reference_of(inputs);
        for (_, ctx) in backends() {
            self.check_against(ctx, inputs, &want, None, tol);
        }
    }
}

#[test]
fn attention_matches_reference_on_odd_shapes() {
    let cases = [
        // batch, heads, tq, tk, d, dv
        (1, 1, 1, 1, 16, 16),   // one query, one key
        (2, 3, 5, 7, 16, 16),   // tk not a multiple of the key block
        (1, 2, 65, 33, 32, 32), // tq one past a workgroup
        (2, 1, 17, 1, 48, 48),  // one key: the output is v
        (1, 2, 70, 50, 80, 80),
        (1, 2, 20, 30, 16, 48), // dv != d
        (1, 3, 9, 130, 1, 1),   // head dim 1
        (1, 2, 3, 11, 5, 7),    // head dims that are not multiples of 4
        (1, 1, 37, 29, 512, 512),
        (3, 4, 100, 77, 64, 64), // 77 CLAP text tokens
    ];
    for (seed, &(b, h, tq, tk, d, dv)) in cases.iter().enumerate() {
        Problem::new(b, h, tq, tk, d, dv).check_both(seed as u64 * 10, 1e-5);
    }
}

/// Key splits (as the op picks for long key ranges) merged by the second pass, on odd shapes:
/// one key per split, chunks that do not divide Tk or the key block, a last chunk of one key.
#[test]
fn split_keys_match_reference() {
    let cases = [
        // batch, heads, tq, tk, d, dv, key_chunk
        (1, 1, 1, 2, 16, 16, 1),
        (2, 3, 5, 17, 16, 16, 1),
        (2, 3, 5, 17, 16, 16, 8),
        (1, 2, 65, 41, 32, 48, 5), // last chunk: one key
        (2, 1, 17, 100, 5, 7, 24),
        (1, 2, 70, 333, 80, 80, 100),
    ];
    for (seed, &(b, h, tq, tk, d, dv, chunk)) in cases.iter().enumerate() {
        let p = Problem::new(b, h, tq, tk, d, dv);
        let splits = tk.div_ceil(chunk);
        let dispatches = p.check_with(&p.inputs(seed as u64 * 10 + 400), Some(chunk), 1e-5);
        assert_eq!(dispatches, if splits > 1 { 2 } else { 1 });
    }
}

/// Logits in the hundreds overflow exp() unless the running max is subtracted; the softmax is
/// then nearly one-hot. Integer q and k (and a power-of-two scale) make every score exact in f32,
/// so what is measured is the kernel, not the rounding of the scores themselves (which, at this
/// magnitude, alone costs ~1e-5 in any f32 implementation).
#[test]
fn attention_is_stable_for_large_scores() {
    let integers = |seed: u64, n: usize| -> Vec<f32> {
        random(seed, n)
            .into_iter()
            .map(|x| (x * 16.0).round())
            .collect()
    };
    for (chunk, tk) in [(None, 300), (Some(64), 300), (None, 1)] {
        let p = Problem::new(1, 2, 40, tk, 64, 64);
        let q = integers(500, 40 * 2 * 64);
        let k = integers(501, tk * 2 * 64);
        let v = random(502, tk * 2 * 64);
        let max_score = q
            .chunks(64)
            .flat_map(|qr| {
                k.chunks(64)
                    .map(move |kr| qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>())
            })
            .fold(0.0f32, |m, s| m.max(s.abs()))
            * p.scale;
        assert!(
            tk == 1 || max_score > 100.0,
            "scores too small to test: {max_score}"
        );
        match chunk {
            // The CPU backend does not split keys: a split is the GPU's.
            Some(_) => {
                p.check_with(&[q, k, v], chunk, 1e-5);
            }
            None => p.check_inputs_both(&[q, k, v], 1e-5),
        }
    }
}

/// AudioLDM sizes: UNet self-attention heads (D = 32 .. 80 over ~1000 tokens) and the VAE's
/// single-head attention over 512 channels.
#[test]
fn attention_matches_reference_at_audioldm_sizes() {
    let start = Instant::now();
    Problem::new(2, 8, 500, 500, 32, 32).check_both(600, 1e-5);
    Problem::new(1, 4, 1000, 1000, 80, 80).check_both(610, 1e-5);
    Problem::new(1, 1, 1000, 1000, 512, 512).check_both(620, 1e-5);
    println!("AudioLDM-size attention: {:.2?}", start.elapsed());
}

/// Long key ranges: one pass right up to the op's loop budget (1752 keys of 512, 11896 of 64:
/// past llvmpipe's 65535 loop iterations per invocation this would come back wrong), and past it,
/// where the keys are split automatically and merged.
#[test]
fn long_key_ranges_split_under_the_loop_limit() {
    let start = Instant::now();
    assert_eq!(Problem::new(1, 1, 64, 1752, 512, 512).check(640, 1e-5), 1);
    assert_eq!(Problem::new(1, 1, 64, 4000, 512, 512).check(650, 1e-5), 2);
    assert_eq!(Problem::new(1, 1, 64, 11896, 64, 64).check(660, 1e-5), 1);
    assert_eq!(Problem::new(1, 2, 70, 12000, 64, 64).check(670, 1e-5), 2);
    println!("long key ranges: {:.2?}", start.elapsed());
}

/// The strided form reads Q, K and V straight out of one fused `[B, T, 3*H*D]` projection.
#[test]
fn strided_attention_reads_a_fused_qkv_projection() {
    for (backend, ctx) in backends() {
        let (batch, heads, t, d) = (2, 3, 45, 16);
        let width = heads * d;
        let qkv = random(700, batch * t * 3 * width);
        let mut g = Graph::new(ctx);
        let vqkv = input(&mut g, &[batch, t, 3 * width], &qkv);
        let view = |offset| HeadView {
            var: vqkv,
            offset,
            sb: t * 3 * width,
            st: 3 * width,
            sh: d,
        };
        let p = Problem::new(batch, heads, t, t, d, d);
        let out = g
            .attention_strided(Attention {
                q: view(0),
                k: view(width),
                v: view(2 * width),
                batch,
                heads,
                tq: t,
                tk: t,
                d,
                dv: d,
                scale: p.scale,
            })
            .unwrap();
        assert_eq!(g.dims(out), &[batch, t, width]);
        let got = run(g, out);
        let at = |part: usize| {
            move |b: usize, i: usize, h: usize| (b * t + i) * 3 * width + part * width + h * d
        };
        let want = p.reference((&qkv, &at(0)), (&qkv, &at(1)), (&qkv, &at(2)));
        assert_close(
            &format!("attention_strided fused qkv on {backend}"),
            &got,
            &want,
            1e-5,
        );

        // [B, H, T, D] head-major tensors.
        let q = random(710, batch * heads * t * d);
        let mut g = Graph::new(ctx);
        let vq = input(&mut g, &[batch, heads, t, d], &q);
        let view = HeadView {
            var: vq,
            offset: 0,
            sb: heads * t * d,
            st: d,
            sh: t * d,
        };
        let out = g
            .attention_strided(Attention {
                q: view,
                k: view,
                v: view,
                batch,
                heads,
                tq: t,
                tk: t,
                d,
                dv: d,
                scale: 0.3,
            })
            .unwrap();
        let got = run(g, out);
        let at = |b: usize, i: usize, h: usize| ((b * heads + h) * t + i) * d;
        let mut p = Problem::new(batch, heads, t, t, d, d);
        p.scale = 0.3;
        let want = p.reference((&q, &at), (&q, &at), (&q, &at));
        assert_close(
            &format!("attention_strided [B, H, T, D] on {backend}"),
            &got,
            &want,
            1e-5,
        );
    }
}

#[test]
fn shape_mismatch_is_an_error_naming_the_op_and_shapes() {
    for (backend, ctx) in backends() {
        let mut g = Graph::new(ctx);
        let q = input(&mut g, &[2, 5, 64], &random(1, 640));
        let k = input(&mut g, &[2, 7, 32], &random(2, 448));
        let v = input(&mut g, &[2, 7, 64], &random(3, 896));
        let err = g.attention(q, k, v, 4, 0.125).unwrap_err().to_string();
        assert!(
            err.contains("attention") && err.contains("[2, 5, 64]") && err.contains("[2, 7, 32]"),
            "{backend}: {err}"
        );
        let v_short = input(&mut g, &[2, 6, 64], &random(4, 768));
        let err = g
            .attention(q, v, v_short, 4, 0.125)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("attention") && err.contains("[2, 7, 64]") && err.contains("[2, 6, 64]"),
            "{backend}: {err}"
        );
        let err = g.attention(q, v, v, 3, 0.125).unwrap_err().to_string();
        assert!(
            err.contains("attention") && err.contains("3 heads"),
            "{backend}: {err}"
        );
        // The GPU kernel's largest head dim (the CPU backend has none).
        if !ctx.is_cpu() {
            let big = input(&mut g, &[1, 2, 1026], &random(5, 2052));
            let err = g
                .attention(big, big, big, 1, 0.125)
                .unwrap_err()
                .to_string();
            assert!(err.contains("attention") && err.contains("1026"), "{err}");
        }
        let err = g
            .attention_strided(Attention {
                q: HeadView::interleaved(q, 5, 4, 16),
                k: HeadView::interleaved(v, 8, 4, 16),
                v: HeadView::interleaved(v, 8, 4, 16),
                batch: 2,
                heads: 4,
                tq: 5,
                tk: 8,
                d: 16,
                dv: 16,
                scale: 0.25,
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("attention_strided") && err.contains("[2, 7, 64]"),
            "{backend}: {err}"
        );
    }
}

/// The GPU variant, blocks of keys and values staged in workgroup memory, on the odd shapes, with
/// key splits, and at AudioLDM's sizes (head dim 512: 16 KiB of tiles).
#[test]
fn workgroup_memory_tiles_match_reference() {
    let gpu = new_ctx();
    gpu.set_variants(KernelVariants {
        tiles: true,
        ..KernelVariants::default()
    })
    .unwrap();
    for (seed, &(b, h, tq, tk, d, dv, chunk)) in [
        (1, 1, 1, 1, 16, 16, None),
        (2, 3, 5, 7, 16, 16, None),
        (1, 2, 65, 33, 32, 32, None),
        (1, 2, 20, 30, 16, 48, None),
        (1, 2, 3, 11, 5, 7, None),
        (1, 1, 37, 29, 512, 512, None),
        (2, 3, 5, 17, 16, 16, Some(8)),
        (1, 2, 65, 41, 32, 48, Some(5)),
        (1, 1, 64, 4000, 512, 512, None),
    ]
    .iter()
    .enumerate()
    {
        let p = Problem::new(b, h, tq, tk, d, dv);
        p.check_on(&gpu, &p.inputs(seed as u64 * 10 + 900), chunk, 1e-5);
    }
    let tiled = {
        let p = Problem::new(1, 2, 9, 13, 16, 16);
        let [q, k, v] = p.inputs(990);
        let mut g = Graph::new(&gpu);
        let mut input = |shape: &[usize], data: &[f32]| {
            g.input(&Tensor::from_f32(&gpu, shape, DType::F32, data).unwrap())
        };
        let (vq, vk, vv) = (
            input(&[1, 9, 32], &q),
            input(&[1, 13, 32], &k),
            input(&[1, 13, 32], &v),
        );
        let out = g.attention(vq, vk, vv, 2, 0.25).unwrap();
        g.output(out).unwrap();
        let mut exe = g.build().unwrap();
        exe.profile().expect("lavapipe has timestamps")
    };
    assert_eq!(tiled.ops.len(), 1);
    assert_eq!(tiled.ops[0].kernel, "attention.wgsl:attention");
}
