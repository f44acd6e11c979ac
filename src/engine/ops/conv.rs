use crate::engine::context::Context;
use crate::engine::error::{Result, shape_error};
use crate::engine::graph::{Binding, Graph, Input, OpKind, OpSpec, Params, Var, grid};
use crate::engine::kernel::KernelKey;
use crate::engine::tensor::{DType, Shape};

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

/// A PyTorch convolution weight `[Cout, Cin, kh, kw]` (or `[Cout, Cin, k]` with `kh = 1`) laid
/// out as `ctx`'s backend reads it: [`conv_weight_layout`] for WGSL, PyTorch's own layout
/// (`[Cout, Cin, kh, kw]`) on the CPU. What models load their convolutions with.
pub fn conv_weight(
    ctx: &Context,
    weight: &[f32],
    cout: usize,
    cin: usize,
    kh: usize,
    kw: usize,
) -> (Vec<usize>, Vec<f32>) {
    if ctx.is_cpu() {
        return (vec![cout, cin, kh, kw], weight.to_vec());
    }
    let (shape, data) = conv_weight_layout(weight, cout, cin, kh, kw);
    (shape.to_vec(), data)
}

/// A PyTorch `ConvTranspose1d` weight `[Cin, Cout, k]` laid out as `ctx`'s backend reads it:
/// [`conv_transpose1d_weight_layout`] for WGSL, PyTorch's own layout on the CPU.
pub fn conv_transpose1d_weight(
    ctx: &Context,
    weight: &[f32],
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
) -> (Vec<usize>, Vec<f32>) {
    if ctx.is_cpu() {
        return (vec![cin, cout, k], weight.to_vec());
    }
    let (shape, data) = conv_transpose1d_weight_layout(weight, cin, cout, k, stride);
    (shape.to_vec(), data)
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
    /// The register-blocked kernel with tiles for the channel count, or the workgroup-memory
    /// tiles where the context's [`crate::engine::KernelVariants`] say so.
    #[default]
    Tiled,
    TiledWith {
        tm: usize,
        tn: usize,
    },
    /// One thread per output; for benchmarks.
    Naive,
    /// Workgroup-memory tiles of 64 pixels x 64 output channels (the GPU variant); `f16`
    /// multiplies in f16 with f32 accumulation (needs `SHADER_F16`).
    Tiles {
        f16: bool,
    },
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
    /// GroupNorm (and SiLU) applied to the inputs as they are read, from statistics made by
    /// [`Graph::group_norm_stats`]: the normalised tensor is never written.
    pub input_norm: Option<InputNorm>,
    pub kernel: ConvKernel,
}

/// A GroupNorm with affine parameters, optionally followed by SiLU, fused into a convolution's
/// input pass: `stats` are [`Graph::group_norm_stats`] of the input with `groups` groups.
#[derive(Clone, Copy, Debug)]
pub struct InputNorm {
    pub stats: Var,
    pub gamma: Var,
    pub beta: Var,
    pub groups: usize,
    pub silu: bool,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Self {
            stride: [1, 1],
            padding: [0; 4],
            dilation: [1, 1],
            act: Activation::None,
            input_leaky_relu: None,
            input_norm: None,
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

/// One convolution dispatch's share of the work (see [`Graph::conv_spec`]).
#[derive(Clone, Copy)]
struct ConvWindow {
    batches: usize,
    /// Rows of the padded input window bound for it.
    prows: usize,
    /// Output rows it computes, from `row0`.
    rows: usize,
    row0: usize,
    b0: usize,
    /// The first (item, channel) plane of the output part it writes.
    unit0: usize,
    co_lo: usize,
    co_hi: usize,
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
        // The weight as `conv_weight` lays it out for this backend.
        let cpu = self.records_nodes();
        let (layout, dims) = match (cpu, xs.dims(), ws.dims()) {
            (false, &[b, cin, h, w], &[cout, kh, kw, wcin]) => (
                "[Cout, kh, kw, Cin4]",
                Some(([b, cin, h, w], [cout, kh, kw], wcin == padded_channels(cin))),
            ),
            (true, &[b, cin, h, w], &[cout, wcin, kh, kw]) => (
                "[Cout, Cin, kh, kw]",
                Some(([b, cin, h, w], [cout, kh, kw], wcin == cin)),
            ),
            (true, ..) => ("[Cout, Cin, kh, kw]", None),
            (false, ..) => ("[Cout, kh, kw, Cin4]", None),
        };
        let Some(([b, cin, h, w], [cout, kh, kw], channels_match)) = dims else {
            return Err(shape_error(
                op,
                format!("expects input [B, Cin, H, W] and weight {layout}, got {xs} and {ws}"),
            ));
        };
        if !channels_match || kh == 0 || kw == 0 || cout == 0 {
            return Err(shape_error(
                op,
                format!("input {xs} does not match weight {ws} (laid out as {layout})"),
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
        if cpu {
            if opts.input_norm.is_some() {
                return Err(shape_error(
                    op,
                    "the CPU backend does not fuse GroupNorm into convolutions; record group_norm",
                ));
            }
            let kind = OpKind::Conv2d {
                x,
                weight,
                bias,
                residual,
                opts,
            };
            return self.push_node(op, kind, geometry.out_shape());
        }
        self.conv_ops(op, x, weight, bias, residual, &geometry, opts)
    }

    /// Records a checked convolution: the input copied into a zero-padded channels-last tensor,
    /// then the implicit GEMM over it.
    ///
    /// When a tensor is larger than one binding (the input or output stored in parts, or the
    /// padded copy too large), the work is split without changing any output's arithmetic: per
    /// batch item, windows of output rows whose padded input rows (with the kernel's halo) fit
    /// one binding are copied and convolved, each output part written by its own dispatches.
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
        let variants = self.context().variants();
        let kernel = match opts.kernel {
            ConvKernel::Tiled if variants.tiles => ConvKernel::Tiles {
                f16: variants.f16_math,
            },
            ConvKernel::Tiles { f16: true } if !self.context().capabilities().shader_f16 => {
                return Err(shape_error(
                    op,
                    "f16 arithmetic needs the adapter's SHADER_F16 feature",
                ));
            }
            chosen => chosen,
        };
        let [top, bottom, left, right] = opts.padding;
        let (hp, wp) = (c.h + top + bottom, c.w + left + right);
        let max_binding = self.context().max_binding_bytes();
        // f16 arithmetic rounds the input to f16 anyway: the padded copy is stored so.
        let padded_dtype = if kernel == (ConvKernel::Tiles { f16: true }) {
            DType::F16
        } else {
            DType::F32
        };
        let padded_row_bytes = padded_dtype.storage_bytes(wp * 4 * vec4s);
        let out_shape = c.out_shape();
        let out_bytes = DType::F32.storage_bytes(out_shape.numel());
        let split = self.is_split(x)
            || residual.is_some_and(|r| self.is_split(r))
            || out_bytes > max_binding
            || c.batch as u64 * hp as u64 * padded_row_bytes > max_binding;
        // Padded rows one output row reads (the kernel's halo).
        let span = opts.dilation[0] * (c.kh - 1) + 1;
        // Windows: (first batch item, items, first output row, output rows).
        let mut windows = Vec::new();
        if !split {
            windows.push((0, c.batch, 0, c.oh));
        } else {
            if c.phases.is_some() {
                return Err(shape_error(
                    op,
                    format!(
                        "output {out_shape} is over this device's largest binding ({max_binding} \
                         bytes), and a transposed convolution cannot split it"
                    ),
                ));
            }
            let rows_fit = (max_binding / padded_row_bytes) as usize;
            if rows_fit < span {
                return Err(shape_error(
                    op,
                    format!(
                        "input {} cannot be split to fit this device's largest binding \
                         ({max_binding} bytes): {span} padded rows of {padded_row_bytes} bytes \
                         are needed at once",
                        self.shape(x)
                    ),
                ));
            }
            let rows_per_window = (rows_fit - span) / opts.stride[0] + 1;
            for b in 0..c.batch {
                let mut oy = 0;
                while oy < c.oh {
                    let rows = rows_per_window.min(c.oh - oy);
                    windows.push((b, 1, oy, rows));
                    oy += rows;
                }
            }
        }
        let out_elements = out_shape.numel();
        let out = self.alloc(op, out_shape, DType::F32)?;
        let plane_in = c.h * c.w;
        let plane_out = c.oh * c.ow;
        let x_parts = self.parts_in_units(op, x, plane_in)?;
        let out_parts = if split {
            self.parts_in_units(op, out, plane_out)?
        } else {
            std::iter::once(0..c.batch * c.cout).collect()
        };
        if let Some(r) = residual
            && self.parts(r) != self.parts(out)
        {
            return Err(shape_error(
                op,
                format!(
                    "residual {} is not stored like the output {}",
                    self.shape(r),
                    self.shape(out)
                ),
            ));
        }
        for (b0, batches, oy0, rows) in windows {
            // Padded rows this window reads: output rows oy0.. with their halo.
            let py0 = oy0 * opts.stride[0];
            let prows = if split {
                (rows - 1) * opts.stride[0] + span
            } else {
                hp
            };
            let padded =
                self.alloc(op, Shape(vec![batches, prows, wp, 4 * vec4s]), padded_dtype)?;
            let padded_len = batches * prows * wp * vec4s;
            // One copy per part of the input that holds channels of these batch items; the first
            // writes every element (zeros outside its channels), the rest merge theirs in.
            let mut first_copy = true;
            for part in &x_parts {
                let u0 = part.start;
                let lo = u0.max(b0 * c.cin);
                let hi = part.end.min((b0 + batches) * c.cin);
                if lo >= hi {
                    continue;
                }
                // Channels of the window's items this part holds (all of them when unsplit).
                let (c_lo, c_hi) = if batches == 1 {
                    (lo - b0 * c.cin, hi - b0 * c.cin)
                } else {
                    (0, c.cin)
                };
                let norm = opts.input_norm;
                let key = KernelKey::new(
                    "conv.wgsl",
                    "conv_input",
                    if norm.is_some() { 4 } else { 1 },
                    1,
                )
                .flag("INPUT", true)
                .flag("XP_F16", padded_dtype == DType::F16)
                .flag("MERGE", !first_copy)
                .flag("IN_LEAKY_RELU", opts.input_leaky_relu.is_some())
                .flag("NORM", norm.is_some())
                .flag("ACT_SILU", norm.is_some_and(|n| n.silu));
                let params = Params::default()
                    .u(padded_len)
                    .u(c.cin)
                    .u(c.h)
                    .u(c.w)
                    .u(vec4s)
                    .u(prows)
                    .u(wp)
                    .u(top)
                    .u(left)
                    .f(opts.input_leaky_relu.unwrap_or(0.0))
                    .u(py0)
                    .u(b0)
                    .u(u0)
                    .u(c_lo)
                    .u(c_hi)
                    .u(norm.map_or(1, |n| n.groups))
                    .u(norm.map_or(1, |n| c.cin / n.groups));
                let mut inputs = vec![Some(Binding::elements(
                    x,
                    part.start * plane_in..part.end * plane_in,
                ))];
                if let Some(n) = norm {
                    inputs.extend([n.stats, n.gamma, n.beta].map(|v| Some(Binding::from(v))));
                }
                self.push_window(
                    Binding::from(padded),
                    OpSpec {
                        label: format!("{op} input"),
                        key,
                        inputs,
                        out_shape: Shape(vec![batches, prows, wp, 4 * vec4s]),
                        out_dtype: padded_dtype,
                        params,
                        workgroups: grid(padded_len.div_ceil(256)),
                    },
                )?;
                first_copy = false;
            }
            // One convolution per part of the output that holds channels of these items (one in
            // all unsplit, where a phased convolution's rows are not the output's channels).
            for part in &out_parts {
                let (u0, co_lo, co_hi) = if split {
                    let lo = part.start.max(b0 * c.cout);
                    let hi = part.end.min(b0 * c.cout + c.cout);
                    if lo >= hi {
                        continue;
                    }
                    (part.start, lo - b0 * c.cout, hi - b0 * c.cout)
                } else {
                    (0, 0, c.cout)
                };
                let elements = if split {
                    part.start * plane_out..part.end * plane_out
                } else {
                    0..out_elements
                };
                let window = ConvWindow {
                    batches,
                    prows,
                    rows,
                    row0: oy0,
                    b0,
                    unit0: u0,
                    co_lo,
                    co_hi,
                };
                let inputs = [
                    Some(Binding::from(padded)),
                    Some(Binding::from(weight)),
                    bias.map(Binding::from),
                    residual.map(|r| Binding::elements(r, elements.clone())),
                ];
                let spec = self.conv_spec(op, c, &opts, kernel, window, inputs, wp, vec4s);
                self.push_window(Binding::elements(out, elements), spec)?;
                if kernel != opts.kernel {
                    // Chosen by the variants: the register-blocked kernel stands by.
                    let portable =
                        self.conv_spec(op, c, &opts, opts.kernel, window, inputs, wp, vec4s);
                    self.offer_fallback(portable.key, portable.workgroups);
                }
                let taps = (c.cin * c.kh * c.kw) as u64;
                self.count_flops(2 * (batches * rows * c.ow * (co_hi - co_lo)) as u64 * taps);
            }
        }
        Ok(out)
    }

    /// The convolution dispatch over one window: output rows `row0..row0 + rows` of batch items
    /// `b0..b0 + batches`, output channels `co_lo..co_hi`, written into the output part whose
    /// first (item, channel) plane is `unit0`.
    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::too_many_arguments)]
    fn conv_spec(
        &self,
        op: &str,
        c: &ConvGeometry,
        opts: &Conv2dOptions,
        kernel: ConvKernel,
        window: ConvWindow,
        inputs: [Input; 4],
        wp: usize,
        vec4s: usize,
    ) -> OpSpec {
        let cout = window.co_hi - window.co_lo;
        let pixels = window.batches * window.rows * c.ow;
        // Pixels and channels per workgroup: 8 x 8 threads of tm x tn, or the 64 x 64 tiles.
        let (entry, tm, tn, per_group) = match kernel {
            ConvKernel::Tiled => {
                let (tm, tn) = tile_for(cout);
                ("conv2d", tm, tn, (8 * tm, 8 * tn))
            }
            ConvKernel::TiledWith { tm, tn } => ("conv2d", tm, tn, (8 * tm, 8 * tn)),
            ConvKernel::Naive => ("conv2d_naive", 1, 1, (8, 8)),
            ConvKernel::Tiles { .. } => ("conv2d_tiles", 1, 1, (64, 64)),
        };
        let groups_y = pixels.div_ceil(per_group.0);
        let workgroups = [
            cout.div_ceil(per_group.1) as u32,
            groups_y.min(65535) as u32,
            groups_y.div_ceil(65535) as u32,
        ];
        let key = KernelKey::new("conv.wgsl", entry, 4, 1)
            .define("TM", tm)
            .define("TN", tn)
            .flag("F16_MATH", kernel == ConvKernel::Tiles { f16: true })
            .flag(
                "XP_F16",
                inputs[0].is_some_and(|x| self.dtype(x.var) == DType::F16),
            )
            .flag(
                "W_F16",
                inputs[1].is_some_and(|w| self.dtype(w.var) == DType::F16),
            )
            .flag("BIAS", inputs[2].is_some())
            .flag("RESIDUAL", inputs[3].is_some())
            .flag("PHASES", c.phases.is_some());
        let key = opts.act.specialise(key);
        let phases = c.phases.unwrap_or(Phases {
            stride: 1,
            cout: c.cout,
            len: c.oh * c.ow,
            padding: 0,
        });
        let params = Params::default()
            .u(window.batches)
            .u(vec4s)
            .u(window.prows)
            .u(wp)
            .u(cout)
            .u(window.rows)
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
            .u(phases.padding)
            .u(window.row0)
            .u(c.oh)
            .u(c.cout)
            .u(window.b0)
            .u(window.unit0)
            .u(window.co_lo);
        OpSpec {
            label: op.to_string(),
            key,
            inputs: inputs.to_vec(),
            out_shape: c.out_shape(),
            out_dtype: DType::F32,
            params,
            workgroups,
        }
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
                input_norm: None,
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
        if self.records_nodes() {
            return self.conv_transpose1d_node(x, weight, bias, opts);
        }
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

    /// [`Graph::conv_transpose1d`] on the CPU backend, whose weight keeps PyTorch's layout
    /// `[Cin, Cout, k]`.
    fn conv_transpose1d_node(
        &mut self,
        x: Var,
        weight: Var,
        bias: Option<Var>,
        opts: ConvTranspose1dOptions,
    ) -> Result<Var> {
        let op = "conv_transpose1d";
        let (xs, ws) = (self.shape(x).clone(), self.shape(weight).clone());
        let (&[b, cin, lin], &[wcin, cout, k]) = (xs.dims(), ws.dims()) else {
            return Err(shape_error(
                op,
                format!("expects input [B, Cin, L] and weight [Cin, Cout, k], got {xs} and {ws}"),
            ));
        };
        if wcin != cin || k != opts.kernel_size || opts.stride == 0 || lin == 0 || cout == 0 {
            return Err(shape_error(
                op,
                format!(
                    "input {xs} does not match weight {ws} (kernel {}, stride {})",
                    opts.kernel_size, opts.stride
                ),
            ));
        }
        let lout = ((lin - 1) * opts.stride + k + opts.output_padding)
            .checked_sub(2 * opts.padding)
            .filter(|&l| l > 0)
            .ok_or_else(|| {
                shape_error(
                    op,
                    format!("padding {} leaves no output for input {xs}", opts.padding),
                )
            })?;
        self.expect_bias(op, bias, cout)?;
        let kind = OpKind::ConvTranspose1d {
            x,
            weight,
            bias,
            opts,
        };
        self.push_node(op, kind, Shape(vec![b, cout, lout]))
    }
}
