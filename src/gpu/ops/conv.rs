use crate::gpu::error::{Result, shape_error};
use crate::gpu::graph::{Binding, Graph, OpSpec, Params, Var, grid};
use crate::gpu::kernel::KernelKey;
use crate::gpu::tensor::{DType, Shape};

use super::Activation;

/// Pixels x output channels per thread of the implicit-GEMM convolution: 4 x 8 (the 8 lanes of a
/// workgroup row then cover 64 channels), fewer channels when there are not 64 to fill the lanes
/// with. Measured on lavapipe (benches/kernels.rs): for 32 channels 4 x 4 beats 8 x 4 by 15 %.
fn tile_for(cout: usize) -> (usize, usize) {
    match cout {
        64.. => (4, 8),
        32.. => (4, 4),
        16.. => (4, 2),
        _ => (4, 1),
    }
}

/// Input channels of a convolution as the engine stores them: rounded up to whole vec4s.
pub fn padded_channels(cin: usize) -> usize {
    cin.div_ceil(4) * 4
}

/// Reorders a PyTorch convolution weight `[Cout, Cin, kh, kw]` (or `[Cout, Cin, k]`) into the
/// engine's `[Cout, kh, kw, Cin4]` layout once at load, `Cin4` being [`padded_channels`] (the
/// extra channels are zero). Returns the shape and the data.
pub fn conv_weight_layout(
    weight: &[f32],
    cout: usize,
    cin: usize,
    kh: usize,
    kw: usize,
) -> ([usize; 4], Vec<f32>) {
    let cin4 = padded_channels(cin);
    let mut out = vec![0.0; cout * kh * kw * cin4];
    for co in 0..cout {
        for ci in 0..cin {
            for ky in 0..kh {
                for kx in 0..kw {
                    out[((co * kh + ky) * kw + kx) * cin4 + ci] =
                        weight[((co * cin + ci) * kh + ky) * kw + kx];
                }
            }
        }
    }
    ([cout, kh, kw, cin4], out)
}

/// Reorders a PyTorch `ConvTranspose1d(stride=u)` weight `[Cin, Cout, k]` into the weight of the
/// ordinary convolution that computes it phase by phase (see [`Graph::conv_transpose1d`]):
/// `[u * Cout, 1, kp, Cin4]` with `kp = ceil(k / u)`, row `r * Cout + co` holding, for output phase
/// `r`, taps `n = 0..kp` = `w[ci, co, r + u * (kp - 1 - n)]` (zero past `k`). Returns the shape and
/// the data.
pub fn conv_transpose1d_weight_layout(
    weight: &[f32],
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
) -> ([usize; 4], Vec<f32>) {
    let shape = conv_transpose1d_weight_shape(cin, cout, k, stride);
    let [_, _, kp, cin4] = shape;
    let mut out = vec![0.0; shape.iter().product()];
    for r in 0..stride {
        for co in 0..cout {
            for n in 0..kp {
                let j = r + stride * (kp - 1 - n);
                if j >= k {
                    continue;
                }
                for ci in 0..cin {
                    out[((r * cout + co) * kp + n) * cin4 + ci] = weight[(ci * cout + co) * k + j];
                }
            }
        }
    }
    (shape, out)
}

/// The shape [`conv_transpose1d_weight_layout`] gives: `[stride * Cout, 1, ceil(k / stride), Cin4]`.
pub fn conv_transpose1d_weight_shape(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
) -> [usize; 4] {
    [stride * cout, 1, k.div_ceil(stride), padded_channels(cin)]
}

/// Which convolution kernel to dispatch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvKernel {
    #[default]
    Tiled,
    TiledWith {
        tm: usize,
        tn: usize,
    },
    /// One thread per output; for benchmarks.
    Naive,
}

/// Everything of a convolution but its tensors. Padding is given per side, so PyTorch's symmetric
/// `padding=p` is `[p, p, p, p]` and diffusers' VAE down-sampler (`F.pad(x, (0, 1, 0, 1))` then a
/// stride-2 convolution) is `[0, 1, 0, 1]` as `[top, bottom, left, right]`.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dOptions {
    pub stride: [usize; 2],
    pub padding: [usize; 4],
    pub dilation: [usize; 2],
    /// Applied to the output (after the bias, before the residual).
    pub act: Activation,
    /// Leaky ReLU slope applied to the inputs as they are read.
    pub input_leaky_relu: Option<f32>,
    pub kernel: ConvKernel,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Self {
            stride: [1, 1],
            padding: [0; 4],
            dilation: [1, 1],
            act: Activation::None,
            input_leaky_relu: None,
            kernel: ConvKernel::Tiled,
        }
    }
}

impl Conv2dOptions {
    /// PyTorch's `Conv2d(stride=s, padding=p)`.
    pub fn same_padding(stride: usize, padding: usize) -> Self {
        Self {
            stride: [stride, stride],
            padding: [padding; 4],
            ..Self::default()
        }
    }
}

/// Options of a 1-D convolution (PyTorch `Conv1d` with symmetric padding).
#[derive(Clone, Copy, Debug)]
pub struct Conv1dOptions {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub act: Activation,
    pub input_leaky_relu: Option<f32>,
}

impl Default for Conv1dOptions {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            dilation: 1,
            act: Activation::None,
            input_leaky_relu: None,
        }
    }
}

/// Options of a transposed 1-D convolution (PyTorch `ConvTranspose1d`); the kernel size is here
/// because the re-laid-out weight only keeps `ceil(k / stride)` taps per phase.
#[derive(Clone, Copy, Debug)]
pub struct ConvTranspose1dOptions {
    pub kernel_size: usize,
    pub stride: usize,
    pub padding: usize,
    pub output_padding: usize,
    pub act: Activation,
    pub input_leaky_relu: Option<f32>,
}

/// Where a convolution's outputs go when it computes a transposed convolution phase by phase:
/// output row `r * cout + co`, position `q` lands at `[co, stride * q + r - padding]` of an output
/// of length `len`, or nowhere when that is outside.
#[derive(Clone, Copy, Debug)]
struct Phases {
    stride: usize,
    cout: usize,
    len: usize,
    padding: usize,
}

/// A convolution's sizes, checked, for [`Graph::conv_ops`] (stride, padding and dilation are in
/// its [`Conv2dOptions`]).
struct ConvGeometry {
    batch: usize,
    cin: usize,
    h: usize,
    w: usize,
    /// Rows of the weight.
    cout: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    phases: Option<Phases>,
}

impl ConvGeometry {
    /// `[B, Cout, oh, ow]`, or `[B, Cout, len]` for a phased transposed convolution.
    fn out_shape(&self) -> Shape {
        match self.phases {
            None => Shape(vec![self.batch, self.cout, self.oh, self.ow]),
            Some(phases) => Shape(vec![self.batch, phases.cout, phases.len]),
        }
    }
}

fn conv_out(size: usize, pad: usize, dilation: usize, k: usize, stride: usize) -> Option<usize> {
    let span = dilation * (k - 1) + 1;
    (size + pad).checked_sub(span).map(|room| room / stride + 1)
}

impl Graph {
    /// `x [B, Cin, H, W]` convolved with `weight [Cout, kh, kw, Cin4]` (see
    /// [`conv_weight_layout`]), plus `bias [Cout]`, then `opts.act`, then `+ residual`. Records two
    /// ops: the input copied into a zero-padded channels-last tensor, then the convolution.
    pub fn conv2d(
        &mut self,
        x: Var,
        weight: Var,
        bias: Option<Var>,
        residual: Option<Var>,
        opts: Conv2dOptions,
    ) -> Result<Var> {
        let op = "conv2d";
        self.expect_dtype(op, x, &[DType::F32])?;
        self.expect_dtype(op, weight, &[DType::F32, DType::F16])?;
        let (xs, ws) = (self.shape(x).clone(), self.shape(weight).clone());
        let (&[b, cin, h, w], &[cout, kh, kw, wcin]) = (xs.dims(), ws.dims()) else {
            return Err(shape_error(
                op,
                format!(
                    "expects input [B, Cin, H, W] and weight [Cout, kh, kw, Cin4], got {xs} and {ws}"
                ),
            ));
        };
        if wcin != padded_channels(cin) || kh == 0 || kw == 0 || cout == 0 {
            return Err(shape_error(
                op,
                format!(
                    "input {xs} does not match weight {ws} (its last dim must be Cin rounded up to 4)"
                ),
            ));
        }
        if opts.stride.contains(&0) || opts.dilation.contains(&0) {
            return Err(shape_error(op, "stride and dilation must be at least 1"));
        }
        let [top, bottom, left, right] = opts.padding;
        let (oh, ow) = match (
            conv_out(h, top + bottom, opts.dilation[0], kh, opts.stride[0]),
            conv_out(w, left + right, opts.dilation[1], kw, opts.stride[1]),
        ) {
            (Some(oh), Some(ow)) => (oh, ow),
            _ => {
                return Err(shape_error(
                    op,
                    format!("input {xs} is smaller than the kernel of weight {ws}"),
                ));
            }
        };
        let geometry = ConvGeometry {
            batch: b,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            oh,
            ow,
            phases: None,
        };
        self.expect_bias(op, bias, cout)?;
        if let Some(residual) = residual {
            self.expect_dtype(op, residual, &[DType::F32])?;
            let out = geometry.out_shape();
            if self.shape(residual) != &out {
                return Err(shape_error(
                    op,
                    format!(
                        "residual {} does not match output {out}",
                        self.shape(residual)
                    ),
                ));
            }
        }
        self.conv_ops(op, x, weight, bias, residual, &geometry, opts)
    }

    /// Records a checked convolution: the input copied into a zero-padded channels-last tensor,
    /// then the implicit GEMM over it.
    #[allow(clippy::too_many_arguments)]
    fn conv_ops(
        &mut self,
        op: &str,
        x: Var,
        weight: Var,
        bias: Option<Var>,
        residual: Option<Var>,
        c: &ConvGeometry,
        opts: Conv2dOptions,
    ) -> Result<Var> {
        let vec4s = c.cin.div_ceil(4);
        self.expect_loop_budget(op, c.kh * c.kw * vec4s)?;
        let [top, bottom, left, right] = opts.padding;
        let (hp, wp) = (c.h + top + bottom, c.w + left + right);
        let padded_len = c.batch * hp * wp * vec4s;
        let key = KernelKey::new("conv.wgsl", "conv_input", 1, 1)
            .flag("INPUT", true)
            .flag("IN_LEAKY_RELU", opts.input_leaky_relu.is_some());
        let params = Params::default()
            .u(padded_len)
            .u(c.cin)
            .u(c.h)
            .u(c.w)
            .u(vec4s)
            .u(hp)
            .u(wp)
            .u(top)
            .u(left)
            .f(opts.input_leaky_relu.unwrap_or(0.0));
        let padded = self.push(OpSpec {
            label: format!("{op} input"),
            key,
            inputs: vec![Some(Binding::from(x))],
            out_shape: Shape(vec![c.batch, hp, wp, 4 * vec4s]),
            out_dtype: DType::F32,
            params,
            workgroups: grid(padded_len.div_ceil(256)),
        })?;

        let pixels = c.batch * c.oh * c.ow;
        let (entry, tm, tn) = match opts.kernel {
            ConvKernel::Tiled => {
                let (tm, tn) = tile_for(c.cout);
                ("conv2d", tm, tn)
            }
            ConvKernel::TiledWith { tm, tn } => ("conv2d", tm, tn),
            ConvKernel::Naive => ("conv2d_naive", 1, 1),
        };
        let groups_y = pixels.div_ceil(8 * tm);
        let workgroups = [
            c.cout.div_ceil(8 * tn) as u32,
            groups_y.min(65535) as u32,
            groups_y.div_ceil(65535) as u32,
        ];
        let mut key = KernelKey::new("conv.wgsl", entry, 4, 1)
            .define("TM", tm)
            .define("TN", tn);
        key = key
            .flag("W_F16", self.dtype(weight) == DType::F16)
            .flag("BIAS", bias.is_some())
            .flag("RESIDUAL", residual.is_some())
            .flag("PHASES", c.phases.is_some());
        let key = opts.act.specialise(key);
        let phases = c.phases.unwrap_or(Phases {
            stride: 1,
            cout: c.cout,
            len: c.oh * c.ow,
            padding: 0,
        });
        let params = Params::default()
            .u(c.batch)
            .u(vec4s)
            .u(hp)
            .u(wp)
            .u(c.cout)
            .u(c.oh)
            .u(c.ow)
            .u(c.kh)
            .u(c.kw)
            .u(opts.stride[0])
            .u(opts.stride[1])
            .u(opts.dilation[0])
            .u(opts.dilation[1])
            .f(opts.act.slope())
            .u(phases.stride)
            .u(phases.cout)
            .u(phases.len)
            .u(phases.padding);
        self.push(OpSpec {
            label: op.to_string(),
            key,
            inputs: vec![
                Some(Binding::from(padded)),
                Some(Binding::from(weight)),
                bias.map(Binding::from),
                residual.map(Binding::from),
            ],
            out_shape: c.out_shape(),
            out_dtype: DType::F32,
            params,
            workgroups,
        })
    }

    /// `x [B, Cin, L]` convolved with `weight [Cout, 1, k, Cin4]` (see [`conv_weight_layout`]):
    /// PyTorch `Conv1d`, run as a height-1 [`Graph::conv2d`].
    pub fn conv1d(
        &mut self,
        x: Var,
        weight: Var,
        bias: Option<Var>,
        residual: Option<Var>,
        opts: Conv1dOptions,
    ) -> Result<Var> {
        let xs = self.shape(x).clone();
        let &[b, cin, l] = xs.dims() else {
            return Err(shape_error(
                "conv1d",
                format!("expects input [B, Cin, L], got {xs}"),
            ));
        };
        let x4 = self.reshape(x, [b, cin, 1, l])?;
        let residual4 = match residual {
            Some(r) => {
                let dims = self.dims(r).to_vec();
                match dims.as_slice() {
                    &[rb, rc, rl] => Some(self.reshape(r, [rb, rc, 1, rl])?),
                    _ => {
                        return Err(shape_error(
                            "conv1d",
                            format!("residual {dims:?} is not [B, C, L]"),
                        ));
                    }
                }
            }
            None => None,
        };
        let y = self.conv2d(
            x4,
            weight,
            bias,
            residual4,
            Conv2dOptions {
                stride: [1, opts.stride],
                padding: [0, 0, opts.padding, opts.padding],
                dilation: [1, opts.dilation],
                act: opts.act,
                input_leaky_relu: opts.input_leaky_relu,
                kernel: ConvKernel::Tiled,
            },
        )?;
        let &[_, cout, _, lout] = self.dims(y) else {
            unreachable!("conv2d returns rank 4")
        };
        self.reshape(y, [b, cout, lout])
    }

    /// PyTorch `ConvTranspose1d` on `x [B, Cin, L]` with `weight [u * Cout, 1, kp, Cin4]` (see
    /// [`conv_transpose1d_weight_layout`]). Output `t` gathers `x[s] w[j]` over `u s + j = t + p`:
    /// for the outputs of one phase `r = (t + p) mod u` that is an ordinary stride-1 convolution
    /// of `x` (left-padded by `kp - 1`) with that phase's taps, so the `u` phases run as one
    /// convolution with `u * Cout` output rows whose results are stored interleaved.
    pub fn conv_transpose1d(
        &mut self,
        x: Var,
        weight: Var,
        bias: Option<Var>,
        opts: ConvTranspose1dOptions,
    ) -> Result<Var> {
        let op = "conv_transpose1d";
        self.expect_dtype(op, x, &[DType::F32])?;
        self.expect_dtype(op, weight, &[DType::F32, DType::F16])?;
        let (xs, ws) = (self.shape(x).clone(), self.shape(weight).clone());
        let ConvTranspose1dOptions {
            kernel_size: k,
            stride: u,
            padding,
            output_padding,
            ..
        } = opts;
        let (&[b, cin, lin], &[rows, 1, kp, wcin]) = (xs.dims(), ws.dims()) else {
            return Err(shape_error(
                op,
                format!(
                    "expects input [B, Cin, L] and weight [stride * Cout, 1, kp, Cin4], got {xs} \
                     and {ws}"
                ),
            ));
        };
        if u == 0 || k == 0 || kp != k.div_ceil(u) || rows % u != 0 || rows == 0 {
            return Err(shape_error(
                op,
                format!("weight {ws} is not laid out for kernel {k} and stride {u}"),
            ));
        }
        if wcin != padded_channels(cin) || lin == 0 {
            return Err(shape_error(
                op,
                format!("input {xs} does not match weight {ws}"),
            ));
        }
        let cout = rows / u;
        let lout = ((lin - 1) * u + k + output_padding)
            .checked_sub(2 * padding)
            .filter(|&l| l > 0)
            .ok_or_else(|| {
                shape_error(
                    op,
                    format!("padding {padding} leaves no output for input {xs}"),
                )
            })?;
        self.expect_bias(op, bias, cout)?;
        // Phase outputs q = 0..lq cover every t = u q + r - p in 0..lout; the convolution yields
        // lin + right of them.
        let lq = (lout - 1 + padding) / u + 1;
        let right = lq.saturating_sub(lin);
        let x4 = self.reshape(x, [b, cin, 1, lin])?;
        let geometry = ConvGeometry {
            batch: b,
            cin,
            h: 1,
            w: lin,
            cout: rows,
            kh: 1,
            kw: kp,
            oh: 1,
            ow: lin + right,
            phases: Some(Phases {
                stride: u,
                cout,
                len: lout,
                padding,
            }),
        };
        let conv = Conv2dOptions {
            padding: [0, 0, kp - 1, right],
            act: opts.act,
            input_leaky_relu: opts.input_leaky_relu,
            ..Conv2dOptions::default()
        };
        self.conv_ops(op, x4, weight, bias, None, &geometry, conv)
    }
}
