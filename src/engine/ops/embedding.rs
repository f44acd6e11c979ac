//! Embedding lookup (token and position embeddings), for tables larger than one storage binding.
//!
//! A table over the device's largest binding (RoBERTa's 50265 x 768 f32 is 154 MB; lavapipe binds
//! at most 128 MiB) is bound as windows of whole rows whose offsets meet the device's storage
//! offset alignment, one op per window, all writing the same output (see `embedding.wgsl`).

use crate::engine::error::{Result, shape_error};
use crate::engine::graph::{Binding, Graph, OpKind, OpSpec, Params, Var, grid};
use crate::engine::kernel::KernelKey;
use crate::engine::tensor::{DType, Shape};

use super::layout::GROUP;

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Graph {
    /// `table[ids]`: `ids` (u32, any shape) index rows of `table [V, D]` (f32 or f16); the output
    /// is `[ids.., D]` f32. Ids `>= V` give a row of zeros on a GPU and an error on the CPU
    /// backend.
    pub fn embedding(&mut self, ids: Var, table: Var) -> Result<Var> {
        let window = self.context().max_binding_bytes();
        self.embedding_windowed(ids, table, window)
    }

    /// [`Graph::embedding`] with the table bound in windows of at most `window_bytes` (rounded
    /// down to the device's offset alignment); `embedding` uses the device's largest binding.
    /// Exposed so that the split can be tested on small tables.
    pub fn embedding_windowed(&mut self, ids: Var, table: Var, window_bytes: u64) -> Result<Var> {
        let op = "embedding";
        self.expect_dtype(op, ids, &[DType::U32])?;
        self.expect_dtype(op, table, &[DType::F32, DType::F16])?;
        let (ids_shape, table_shape) = (self.shape(ids).clone(), self.shape(table).clone());
        let &[vocab, d] = table_shape.dims() else {
            return Err(shape_error(
                op,
                format!("table {table_shape} is not [V, D] (ids {ids_shape})"),
            ));
        };
        if vocab == 0 || d == 0 {
            return Err(shape_error(
                op,
                format!("table {table_shape} is empty (ids {ids_shape})"),
            ));
        }
        if self.records_nodes() {
            let mut out = ids_shape.dims().to_vec();
            out.push(d);
            return self.push_node(op, OpKind::Embedding { ids, table }, Shape(out));
        }
        let dtype = self.dtype(table);
        let element_bytes: u64 = if dtype == DType::F16 { 2 } else { 4 };
        let row_bytes = element_bytes * d as u64;
        let total_bytes = dtype.storage_bytes(vocab * d);
        let window_bytes = window_bytes.min(self.context().max_binding_bytes());
        // Windows start on rows whose byte offset is a multiple of the alignment.
        let align = u64::from(self.context().limits().min_storage_buffer_offset_alignment).max(4);
        let row_step = align / gcd(align, row_bytes);
        let window_rows = if total_bytes <= window_bytes {
            vocab
        } else {
            ((window_bytes / row_bytes / row_step) * row_step) as usize
        };
        if window_rows == 0 {
            return Err(shape_error(
                op,
                format!(
                    "table {table_shape} ({dtype:?}): {row_step} rows of {row_bytes} bytes do not \
                     fit one {window_bytes}-byte binding"
                ),
            ));
        }
        let mut out_dims = ids_shape.dims().to_vec();
        out_dims.push(d);
        let out_shape = Shape(out_dims);
        let n = out_shape.numel();
        let key =
            KernelKey::new("embedding.wgsl", "embedding", 2, 1).flag("W_F16", dtype == DType::F16);
        let windows = vocab.div_ceil(window_rows);
        let mut out = None;
        for w in 0..windows {
            let r0 = w * window_rows;
            let rows = window_rows.min(vocab - r0);
            let offset = r0 as u64 * row_bytes;
            let size = if w + 1 == windows {
                total_bytes - offset
            } else {
                rows as u64 * row_bytes
            };
            let binding = if windows == 1 {
                Binding::from(table)
            } else {
                Binding {
                    var: table,
                    offset,
                    size: Some(size),
                }
            };
            let spec = OpSpec {
                label: if windows == 1 {
                    op.to_string()
                } else {
                    format!("{op} (rows {r0}..{})", r0 + rows)
                },
                key: key.clone(),
                inputs: vec![Some(Binding::from(ids)), Some(binding)],
                out_shape: out_shape.clone(),
                out_dtype: DType::F32,
                params: Params::default()
                    .u(n)
                    .u(d)
                    .u(r0)
                    .u(rows)
                    .u(usize::from(w == 0)),
                workgroups: grid(n.div_ceil(GROUP)),
            };
            match out {
                None => out = Some(self.push(spec)?),
                Some(target) => self.push_into(target, spec)?,
            }
        }
        Ok(out.expect("at least one window"))
    }
}
