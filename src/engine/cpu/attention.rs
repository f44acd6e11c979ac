//! Multi-head attention, `softmax(scale * Q K^T) V` per head, in blocks: a block of queries meets
//! the keys a block at a time with an online softmax (running max and sum, the partial output
//! rescaled as the max grows), so memory stays at one block of scores however long the clip.
//! Both products of a block are faer GEMMs over strided views of the interleaved heads.

use super::gemm::{Epilogue, MatSlice, gemm_serial, product_into};
use super::par_map;
use super::widest;
use super::{exp, exp_with};
use crate::engine::error::{Result, shape_error};

/// Queries a task takes and keys a step takes.
const QUERY_BLOCK: usize = 128;
const KEY_BLOCK: usize = 1024;

/// The sizes of an attention: `q [batch, tq, heads * d]`, `k [batch, tk, heads * d]`,
/// `v [batch, tk, heads * dv]`, output `[batch, tq, heads * dv]` (heads interleaved in the last
/// dimension, as `Graph::attention` takes them).
#[derive(Clone, Copy, Debug)]
pub struct Attention {
    pub batch: usize,
    pub heads: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
    pub dv: usize,
    pub scale: f32,
}

/// Per-head rows in a slice: element `i` of head `h`'s row `t` in batch item `b` at
/// `offset + b * sb + t * st + h * sh + i` (as the GPU's `HeadView`).
#[derive(Clone, Copy, Debug)]
pub struct Heads<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub sb: usize,
    pub st: usize,
    pub sh: usize,
}

impl<'a> Heads<'a> {
    /// `[batch, tokens, heads * width]`, heads side by side in each row.
    pub fn interleaved(data: &'a [f32], tokens: usize, heads: usize, width: usize) -> Self {
        Self {
            data,
            offset: 0,
            sb: tokens * heads * width,
            st: heads * width,
            sh: width,
        }
    }

    /// The rows of head `h` of batch item `b` from token `t0` on, as a matrix (one row a token).
    fn rows(&self, (b, h): (usize, usize), t0: usize) -> MatSlice<'a> {
        MatSlice {
            data: self.data,
            offset: self.offset + b * self.sb + t0 * self.st + h * self.sh,
            sb: 0,
            sr: self.st,
            sc: 1,
        }
    }

    /// Whether every element of `batch x tokens` rows of `heads` heads of `width` lies inside.
    fn fits(&self, batch: usize, tokens: usize, heads: usize, width: usize) -> bool {
        if batch == 0 || tokens == 0 || heads == 0 || width == 0 {
            return true;
        }
        let last = (batch - 1)
            .checked_mul(self.sb)
            .and_then(|x| x.checked_add((tokens - 1).checked_mul(self.st)?))
            .and_then(|x| x.checked_add((heads - 1).checked_mul(self.sh)?))
            .and_then(|x| x.checked_add(self.offset + width - 1));
        last.is_some_and(|last| last < self.data.len())
    }
}

/// `out = softmax(scale * q k^T) v`, head by head, heads interleaved in each row of `q`, `k`,
/// `v` and `out`.
pub fn attention(out: &mut [f32], q: &[f32], k: &[f32], v: &[f32], a: &Attention) -> Result<()> {
    let sizes = [
        ("queries", q.len(), a.batch * a.tq * a.heads * a.d),
        ("keys", k.len(), a.batch * a.tk * a.heads * a.d),
        ("values", v.len(), a.batch * a.tk * a.heads * a.dv),
    ];
    if let Some((what, got, want)) = sizes.iter().find(|(_, got, want)| got != want) {
        return Err(shape_error(
            "attention",
            format!("the {what} hold {got} values, not {want}"),
        ));
    }
    attention_strided(
        out,
        Heads::interleaved(q, a.tq, a.heads, a.d),
        Heads::interleaved(k, a.tk, a.heads, a.d),
        Heads::interleaved(v, a.tk, a.heads, a.dv),
        a,
    )
}

/// [`attention`] reading queries, keys and values through strided views (the columns of one
/// fused projection, say); the output is `[batch, tq, heads * dv]`.
pub fn attention_strided(
    out: &mut [f32],
    q: Heads<'_>,
    k: Heads<'_>,
    v: Heads<'_>,
    a: &Attention,
) -> Result<()> {
    let Attention {
        batch,
        heads,
        tq,
        tk,
        d,
        dv,
        ..
    } = *a;
    if out.len() != batch * tq * heads * dv {
        return Err(shape_error(
            "attention",
            format!(
                "the output holds {} values, not {}",
                out.len(),
                batch * tq * heads * dv
            ),
        ));
    }
    for (what, view, tokens, width) in [
        ("queries", &q, tq, d),
        ("keys", &k, tk, d),
        ("values", &v, tk, dv),
    ] {
        if !view.fits(batch, tokens, heads, width) {
            return Err(shape_error(
                "attention",
                format!(
                    "the view of the {what} reaches past its {} values",
                    view.data.len()
                ),
            ));
        }
    }
    if tk == 0 && !out.is_empty() {
        return Err(shape_error("attention", "no keys to attend to"));
    }
    if out.is_empty() {
        return Ok(());
    }
    let q_blocks = tq.div_ceil(QUERY_BLOCK);
    let blocks = par_map(batch * heads * q_blocks, |task| {
        let (bh, qb) = (task / q_blocks, task % q_blocks);
        let (b, h) = (bh / heads, bh % heads);
        let q0 = qb * QUERY_BLOCK;
        let rows = QUERY_BLOCK.min(tq - q0);
        let queries = q.rows((b, h), q0);
        block(queries, rows, (&k, &v), (b, h), a).map(|o| (b, h, q0, o))
    });
    let width = heads * dv;
    for result in blocks {
        let (b, h, q0, o) = result?;
        for (i, row) in o.chunks(dv).enumerate() {
            let at = (b * tq + q0 + i) * width + h * dv;
            out[at..at + dv].copy_from_slice(row);
        }
    }
    Ok(())
}

thread_local! {
    /// A block's scores, kept for the thread's next block: zeroing a fresh 512 KB for each took
    /// 4% of the attention at the UNet's shapes.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The output `[rows, dv]` of one block of queries of head `h` in batch `b`.
fn block(
    queries: MatSlice<'_>,
    rows: usize,
    (k, v): (&Heads<'_>, &Heads<'_>),
    (b, h): (usize, usize),
    a: &Attention,
) -> Result<Vec<f32>> {
    let (tk, d, dv) = (a.tk, a.d, a.dv);
    let mut max = vec![f32::NEG_INFINITY; rows];
    let mut sum = vec![0.0f32; rows];
    let mut acc = vec![0.0f32; rows * dv];
    SCORES.with_borrow_mut(|scores| {
        scores.resize(rows * KEY_BLOCK.min(tk), 0.0);
        for k0 in (0..tk).step_by(KEY_BLOCK) {
            let cols = KEY_BLOCK.min(tk - k0);
            let scores = &mut scores[..rows * cols];
            // K^T of the key block: element (dim, key) of the head's columns.
            let keys_t = k.rows((b, h), k0).t();
            gemm_serial(
                scores,
                queries,
                keys_t,
                (1, rows, d, cols),
                a.scale,
                Epilogue::default(),
            )?;
            softmax_step(scores, cols, (&mut max, &mut sum), &mut acc);
            // The second product adds straight into the running output: no buffer, no extra pass.
            product_into(
                faer::MatMut::from_row_major_slice_mut(&mut acc, rows, dv),
                MatSlice::row_major(scores, rows, cols),
                v.rows((b, h), k0),
                (rows, cols, dv),
                (faer::Accum::Add, faer::Par::Seq),
            )?;
        }
        Ok(())
    })?;
    for (i, row) in acc.chunks_mut(dv).enumerate() {
        let inv = 1.0 / sum[i];
        row.iter_mut().for_each(|o| *o *= inv);
    }
    Ok(acc)
}

/// One key block's step of the online softmax: each row of `scores` becomes `e^(score - max)`
/// under its new running max, and the row's running sum and partial output are rescaled to it.
/// All of a block's time outside the two products, so compiled for the widest vectors.
fn softmax_step(
    scores: &mut [f32],
    cols: usize,
    (max, sum): (&mut [f32], &mut [f32]),
    acc: &mut [f32],
) {
    let dv = acc.len() / max.len();
    widest(
        #[inline(always)]
        |fused| {
            for (i, s) in scores.chunks_mut(cols).enumerate() {
                let new_max = max[i].max(row_max(s));
                let rescale = exp(max[i] - new_max);
                sum[i] = sum[i] * rescale + exp_shifted(s, new_max, fused);
                max[i] = new_max;
                acc[i * dv..(i + 1) * dv]
                    .iter_mut()
                    .for_each(|o| *o *= rescale);
            }
        },
    );
}

/// Independent accumulators the reductions over a row of scores keep: one float sum or max
/// carried through the row is a dependency chain LLVM may not reorder, which keeps it scalar.
const LANES: usize = 16;

/// The largest score of a row (NaNs ignored, as `f32::max` does).
#[inline(always)]
fn row_max(s: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = s.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        // One compare and select per lane where `f32::max`'s NaN rule costs three.
        lanes
            .iter_mut()
            .zip(c)
            .for_each(|(m, &x)| *m = if x > *m { x } else { *m });
    }
    lanes
        .iter()
        .chain(tail)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// `s[j] = e^(s[j] - m)` over a row of scores, returning their sum (`fused` as for [`exp_with`]).
#[inline(always)]
fn exp_shifted(s: &mut [f32], m: f32, fused: bool) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = s.chunks_exact_mut(LANES);
    for c in &mut chunks {
        lanes.iter_mut().zip(c).for_each(|(acc, x)| {
            *x = exp_with(*x - m, fused);
            *acc += *x;
        });
    }
    // The tail too goes through the lanes, padded with scores of -inf: 1.2e-38 each from the
    // clamped `exp`, lost in the row's running sum, which is at least 1 (its max's own e^0).
    let tail = chunks.into_remainder();
    let mut padded = [f32::NEG_INFINITY; LANES];
    padded[..tail.len()].copy_from_slice(tail);
    lanes.iter_mut().zip(&mut padded).for_each(|(acc, x)| {
        *x = exp_with(*x - m, fused);
        *acc += *x;
    });
    tail.copy_from_slice(&padded[..tail.len()]);
    lanes.iter().sum()
}
