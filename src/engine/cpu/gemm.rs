//! `C[b] = act(alpha * A[b] B[b] + bias) + residual[b]` over strided views, the GPU `Gemm` op's
//! semantics, with faer's GEMM doing the products.

use super::{activate, parallelism};
use crate::engine::Activation;
use crate::engine::error::{Result, shape_error};

/// A strided view of a batch of matrices in a slice: element (b, r, c) at
/// `offset + b * sb + r * sr + c * sc` (as the GPU's `MatView`).
#[derive(Clone, Copy, Debug)]
pub struct MatSlice<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub sb: usize,
    pub sr: usize,
    pub sc: usize,
}

impl<'a> MatSlice<'a> {
    /// One row-major `rows x cols` matrix, or a batch of them stored one after another.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            offset: 0,
            sb: rows * cols,
            sr: cols,
            sc: 1,
        }
    }

    /// The same view read transposed (rows become columns).
    pub fn t(self) -> Self {
        Self {
            sr: self.sc,
            sc: self.sr,
            ..self
        }
    }

    /// Fails unless every element of `batch` matrices of `rows x cols` lies in the slice.
    fn check(&self, what: &str, batch: usize, rows: usize, cols: usize) -> Result<()> {
        if batch == 0 || rows == 0 || cols == 0 {
            return Ok(());
        }
        let last = (batch - 1)
            .checked_mul(self.sb)
            .and_then(|b| b.checked_add((rows - 1).checked_mul(self.sr)?))
            .and_then(|b| b.checked_add((cols - 1).checked_mul(self.sc)?))
            .and_then(|b| b.checked_add(self.offset));
        match last {
            Some(last) if last < self.data.len() => Ok(()),
            _ => Err(shape_error(
                "gemm",
                format!(
                    "{what} of {batch} x {rows} x {cols} (offset {}, strides {} {} {}) is \
                 outside its {} values",
                    self.offset,
                    self.sb,
                    self.sr,
                    self.sc,
                    self.data.len()
                ),
            )),
        }
    }

    fn matrix(&self, b: usize, rows: usize, cols: usize) -> faer::MatRef<'a, f32> {
        // SAFETY: `check` proved every (r, c) of every batch lies inside `data`; the view only
        // reads, for the lifetime of `data`.
        unsafe {
            faer::MatRef::from_raw_parts(
                self.data.as_ptr().add(self.offset + b * self.sb),
                rows,
                cols,
                self.sr as isize,
                self.sc as isize,
            )
        }
    }
}

/// What a [`gemm`] adds to the product, in order: `bias[n]`, the activation, `residual` (laid out
/// as the output, `[batch, m, n]`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub act: Activation,
    pub residual: Option<&'a [f32]>,
}

/// `out[b] = act(alpha * a[b] (m x k) b[b] (k x n) + bias) + residual[b]`, `out` row-major
/// `[batch, m, n]`; a large product is split over rayon's threads.
pub fn gemm(
    out: &mut [f32],
    a: MatSlice<'_>,
    b: MatSlice<'_>,
    dims: (usize, usize, usize, usize),
    alpha: f32,
    epilogue: Epilogue<'_>,
) -> Result<()> {
    let (batch, m, k, n) = dims;
    let par = parallelism(batch * m * n * k);
    product(out, a, b, dims, alpha, epilogue, par)
}

/// [`gemm`] on the calling thread: for kernels that already split their work over the threads
/// (attention's query blocks, a convolution's tiles), where a split inside would only add
/// synchronisation.
pub(super) fn gemm_serial(
    out: &mut [f32],
    a: MatSlice<'_>,
    b: MatSlice<'_>,
    dims: (usize, usize, usize, usize),
    alpha: f32,
    epilogue: Epilogue<'_>,
) -> Result<()> {
    product(out, a, b, dims, alpha, epilogue, faer::Par::Seq)
}

/// `dst = a b` (`Accum::Replace`) or `dst += a b` (`Accum::Add`) for one `m x k` by `k x n`
/// product into a strided destination (no batch, no epilogue): how a convolution writes each
/// tile straight into its output, and attention adds a key block into its running output.
pub(super) fn product_into(
    dst: faer::MatMut<'_, f32>,
    a: MatSlice<'_>,
    b: MatSlice<'_>,
    (m, k, n): (usize, usize, usize),
    (accum, par): (faer::Accum, faer::Par),
) -> Result<()> {
    a.check("A", 1, m, k)?;
    b.check("B", 1, k, n)?;
    if dst.nrows() != m || dst.ncols() != n {
        return Err(shape_error(
            "gemm",
            format!("a {m} x {n} product into {} x {}", dst.nrows(), dst.ncols()),
        ));
    }
    faer::linalg::matmul::matmul(dst, accum, a.matrix(0, m, k), b.matrix(0, k, n), 1.0, par);
    Ok(())
}

fn product(
    out: &mut [f32],
    a: MatSlice<'_>,
    b: MatSlice<'_>,
    (batch, m, k, n): (usize, usize, usize, usize),
    alpha: f32,
    epilogue: Epilogue<'_>,
    par: faer::Par,
) -> Result<()> {
    let len = batch * m * n;
    if out.len() != len {
        return Err(shape_error(
            "gemm",
            format!(
                "the output holds {} values, not {batch} x {m} x {n}",
                out.len()
            ),
        ));
    }
    a.check("A", batch, m, k)?;
    b.check("B", batch, k, n)?;
    if let Some(bias) = epilogue.bias
        && bias.len() != n
    {
        return Err(shape_error(
            "gemm",
            format!("bias of {} values for {n} columns", bias.len()),
        ));
    }
    if let Some(residual) = epilogue.residual
        && residual.len() != len
    {
        return Err(shape_error(
            "gemm",
            format!(
                "residual of {} values for an output of {len}",
                residual.len()
            ),
        ));
    }
    if len == 0 {
        return Ok(());
    }
    for (bi, c) in out.chunks_mut(m * n).enumerate() {
        let c = faer::MatMut::from_row_major_slice_mut(c, m, n);
        faer::linalg::matmul::matmul(
            c,
            faer::Accum::Replace,
            a.matrix(bi, m, k),
            b.matrix(bi, k, n),
            alpha,
            par,
        );
    }
    apply_epilogue(out, n, epilogue);
    Ok(())
}

/// Bias, activation and residual over a row-major output of rows of `n`.
fn apply_epilogue(out: &mut [f32], n: usize, epilogue: Epilogue<'_>) {
    if epilogue.bias.is_none() && epilogue.residual.is_none() && epilogue.act == Activation::None {
        return;
    }
    for (row, values) in out.chunks_mut(n).enumerate() {
        for (j, v) in values.iter_mut().enumerate() {
            let mut x = *v + epilogue.bias.map_or(0.0, |bias| bias[j]);
            x = activate(x, epilogue.act);
            if let Some(residual) = epilogue.residual {
                x += residual[row * n + j];
            }
            *v = x;
        }
    }
}
