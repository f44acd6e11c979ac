//! Embedding lookup against a CPU gather: exact, zero rows for ids out of range (an error on the
//! CPU backend), and tables split over several bindings (RoBERTa's real 50265 x 768 f32 table is
//! over lavapipe's 128 MiB). The lookup and its errors run on both backends; the splits are the
//! GPU's.

mod common;

use audioldm::engine::{Context, DType, Graph, Result, Tensor};
use common::*;

/// A table value that differs between neighbouring rows and is exact in f16.
fn value(row: usize, col: usize) -> f32 {
    ((row * 769 + col * 31) % 2048) as f32 / 1024.0 - 1.0
}

fn table_data(vocab: usize, d: usize) -> Vec<f32> {
    (0..vocab * d).map(|i| value(i / d, i % d)).collect()
}

fn gather_ref(ids: &[u32], table: &[f32], vocab: usize, d: usize) -> Vec<f64> {
    ids.iter()
        .flat_map(|&id| {
            (0..d).map(move |j| {
                if (id as usize) < vocab {
                    table[id as usize * d + j] as f64
                } else {
                    0.0
                }
            })
        })
        .collect()
}

/// Runs the lookup on the GPU (in windows of `window` bytes if given); returns the output and the
/// dispatches.
fn lookup(
    ids: &[u32],
    ids_shape: &[usize],
    table: &Tensor,
    window: Option<u64>,
) -> (Vec<f32>, usize) {
    lookup_on(ctx(), ids, ids_shape, table, window).unwrap()
}

/// [`lookup`] on `ctx`, `table` being of `ctx`; an error of the run (the CPU backend's for an id
/// out of range) is returned.
fn lookup_on(
    ctx: &Context,
    ids: &[u32],
    ids_shape: &[usize],
    table: &Tensor,
    window: Option<u64>,
) -> Result<(Vec<f32>, usize)> {
    let mut g = Graph::new(ctx);
    let ids_t = Tensor::from_u32(ctx, ids_shape, ids).unwrap();
    let vi = g.input(&ids_t);
    let vt = g.weight(table);
    let y = match window {
        Some(bytes) => g.embedding_windowed(vi, vt, bytes),
        None => g.embedding(vi, vt),
    }
    .unwrap();
    let mut want_dims = ids_shape.to_vec();
    want_dims.push(table.dims()[1]);
    assert_eq!(g.dims(y), &want_dims[..]);
    g.output(y).unwrap();
    let mut exe = g.build().unwrap();
    exe.run()?;
    Ok((exe.read(y).unwrap(), exe.stats().dispatches))
}

/// Ids out of range give zero rows on a GPU; on the CPU backend they are an error naming the
/// first, and the ids in range gather exactly.
#[test]
fn small_tables_gather_exactly_with_zero_rows_or_an_error_out_of_range() {
    for (backend, ctx) in backends() {
        for (vocab, d, dtype) in [
            (10usize, 4usize, DType::F32),
            (37, 33, DType::F32),
            (37, 33, DType::F16),
            (5, 1, DType::F16),
        ] {
            let data = table_data(vocab, d);
            let table = Tensor::from_f32(ctx, [vocab, d], dtype, &data).unwrap();
            let ids: Vec<u32> = vec![
                0,
                1,
                vocab as u32 - 1,
                vocab as u32,
                u32::MAX,
                3,
                3,
                vocab as u32 / 2,
                2,
                vocab as u32 + 7,
                0,
                1,
                4,
                2,
            ];
            let name = format!("embedding [{vocab}, {d}] {dtype:?} on {backend}");
            let ids = if ctx.is_cpu() {
                let err = lookup_on(ctx, &ids, &[2, 7], &table, None)
                    .unwrap_err()
                    .to_string();
                let first = format!("id {vocab} (position 3)");
                assert!(
                    err.contains("embedding") && err.contains(&first),
                    "{name}: {err}"
                );
                // The same ids with the three out of range (positions 3, 4 and 9) in range.
                let mut ids = ids;
                for (at, id) in [(3, 0), (4, 1), (9, 2)] {
                    ids[at] = id;
                }
                ids
            } else {
                ids
            };
            let (got, dispatches) = lookup_on(ctx, &ids, &[2, 7], &table, None).unwrap();
            assert_eq!(dispatches, 1);
            let want = gather_ref(&ids, &data, vocab, d);
            assert_close(&name, &got, &want, 0.0);
        }
    }
}

/// Small windows force the split: several windows, odd row sizes in f16 (windows must start on
/// the offset alignment), and the first window's zeros overwritten by later ones.
#[test]
fn tables_split_into_windows_gather_exactly() {
    let align = u64::from(ctx().limits().min_storage_buffer_offset_alignment);
    println!("storage offset alignment {align}");
    for (vocab, d, dtype, window) in [
        (1000usize, 5usize, DType::F16, 3000u64),
        (1000, 3, DType::F32, 5000),
        (777, 64, DType::F32, 64 * 256),
        (301, 7, DType::F16, 8 * align),
    ] {
        let data = table_data(vocab, d);
        let table = Tensor::from_f32(ctx(), [vocab, d], dtype, &data).unwrap();
        let mut ids: Vec<u32> = (0..vocab as u32 + 3).rev().collect();
        ids.push(u32::MAX);
        let n = ids.len();
        let (got, dispatches) = lookup(&ids, &[n], &table, Some(window));
        assert!(dispatches > 1, "[{vocab}, {d}] in {window}-byte windows");
        assert_close(
            &format!("embedding [{vocab}, {d}] {dtype:?} in {dispatches} windows of <= {window} B"),
            &got,
            &gather_ref(&ids, &data, vocab, d),
            0.0,
        );
    }
}

/// The real RoBERTa token table, 50265 x 768: in f32 (154 MB) it is over lavapipe's 128 MiB
/// binding and is split; rows on both sides of the split and ids out of range are checked.
#[test]
fn roberta_sized_table_is_split_over_bindings() {
    let (vocab, d) = (50265usize, 768usize);
    let data = table_data(vocab, d);
    let max_binding = ctx().max_binding_bytes();
    for dtype in [DType::F32, DType::F16] {
        let table = Tensor::from_f32(ctx(), [vocab, d], dtype, &data).unwrap();
        let row_bytes = if dtype == DType::F16 { 2 * d } else { 4 * d } as u64;
        // Rows per window as the op picks them (a row of 768 values meets any alignment up to 1536).
        let split = (max_binding / row_bytes) as u32;
        let mut ids: Vec<u32> = vec![0, 1, 2, 50264, 50263, 50265, 60000, u32::MAX, 12345];
        if (split as usize) < vocab {
            ids.extend([split - 2, split - 1, split, split + 1, split + 2]);
        }
        let n = ids.len();
        let start = std::time::Instant::now();
        let (got, dispatches) = lookup(&ids, &[1, n], &table, None);
        println!(
            "{dtype:?} table {} bytes, max binding {max_binding}: {dispatches} window(s), split at \
             row {split}, {:.2?}",
            table.bytes(),
            start.elapsed()
        );
        assert_eq!(dispatches, vocab.div_ceil(split as usize));
        let want = gather_ref(&ids, &data, vocab, d);
        assert_close(
            &format!("embedding [{vocab}, {d}] {dtype:?}"),
            &got,
            &want,
            0.0,
        );
        // The f16 table fits lavapipe's binding; split it at a quarter of the limit as well.
        if dtype == DType::F16 {
            let window = max_binding / 4;
            let (got, dispatches) = lookup(&ids, &[1, n], &table, Some(window));
            assert!(dispatches > 1);
            assert_close(
                &format!("embedding [{vocab}, {d}] {dtype:?} in {dispatches} windows"),
                &got,
                &want,
                0.0,
            );
        }
    }
}

#[test]
fn shape_mismatch_is_an_error_naming_the_op_and_shapes() {
    for (backend, ctx) in backends() {
        let mut g = Graph::new(ctx);
        let ids = Tensor::from_u32(ctx, [2, 3], &[0, 1, 2, 3, 4, 5]).unwrap();
        let vi = g.input(&ids);
        let table = input(&mut g, &[2, 3, 4], &random(1, 24));
        let err = g.embedding(vi, table).unwrap_err().to_string();
        assert!(
            err.contains("embedding") && err.contains("[2, 3, 4]") && err.contains("[2, 3]"),
            "{backend}: {err}"
        );
        // Float ids are refused.
        let float_ids = input(&mut g, &[2, 3], &random(2, 6));
        let table = input(&mut g, &[10, 4], &random(3, 40));
        let err = g.embedding(float_ids, table).unwrap_err().to_string();
        assert!(
            err.contains("embedding") && err.contains("U32") && err.contains("[2, 3]"),
            "{backend}: {err}"
        );
    }
}
