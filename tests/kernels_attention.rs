//! Fused multi-head attention against an f64 CPU reference.

mod common;

use std::time::Instant;

use audioldm::gpu::Graph;
use audioldm::gpu::ops::attention::{Attention, HeadView};
use common::*;

/// Per head `softmax(scale * Q K^T) V` in f64 over `q [B, Tq, H*D]`, `k [B, Tk, H*D]`,
/// `v [B, Tk, H*Dv]` read through `at(b, t, h) -> row start` functions.
struct Problem {
    batch: usize,
    heads: usize,
    tq: usize,
    tk: usize,
    d: usize,
    dv: usize,
    scale: f32,
}

impl Problem {
    fn new(batch: usize, heads: usize, tq: usize, tk: usize, d: usize, dv: usize) -> Self {
        Self {
            batch,
            heads,
            tq,
            tk,
            d,
            dv,
            scale: 1.0 / (d as f32).sqrt(),
        }
    }

    fn flops(&self) -> f64 {
        2.0 * (self.batch * self.heads * self.tq * self.tk * (self.d + self.dv)) as f64
    }

    fn name(&self) -> String {
        format!(
            "attention B={} H={} Tq={} Tk={} D={} Dv={}",
            self.batch, self.heads, self.tq, self.tk, self.d, self.dv
        )
    }

    /// The reference, with Q, K and V rows found by `q_at(b, t, h)` etc.
    fn reference(
        &self,
        q: (&[f32], &dyn Fn(usize, usize, usize) -> usize),
        k: (&[f32], &dyn Fn(usize, usize, usize) -> usize),
        v: (&[f32], &dyn Fn(usize, usize, usize) -> usize),
    ) -> Vec<f64> {
        let &Problem {
            batch,
            heads,
            tq,
            tk,
            d,
            dv,
            scale,
        } = self;
        let width = heads * dv;
        let mut out = vec![0.0; batch * tq * width];
        let mut s = vec![0.0f64; tk];
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..tq {
                    let qr = &q.0[q.1(b, i, h)..][..d];
                    for (j, sj) in s.iter_mut().enumerate() {
                        let kr = &k.0[k.1(b, j, h)..][..d];
                        let dot: f64 = qr.iter().zip(kr).map(|(&a, &c)| a as f64 * c as f64).sum();
                        *sj = dot * scale as f64;
                    }
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let mut sum = 0.0;
                    for sj in s.iter_mut() {
                        *sj = (*sj - m).exp();
                        sum += *sj;
                    }
                    let o = &mut out[(b * tq + i) * width + h * dv..][..dv];
                    for (j, &w) in s.iter().enumerate() {
                        let vr = &v.0[v.1(b, j, h)..][..dv];
                        for (oe, &ve) in o.iter_mut().zip(vr) {
                            *oe += w / sum * ve as f64;
                        }
                    }
                }
            }
        }
        out
    }

    /// Runs `Graph::attention` on seeded inputs (q and k scaled by `spread`) against the reference.
    fn check(&self, seed: u64, spread: f32, tol: f64) {
        let &Problem {
            batch,
            heads,
            tq,
            tk,
            d,
            dv,
            scale,
        } = self;
        let scaled = |s: u64, n: usize, by: f32| -> Vec<f32> {
            random(s, n).into_iter().map(|x| x * by).collect()
        };
        let q = scaled(seed, batch * tq * heads * d, spread);
        let k = scaled(seed + 1, batch * tk * heads * d, spread);
        let v = random(seed + 2, batch * tk * heads * dv);
        let mut g = Graph::new(ctx());
        let vq = input(&mut g, &[batch, tq, heads * d], &q);
        let vk = input(&mut g, &[batch, tk, heads * d], &k);
        let vv = input(&mut g, &[batch, tk, heads * dv], &v);
        let out = g.attention(vq, vk, vv, heads, scale).unwrap();
        assert_eq!(g.dims(out), &[batch, tq, heads * dv]);
        let start = Instant::now();
        let got = run(g, out);
        let gpu = start.elapsed();
        let rows = |t: usize, w: usize| {
            move |b: usize, i: usize, h: usize| (b * t + i) * heads * w + h * w
        };
        let want = self.reference((&q, &rows(tq, d)), (&k, &rows(tk, d)), (&v, &rows(tk, dv)));
        assert_close(
            &format!("{} spread={spread}", self.name()),
            &got,
            &want,
            tol,
        );
        if self.flops() > 1e8 {
            println!(
                "  {:.2?} on the GPU (with build and readback): {:.2} GFLOP/s",
                gpu,
                self.flops() / gpu.as_secs_f64() / 1e9
            );
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
        Problem::new(b, h, tq, tk, d, dv).check(seed as u64 * 10, 1.0, 1e-5);
    }
}

/// Large logits (spread 8 on q and k: scores up to ~64 * sqrt(D)) only stay finite with the
/// running max subtracted; the softmax is then nearly one-hot.
#[test]
fn attention_is_stable_for_large_scores() {
    Problem::new(1, 2, 40, 300, 64, 64).check(500, 8.0, 1e-5);
    let mut p = Problem::new(1, 1, 10, 100, 32, 32);
    p.scale = 10.0;
    p.check(510, 4.0, 1e-5);
}

/// AudioLDM sizes: UNet self-attention heads (D = 32 .. 80 over ~1000 tokens) and the VAE's
/// single-head attention over 512 channels.
#[test]
fn attention_matches_reference_at_audioldm_sizes() {
    let start = Instant::now();
    Problem::new(2, 8, 500, 500, 32, 32).check(600, 1.0, 1e-5);
    Problem::new(1, 8, 1000, 1000, 80, 80).check(610, 1.0, 1e-5);
    Problem::new(1, 1, 1000, 1000, 512, 512).check(620, 1.0, 1e-5);
    println!("AudioLDM-size attention: {:.2?}", start.elapsed());
}

/// The strided form reads Q, K and V straight out of one fused `[B, T, 3*H*D]` projection.
#[test]
fn strided_attention_reads_a_fused_qkv_projection() {
    let (batch, heads, t, d) = (2, 3, 45, 16);
    let width = heads * d;
    let qkv = random(700, batch * t * 3 * width);
    let mut g = Graph::new(ctx());
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
    assert_close("attention_strided fused qkv", &got, &want, 1e-5);

    // [B, H, T, D] head-major tensors.
    let q = random(710, batch * heads * t * d);
    let mut g = Graph::new(ctx());
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
    assert_close("attention_strided [B, H, T, D]", &got, &want, 1e-5);
}

#[test]
fn shape_mismatch_is_an_error_naming_the_op_and_shapes() {
    let mut g = Graph::new(ctx());
    let q = input(&mut g, &[2, 5, 64], &random(1, 640));
    let k = input(&mut g, &[2, 7, 32], &random(2, 448));
    let v = input(&mut g, &[2, 7, 64], &random(3, 896));
    let err = g.attention(q, k, v, 4, 0.125).unwrap_err().to_string();
    assert!(
        err.contains("attention") && err.contains("[2, 5, 64]") && err.contains("[2, 7, 32]"),
        "{err}"
    );
    let v_short = input(&mut g, &[2, 6, 64], &random(4, 768));
    let err = g
        .attention(q, v, v_short, 4, 0.125)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("attention") && err.contains("[2, 7, 64]") && err.contains("[2, 6, 64]"),
        "{err}"
    );
    let err = g.attention(q, v, v, 3, 0.125).unwrap_err().to_string();
    assert!(
        err.contains("attention") && err.contains("3 heads"),
        "{err}"
    );
    let big = input(&mut g, &[1, 2, 1026], &random(5, 2052));
    let err = g
        .attention(big, big, big, 1, 0.125)
        .unwrap_err()
        .to_string();
    assert!(err.contains("attention") && err.contains("1026"), "{err}");
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
        "{err}"
    );
}

#[test]
#[ignore]
fn debug_512() {
    let cases: Vec<(usize, usize, usize, usize)> = std::env::var("CASES")
        .unwrap()
        .split(';')
        .map(|c| {
            let v: Vec<usize> = c.split(',').map(|x| x.parse().unwrap()).collect();
            (v[0], v[1], v[2], v[3])
        })
        .collect();
    for &(h, tq, tk, d) in &cases {
        let p = Problem::new(1, h, tq, tk, d, d);
        let q = random(1, tq * d * h);
        let k = random(2, tk * d * h);
        let v = random(3, tk * d * h);
        let mut g = Graph::new(ctx());
        let vq = input(&mut g, &[1, tq, h * d], &q);
        let vk = input(&mut g, &[1, tk, h * d], &k);
        let vv = input(&mut g, &[1, tk, h * d], &v);
        let out = g.attention(vq, vk, vv, h, p.scale).unwrap();
        g.output(out).unwrap();
        let start = Instant::now();
        let mut exe = g.build().unwrap();
        exe.run().unwrap();
        let got = exe.read(out).unwrap();
        let first = start.elapsed();
        let mut t = std::time::Duration::MAX;
        for _ in 0..3 {
            let start = Instant::now();
            exe.run().unwrap();
            ctx().wait().unwrap();
            t = t.min(start.elapsed());
        }
        let rows = |w: usize| move |_b: usize, i: usize, hh: usize| i * w * h + hh * w;
        let want = p.reference((&q, &rows(d)), (&k, &rows(d)), (&v, &rows(d)));
        println!(
            "H={h} Tq={tq} Tk={tk} D={d}: first {first:.2?} run {t:.2?} err {:.3e} {:.2} GFLOP/s",
            max_rel_err(&got, &want),
            p.flops() / t.as_secs_f64() / 1e9
        );
    }
}

#[test]
#[ignore]
fn debug_matmul() {
    let n = 512;
    let a = random(1, n * n);
    let mut g = Graph::new(ctx());
    let va = input(&mut g, &[n, n], &a);
    let vb = input(&mut g, &[n, n], &a);
    let out = g.matmul(va, vb, 1.0).unwrap();
    g.output(out).unwrap();
    let mut exe = g.build().unwrap();
    exe.run().unwrap();
    ctx().wait().unwrap();
    let start = Instant::now();
    exe.run().unwrap();
    ctx().wait().unwrap();
    let t = start.elapsed();
    println!(
        "matmul {n}: {t:.2?} {:.2} GFLOP/s",
        2.0 * (n * n * n) as f64 / t.as_secs_f64() / 1e9
    );
}
