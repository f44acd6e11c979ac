//! Elementwise ops: activations, `alpha * x + beta`, broadcasting binary ops and GEGLU.
//!
//! Binary ops broadcast `b` onto `a`'s shape numpy-style (`b`'s dims align with `a`'s trailing
//! dims; each is equal or 1). The output has `a`'s shape; `b` is read through strides that are 0
//! along broadcast dims, after merging dims so that the common cases (same shape, a per-channel
//! `[C, 1, 1]` or `[B, C, 1, 1]`, a trailing `[C]`) index with one to three dims.

use crate::engine::error::{Result, shape_error};
use crate::engine::graph::{Binding, Coef, Graph, OpKind, OpSpec, Params, Var, grid};
use crate::engine::kernel::KernelKey;
use crate::engine::tensor::DType;

use super::Activation;
use super::layout::{GROUP, MAX_DIMS, collapse, contiguous_strides, push_dims};

impl Graph {
    /// `act(x)` elementwise.
    pub fn activation(&mut self, x: Var, act: Activation) -> Result<Var> {
        self.unary("activation", x, act, Coef::Const(1.0), Coef::Const(0.0))
    }

    /// `alpha * x + beta`; either coefficient may be a replay-time [`Scalar`](crate::engine::Scalar).
    pub fn scale(&mut self, x: Var, alpha: impl Into<Coef>, beta: impl Into<Coef>) -> Result<Var> {
        self.unary("scale", x, Activation::None, alpha.into(), beta.into())
    }

    fn unary(&mut self, op: &str, x: Var, act: Activation, alpha: Coef, beta: Coef) -> Result<Var> {
        self.expect_dtype(op, x, &[DType::F32])?;
        let shape = self.shape(x).clone();
        if self.records_nodes() {
            let kind = OpKind::Unary {
                x,
                act,
                alpha,
                beta,
            };
            return self.push_node(op, kind, shape);
        }
        let n = shape.numel();
        let key = act.specialise(KernelKey::new("elementwise.wgsl", "unary", 1, 1));
        self.push(OpSpec {
            label: op.to_string(),
            key,
            inputs: vec![Some(Binding::from(x))],
            out_shape: shape,
            out_dtype: DType::F32,
            params: Params::default().u(n).coef(alpha).coef(beta).f(act.slope()),
            workgroups: grid(n.div_ceil(GROUP)),
        })
    }

    /// `alpha * a + beta * b`, `b` broadcast to `a`'s shape.
    pub fn axpby(
        &mut self,
        a: Var,
        b: Var,
        alpha: impl Into<Coef>,
        beta: impl Into<Coef>,
    ) -> Result<Var> {
        self.binary("axpby", a, b, false, alpha.into(), beta.into())
    }

    /// `a + b`, `b` broadcast to `a`'s shape.
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary("add", a, b, false, Coef::Const(1.0), Coef::Const(1.0))
    }

    /// `a - b`, `b` broadcast to `a`'s shape.
    pub fn sub(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary("sub", a, b, false, Coef::Const(1.0), Coef::Const(-1.0))
    }

    /// `a * b`, `b` broadcast to `a`'s shape.
    pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary("mul", a, b, true, Coef::Const(1.0), Coef::Const(0.0))
    }

    fn binary(
        &mut self,
        op: &str,
        a: Var,
        b: Var,
        mul: bool,
        alpha: Coef,
        beta: Coef,
    ) -> Result<Var> {
        self.expect_dtype(op, a, &[DType::F32])?;
        self.expect_dtype(op, b, &[DType::F32])?;
        let (sa, sb) = (self.shape(a).clone(), self.shape(b).clone());
        let (da, db) = (sa.dims(), sb.dims());
        let lead = da.len().checked_sub(db.len());
        let broadcastable = lead.is_some_and(|lead| {
            db.iter()
                .zip(&da[lead..])
                .all(|(&nb, &na)| nb == na || nb == 1)
        });
        let Some(lead) = lead.filter(|_| broadcastable) else {
            return Err(shape_error(op, format!("cannot broadcast {sb} onto {sa}")));
        };
        if self.records_nodes() {
            let kind = OpKind::Binary {
                a,
                b,
                mul,
                alpha,
                beta,
            };
            return self.push_node(op, kind, sa);
        }
        // b's strides as seen from a's dims: 0 on a's leading dims and wherever b has a 1.
        let b_contig = contiguous_strides(db);
        let mut b_strides = vec![0; da.len()];
        for (i, (&nb, &stride)) in db.iter().zip(&b_contig).enumerate() {
            if nb != 1 {
                b_strides[lead + i] = stride;
            }
        }
        let (dims, strides) = collapse(da, &b_strides);
        if dims.len() > MAX_DIMS {
            return Err(shape_error(
                op,
                format!("broadcasting {sb} onto {sa} needs more than {MAX_DIMS} dims"),
            ));
        }
        let n = sa.numel();
        let params = Params::default().u(n).u(dims.len()).coef(alpha).coef(beta);
        let params = push_dims(params, &dims, 1);
        let params = push_dims(params, &strides, 0);
        let mut key = KernelKey::new("elementwise.wgsl", "binary", 2, 1).define("BINARY", 1);
        if mul {
            key = key.define("OP_MUL", 1);
        }
        self.push(OpSpec {
            label: op.to_string(),
            key,
            inputs: vec![Some(Binding::from(a)), Some(Binding::from(b))],
            out_shape: sa,
            out_dtype: DType::F32,
            params,
            workgroups: grid(n.div_ceil(GROUP)),
        })
    }

    /// diffusers GEGLU after its projection: `x [..., 2H]` -> `x[..., :H] * gelu(x[..., H:])`
    /// (exact erf GELU).
    pub fn geglu(&mut self, x: Var) -> Result<Var> {
        let op = "geglu";
        self.expect_dtype(op, x, &[DType::F32])?;
        let shape = self.shape(x).clone();
        let mut dims = shape.dims().to_vec();
        let last = dims.last_mut().filter(|d| **d % 2 == 0 && **d > 0);
        let Some(last) = last else {
            return Err(shape_error(
                op,
                format!("input {shape} does not end in an even, non-zero dim [..., 2H]"),
            ));
        };
        *last /= 2;
        let h = *last;
        if self.records_nodes() {
            return self.push_node(op, OpKind::Geglu { x }, dims.into());
        }
        let n = shape.numel() / 2;
        self.push(OpSpec {
            label: op.to_string(),
            key: KernelKey::new("elementwise.wgsl", "geglu", 1, 1).define("GEGLU", 1),
            inputs: vec![Some(Binding::from(x))],
            out_shape: dims.into(),
            out_dtype: DType::F32,
            params: Params::default().u(n).u(h),
            workgroups: grid(n.div_ceil(GROUP)),
        })
    }
}
