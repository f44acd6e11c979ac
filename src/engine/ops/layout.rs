//! Data movement: permute, slice and concat. Every output is contiguous; copies move 32-bit words
//! unchanged, so they are exact and serve f32 and u32 tensors alike.
//!
//! Permute and slice share one strided-copy kernel: the output's dims (collapsed where the source
//! strides chain, so most copies run with one to three dims) and the source's element stride along
//! each travel in the uniform block. Concat reads from two inputs split along one axis.

use crate::engine::error::{Result, shape_error};
use crate::engine::graph::{Binding, Graph, OpKind, OpSpec, Params, Var, grid};
use crate::engine::kernel::KernelKey;
use crate::engine::tensor::{DType, Shape};

/// Threads per workgroup of the 1-D kernels in `layout.wgsl` and `elementwise.wgsl`.
pub(crate) const GROUP: usize = 256;

/// Most dims a strided kernel takes after collapsing (two `vec4<u32>` in the uniform block).
pub(crate) const MAX_DIMS: usize = 8;

/// Row-major strides of `dims`, in elements.
pub(crate) fn contiguous_strides(dims: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * dims[i + 1];
    }
    strides
}

/// The same strided view with size-1 dims dropped and neighbours merged where the outer stride is
/// the inner one times the inner dim (contiguous runs, and runs that are all broadcast). Never
/// returns an empty list: a single element is `[1]` with stride 0.
pub(crate) fn collapse(dims: &[usize], strides: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut out_dims: Vec<usize> = Vec::with_capacity(dims.len());
    let mut out_strides: Vec<usize> = Vec::with_capacity(dims.len());
    for (&dim, &stride) in dims.iter().zip(strides) {
        if dim == 1 {
            continue;
        }
        if let (Some(last_dim), Some(last_stride)) = (out_dims.last_mut(), out_strides.last_mut())
            && *last_stride == stride * dim
        {
            *last_dim *= dim;
            *last_stride = stride;
            continue;
        }
        out_dims.push(dim);
        out_strides.push(stride);
    }
    if out_dims.is_empty() {
        out_dims.push(1);
        out_strides.push(0);
    }
    (out_dims, out_strides)
}

/// Appends up to [`MAX_DIMS`] values, padded with `fill`, as two `vec4<u32>`.
pub(crate) fn push_dims(mut params: Params, values: &[usize], fill: usize) -> Params {
    debug_assert!(values.len() <= MAX_DIMS);
    for i in 0..MAX_DIMS {
        params = params.u(values.get(i).copied().unwrap_or(fill));
    }
    params
}

impl Graph {
    /// `x.permute(perm)` made contiguous: output dim `i` is input dim `perm[i]`.
    pub fn permute(&mut self, x: Var, perm: &[usize]) -> Result<Var> {
        let op = "permute";
        self.expect_dtype(op, x, &[DType::F32, DType::U32])?;
        let dims = self.dims(x).to_vec();
        let mut seen = vec![false; dims.len()];
        let valid = perm.len() == dims.len()
            && perm
                .iter()
                .all(|&p| p < dims.len() && !std::mem::replace(&mut seen[p], true));
        if !valid {
            return Err(shape_error(
                op,
                format!(
                    "{perm:?} is not a permutation of the dims of {}",
                    self.shape(x)
                ),
            ));
        }
        let strides = contiguous_strides(&dims);
        let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
        if self.records_nodes() {
            let kind = OpKind::Permute {
                x,
                perm: perm.to_vec(),
            };
            let dtype = self.dtype(x);
            return self.push_node_as(op, kind, Shape(out_dims), dtype);
        }
        let src_strides: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
        self.strided_copy(op, x, Shape(out_dims), &src_strides, 0)
    }

    /// Elements `start..end` of `axis`, contiguous.
    pub fn slice(&mut self, x: Var, axis: usize, start: usize, end: usize) -> Result<Var> {
        let op = "slice";
        self.expect_dtype(op, x, &[DType::F32, DType::U32])?;
        let dims = self.dims(x).to_vec();
        if axis >= dims.len() || start >= end || end > dims[axis] {
            return Err(shape_error(
                op,
                format!(
                    "cannot take {start}..{end} of axis {axis} of {}",
                    self.shape(x)
                ),
            ));
        }
        let strides = contiguous_strides(&dims);
        let mut out_dims = dims.clone();
        out_dims[axis] = end - start;
        if self.records_nodes() {
            let kind = OpKind::Slice {
                x,
                axis,
                start,
                end,
            };
            let dtype = self.dtype(x);
            return self.push_node_as(op, kind, Shape(out_dims), dtype);
        }
        self.strided_copy(op, x, Shape(out_dims), &strides, start * strides[axis])
    }

    /// `out[i] = x[offset + sum(coord_d(i) * src_strides[d])]` with `out` contiguous of `out_shape`.
    fn strided_copy(
        &mut self,
        op: &str,
        x: Var,
        out_shape: Shape,
        src_strides: &[usize],
        offset: usize,
    ) -> Result<Var> {
        let (dims, strides) = collapse(out_shape.dims(), src_strides);
        if dims.len() > MAX_DIMS {
            return Err(shape_error(
                op,
                format!(
                    "{} with strides {src_strides:?} has more than {MAX_DIMS} dims that do not merge",
                    self.shape(x)
                ),
            ));
        }
        let n = out_shape.numel();
        let params = Params::default().u(n).u(dims.len()).u(offset).u(0);
        let params = push_dims(params, &dims, 1);
        let params = push_dims(params, &strides, 0);
        let dtype = self.dtype(x);
        self.push(OpSpec {
            label: op.to_string(),
            key: KernelKey::new("layout.wgsl", "strided_copy", 1, 1),
            inputs: vec![Some(Binding::from(x))],
            out_shape,
            out_dtype: dtype,
            params,
            workgroups: grid(n.div_ceil(GROUP)),
        })
    }

    /// `torch.cat([a, b], axis)`: all other dims must match.
    pub fn concat(&mut self, a: Var, b: Var, axis: usize) -> Result<Var> {
        let op = "concat";
        self.expect_dtype(op, a, &[DType::F32, DType::U32])?;
        self.expect_dtype(op, b, &[DType::F32, DType::U32])?;
        let (da, db) = (self.dims(a).to_vec(), self.dims(b).to_vec());
        let matches = da.len() == db.len()
            && axis < da.len()
            && da
                .iter()
                .zip(&db)
                .enumerate()
                .all(|(i, (x, y))| i == axis || x == y)
            && self.dtype(a) == self.dtype(b);
        if !matches {
            return Err(shape_error(
                op,
                format!(
                    "cannot join {} ({:?}) and {} ({:?}) along axis {axis}",
                    self.shape(a),
                    self.dtype(a),
                    self.shape(b),
                    self.dtype(b)
                ),
            ));
        }
        let inner: usize = da[axis + 1..].iter().product();
        let (ca, cb) = (da[axis], db[axis]);
        let mut out_dims = da.clone();
        out_dims[axis] = ca + cb;
        let n: usize = out_dims.iter().product();
        let dtype = self.dtype(a);
        if self.records_nodes() {
            let kind = OpKind::Concat { a, b, axis };
            return self.push_node_as(op, kind, Shape(out_dims), dtype);
        }
        self.push(OpSpec {
            label: op.to_string(),
            key: KernelKey::new("layout.wgsl", "concat", 2, 1).define("CONCAT", 1),
            inputs: vec![Some(Binding::from(a)), Some(Binding::from(b))],
            out_shape: Shape(out_dims),
            out_dtype: dtype,
            params: Params::default().u(n).u(inner).u(ca).u(cb),
            workgroups: grid(n.div_ceil(GROUP)),
        })
    }
}
