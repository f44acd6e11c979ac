//! Multi-head attention, `softmax(scale * Q K^T) V` per head, in blocks: a block of queries meets
//! the keys a block at a time with an online softmax (running max and sum, the partial output
//! rescaled as the max grows), so memory stays at one block of scores however long the clip.
//! Both products of a block are faer GEMMs over strided views of the interleaved heads.

use super::gemm::{Epilogue, MatSlice, gemm};
use super::par_map;
use crate::gpu::error::{Result, shape_error};

/// Queries a task takes and keys a step takes.
const QUERY_BLOCK: usize = 64;
const KEY_BLOCK: usize = 512;

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

/// `out = softmax(scale * q k^T) v`, head by head.
pub fn attention(out: &mut [f32], q: &[f32], k: &[f32], v: &[f32], a: &Attention) -> Result<()> {
    let Attention {
        batch,
        heads,
        tq,
        tk,
        d,
        dv,
        ..
    } = *a;
    let sizes = [
        ("queries", q.len(), batch * tq * heads * d),
        ("keys", k.len(), batch * tk * heads * d),
        ("values", v.len(), batch * tk * heads * dv),
        ("output", out.len(), batch * tq * heads * dv),
    ];
    if let Some((what, got, want)) = sizes.iter().find(|(_, got, want)| got != want) {
        return Err(shape_error(
            "attention",
            format!("the {what} hold {got} values, not {want}"),
        ));
    }
    if tk == 0 && !out.is_empty() {
        return Err(shape_error("attention", "no keys to attend to"));
    }
    let q_blocks = tq.div_ceil(QUERY_BLOCK);
    let blocks = par_map(batch * heads * q_blocks, |task| {
        let (bh, qb) = (task / q_blocks, task % q_blocks);
        let (b, h) = (bh / heads, bh % heads);
        let q0 = qb * QUERY_BLOCK;
        let rows = QUERY_BLOCK.min(tq - q0);
        let queries = head_rows(q, b * tq + q0, (h, d), heads);
        block(queries, rows, (k, v), (b, h), a).map(|o| (b, h, q0, o))
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

/// The rows of head `h` (of `width` values each) from row `first` on, in `data` whose rows hold
/// `heads` heads side by side.
fn head_rows(data: &[f32], first: usize, (h, width): (usize, usize), heads: usize) -> MatSlice<'_> {
    MatSlice {
        data,
        offset: first * heads * width + h * width,
        sb: 0,
        sr: heads * width,
        sc: 1,
    }
}

/// The output `[rows, dv]` of one block of queries of head `h` in batch `b`.
fn block(
    queries: MatSlice<'_>,
    rows: usize,
    (k, v): (&[f32], &[f32]),
    (b, h): (usize, usize),
    a: &Attention,
) -> Result<Vec<f32>> {
    let (heads, tk, d, dv) = (a.heads, a.tk, a.d, a.dv);
    let mut max = vec![f32::NEG_INFINITY; rows];
    let mut sum = vec![0.0f32; rows];
    let mut acc = vec![0.0f32; rows * dv];
    let mut scores = vec![0.0f32; rows * KEY_BLOCK.min(tk)];
    let mut update = vec![0.0f32; rows * dv];
    for k0 in (0..tk).step_by(KEY_BLOCK) {
        let cols = KEY_BLOCK.min(tk - k0);
        let scores = &mut scores[..rows * cols];
        // K^T of the key block: element (dim, key) of the head's columns.
        let keys_t = head_rows(k, b * tk + k0, (h, d), heads).t();
        gemm(
            scores,
            queries,
            keys_t,
            (1, rows, d, cols),
            a.scale,
            Epilogue::default(),
        )?;
        for (i, s) in scores.chunks_mut(cols).enumerate() {
            let block_max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let new_max = max[i].max(block_max);
            let rescale = (max[i] - new_max).exp();
            let mut block_sum = 0.0;
            for x in s.iter_mut() {
                *x = (*x - new_max).exp();
                block_sum += *x;
            }
            sum[i] = sum[i] * rescale + block_sum;
            max[i] = new_max;
            acc[i * dv..(i + 1) * dv]
                .iter_mut()
                .for_each(|o| *o *= rescale);
        }
        let values = head_rows(v, b * tk + k0, (h, dv), heads);
        gemm(
            &mut update,
            MatSlice::row_major(scores, rows, cols),
            values,
            (1, rows, cols, dv),
            1.0,
            Epilogue::default(),
        )?;
        acc.iter_mut().zip(&update).for_each(|(o, u)| *o += u);
    }
    for (i, row) in acc.chunks_mut(dv).enumerate() {
        let inv = 1.0 / sum[i];
        row.iter_mut().for_each(|o| *o *= inv);
    }
    Ok(acc)
}
