use crate::engine::error::{Result, shape_error};
use crate::engine::graph::{Binding, Graph, OpKind, OpSpec, Params, Var, grid};
use crate::engine::kernel::KernelKey;
use crate::engine::tensor::{DType, Shape};

use super::Activation;

/// Outputs per thread of the tiled GEMM (rows x columns); 8 x 8 threads per workgroup.
const TM: usize = 4;
const TN: usize = 8;
/// vec4 columns per thread of the GEMM reading B along N.
const TN_QUADS: usize = 2; // 4 x 2 vec4s: 11.3 GFLOP/s at 1024^3 on lavapipe, 2 cores (4 x 1: 7.9, 8 x 2: 10.8)

/// Which matmul kernel to dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// Pick by shape: GEMV for a handful of rows, else the register-blocked GEMM.
    Auto,
    Tiled {
        tm: usize,
        tn: usize,
    },
    /// `Tiled` reading vec4s along K; needs A and B contiguous along K and K, offsets and
    /// strides multiples of 4 (a Linear layer). `Auto` takes it whenever it applies.
    TiledK4 {
        tm: usize,
        tn: usize,
    },
    /// `Tiled` reading vec4s of A along K and of B along N, `tn` counting vec4 columns; needs A
    /// contiguous along K, B along N (a plain `[K, N]` matrix) and K, N and every offset and stride
    /// multiples of 4. `Auto` takes it when it applies and `TiledK4` does not.
    TiledN4 {
        tm: usize,
        tn: usize,
    },
    Gemv,
    /// One thread per output; for benchmarks.
    Naive,
    /// Workgroup-memory tiles of 64 x 64 outputs (`matmul_tiles.wgsl`), the GPU variant; `f16`
    /// multiplies in f16 with f32 accumulation (needs `SHADER_F16`). `Auto` takes it where the
    /// context's [`crate::engine::KernelVariants`] say so.
    Tiles {
        f16: bool,
    },
}

/// A strided view of a batch of matrices: element (b, r, c) at `offset + b*sb + r*sr + c*sc`.
#[derive(Clone, Copy, Debug)]
pub struct MatView {
    pub var: Var,
    pub offset: usize,
    pub sb: usize,
    pub sr: usize,
    pub sc: usize,
}

impl MatView {
    /// One matrix (no offset, no batch stride) with the given row and column strides.
    pub fn new(var: Var, row_stride: usize, col_stride: usize) -> Self {
        Self {
            var,
            offset: 0,
            sb: 0,
            sr: row_stride,
            sc: col_stride,
        }
    }
}

/// A general batched matmul `C = act(alpha * A B + bias) + residual`.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub a: MatView,
    pub b: MatView,
    pub batch: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub alpha: f32,
    pub bias: Option<Var>,
    pub residual: Option<Var>,
    pub act: Activation,
    pub kernel: MatmulKernel,
}

impl Graph {
    /// `x [..., K] @ weight[N, K]^T + bias`, then the activation, then `+ residual [..., N]`:
    /// a PyTorch `Linear` with its epilogue fused. `weight` may be stored as f16.
    pub fn linear(
        &mut self,
        x: Var,
        weight: Var,
        bias: Option<Var>,
        act: Activation,
        residual: Option<Var>,
    ) -> Result<Var> {
        let op = "linear";
        self.expect_dtype(op, x, &[DType::F32])?;
        let (xs, ws) = (self.shape(x).clone(), self.shape(weight).clone());
        let (&k, lead) = xs
            .dims()
            .split_last()
            .ok_or_else(|| shape_error(op, "input is a scalar"))?;
        if ws.rank() != 2 || ws.dims()[1] != k {
            return Err(shape_error(
                op,
                format!("input {xs} does not match weight {ws} (expected [N, {k}])"),
            ));
        }
        let n = ws.dims()[0];
        let m: usize = lead.iter().product();
        let mut out = lead.to_vec();
        out.push(n);
        self.gemm_checked(
            op,
            Gemm {
                a: MatView {
                    var: x,
                    offset: 0,
                    sb: 0,
                    sr: k,
                    sc: 1,
                },
                b: MatView {
                    var: weight,
                    offset: 0,
                    sb: 0,
                    sr: 1,
                    sc: k,
                },
                batch: 1,
                m,
                k,
                n,
                alpha: 1.0,
                bias,
                residual,
                act,
                kernel: MatmulKernel::Auto,
            },
            Shape(out),
        )
    }

    /// Batched `a [B, M, K] @ b [B, K, N]` (or `b [K, N]` shared by the batch), scaled by `alpha`.
    pub fn matmul(&mut self, a: Var, b: Var, alpha: f32) -> Result<Var> {
        self.matmul_with(a, b, alpha, MatmulKernel::Auto)
    }

    /// [`Graph::matmul`] with an explicit kernel choice (benchmarks, tests).
    pub fn matmul_with(&mut self, a: Var, b: Var, alpha: f32, kernel: MatmulKernel) -> Result<Var> {
        let op = "matmul";
        let (sa, sb) = (self.shape(a).clone(), self.shape(b).clone());
        let bad = || shape_error(op, format!("cannot multiply {sa} by {sb}"));
        let (batch, m, k) = match sa.dims() {
            [m, k] => (1, *m, *k),
            [batch, m, k] => (*batch, *m, *k),
            _ => return Err(bad()),
        };
        let (b_batched, k2, n) = match sb.dims() {
            [k2, n] => (false, *k2, *n),
            [bb, k2, n] if *bb == batch => (true, *k2, *n),
            _ => return Err(bad()),
        };
        if k != k2 {
            return Err(bad());
        }
        let out = if sa.rank() == 2 {
            vec![m, n]
        } else {
            vec![batch, m, n]
        };
        self.gemm_checked(
            op,
            Gemm {
                a: MatView {
                    var: a,
                    offset: 0,
                    sb: m * k,
                    sr: k,
                    sc: 1,
                },
                b: MatView {
                    var: b,
                    offset: 0,
                    sb: if b_batched { k * n } else { 0 },
                    sr: n,
                    sc: 1,
                },
                batch,
                m,
                k,
                n,
                alpha,
                bias: None,
                residual: None,
                act: Activation::None,
                kernel,
            },
            Shape(out),
        )
    }

    /// The general form behind [`Graph::linear`] and [`Graph::matmul`], for strided views such as
    /// the heads of a fused projection. The output is `[batch, m, n]` contiguous.
    pub fn gemm(&mut self, gemm: Gemm) -> Result<Var> {
        let shape = Shape(vec![gemm.batch, gemm.m, gemm.n]);
        self.gemm_checked("gemm", gemm, shape)
    }

    fn gemm_checked(&mut self, op: &str, g: Gemm, out: Shape) -> Result<Var> {
        self.expect_dtype(op, g.a.var, &[DType::F32])?;
        self.expect_dtype(op, g.b.var, &[DType::F32, DType::F16])?;
        let last = |v: &MatView, rows: usize, cols: usize| {
            v.offset + (g.batch - 1) * v.sb + (rows - 1) * v.sr + (cols - 1) * v.sc
        };
        if g.batch == 0 || g.m == 0 || g.n == 0 || g.k == 0 {
            return Err(shape_error(
                op,
                format!("empty product {}x{}x{} (batch {})", g.m, g.k, g.n, g.batch),
            ));
        }
        for (name, view, rows, cols) in [("A", &g.a, g.m, g.k), ("B", &g.b, g.k, g.n)] {
            let numel = self.shape(view.var).numel();
            if last(view, rows, cols) >= numel {
                return Err(shape_error(
                    op,
                    format!(
                        "{name} view reaches past its tensor of shape {}",
                        self.shape(view.var)
                    ),
                ));
            }
        }
        self.expect_bias(op, g.bias, g.n)?;
        if let Some(residual) = g.residual {
            self.expect_dtype(op, residual, &[DType::F32])?;
            if self.shape(residual).numel() != out.numel() {
                return Err(shape_error(
                    op,
                    format!(
                        "residual {} does not match output {out}",
                        self.shape(residual)
                    ),
                ));
            }
        }
        if self.records_nodes() {
            return self.push_node(op, OpKind::Gemm(g), out);
        }
        self.expect_loop_budget(op, g.k)?;
        let a_along_k = g.a.sc == 1 && [g.k, g.a.offset, g.a.sb, g.a.sr].iter().all(|v| v % 4 == 0);
        let along_k =
            a_along_k && g.b.sr == 1 && [g.b.offset, g.b.sb, g.b.sc].iter().all(|v| v % 4 == 0);
        let along_n = a_along_k
            && g.b.sc == 1
            && [g.n, g.b.offset, g.b.sb, g.b.sr].iter().all(|v| v % 4 == 0);
        let variants = self.context().variants();
        // The register-blocked kernel `Auto` picks where the tiles are not in use: also what a
        // tile kernel that fails to compile falls back to.
        let portable = if g.m <= 4 {
            MatmulKernel::Gemv
        } else if along_k {
            MatmulKernel::TiledK4 { tm: TM, tn: TN }
        } else if along_n {
            MatmulKernel::TiledN4 {
                tm: TM,
                tn: TN_QUADS,
            }
        } else {
            MatmulKernel::Tiled { tm: TM, tn: TN }
        };
        let kernel = match g.kernel {
            MatmulKernel::Auto if g.m > 4 && variants.tiles => MatmulKernel::Tiles {
                f16: variants.f16_math,
            },
            MatmulKernel::Auto => portable,
            MatmulKernel::Tiles { f16: true } if !self.context().capabilities().shader_f16 => {
                return Err(shape_error(
                    op,
                    "f16 arithmetic needs the adapter's SHADER_F16 feature",
                ));
            }
            MatmulKernel::TiledK4 { .. } if !along_k => {
                return Err(shape_error(
                    op,
                    "the vec4 kernel along K needs both operands contiguous along K, with K and \
                     every offset and stride a multiple of 4",
                ));
            }
            MatmulKernel::TiledN4 { .. } if !along_n => {
                return Err(shape_error(
                    op,
                    "the vec4 kernel along N needs A contiguous along K and B along N, with K, \
                     N and every offset and stride multiples of 4",
                ));
            }
            chosen => chosen,
        };
        let (key, workgroups) = self.gemm_kernel(&g, kernel);
        let params = Params::default()
            .u(g.m)
            .u(g.n)
            .u(g.k)
            .u(g.batch)
            .u(g.a.offset)
            .u(g.a.sb)
            .u(g.a.sr)
            .u(g.a.sc)
            .u(g.b.offset)
            .u(g.b.sb)
            .u(g.b.sr)
            .u(g.b.sc)
            .u(g.m * g.n)
            .u(g.n)
            .f(g.alpha)
            .f(g.act.slope());
        let out = self.push(OpSpec {
            label: op.to_string(),
            key,
            inputs: vec![
                Some(Binding::from(g.a.var)),
                Some(Binding::from(g.b.var)),
                g.bias.map(Binding::from),
                g.residual.map(Binding::from),
            ],
            out_shape: out,
            out_dtype: DType::F32,
            params,
            workgroups,
        })?;
        self.count_flops(2 * (g.batch * g.m * g.n * g.k) as u64);
        if g.kernel == MatmulKernel::Auto && matches!(kernel, MatmulKernel::Tiles { .. }) {
            let (key, workgroups) = self.gemm_kernel(&g, portable);
            self.offer_fallback(key, workgroups);
        }
        Ok(out)
    }

    /// The kernel key and dispatch size of a concrete kernel choice for `g`.
    fn gemm_kernel(&self, g: &Gemm, kernel: MatmulKernel) -> (KernelKey, [u32; 3]) {
        let (entry, workgroups) = match kernel {
            MatmulKernel::Tiled { tm, tn } | MatmulKernel::TiledK4 { tm, tn } => (
                if matches!(kernel, MatmulKernel::TiledK4 { .. }) {
                    "matmul_k4"
                } else {
                    "matmul"
                },
                [
                    g.n.div_ceil(8 * tn) as u32,
                    g.m.div_ceil(8 * tm) as u32,
                    g.batch as u32,
                ],
            ),
            MatmulKernel::TiledN4 { tm, tn } => (
                "matmul_n4",
                [
                    g.n.div_ceil(8 * 4 * tn) as u32,
                    g.m.div_ceil(8 * tm) as u32,
                    g.batch as u32,
                ],
            ),
            MatmulKernel::Naive => (
                "matmul_naive",
                [
                    g.n.div_ceil(8) as u32,
                    g.m.div_ceil(8) as u32,
                    g.batch as u32,
                ],
            ),
            MatmulKernel::Tiles { .. } => (
                "matmul_tiles",
                [
                    g.n.div_ceil(64) as u32,
                    g.m.div_ceil(64) as u32,
                    g.batch as u32,
                ],
            ),
            MatmulKernel::Gemv | MatmulKernel::Auto => ("gemv", grid(g.batch * g.m * g.n)),
        };
        let (tm, tn) = match kernel {
            MatmulKernel::Tiled { tm, tn }
            | MatmulKernel::TiledK4 { tm, tn }
            | MatmulKernel::TiledN4 { tm, tn } => (tm, tn),
            _ => (1, 1),
        };
        let key = match kernel {
            MatmulKernel::Tiles { f16 } => {
                KernelKey::new("matmul_tiles.wgsl", entry, 4, 1).flag("F16_MATH", f16)
            }
            _ => KernelKey::new("matmul.wgsl", entry, 4, 1)
                .define("TM", tm)
                .define("TN", tn)
                .flag("K4", matches!(kernel, MatmulKernel::TiledK4 { .. }))
                .flag("N4", matches!(kernel, MatmulKernel::TiledN4 { .. })),
        }
        .flag("W_F16", self.dtype(g.b.var) == DType::F16)
        .flag("BIAS", g.bias.is_some())
        .flag("RESIDUAL", g.residual.is_some());
        (g.act.specialise(key), workgroups)
    }
}
