//! Convolutions as GEMMs: PyTorch's `conv2d` (and `conv1d`, its height-1 case) through im2col in
//! cache-sized tiles of output positions, and `conv_transpose1d` as one product followed by a
//! scatter of its columns (col2im). Weights keep PyTorch's layouts.

use super::gemm::{Epilogue, MatSlice, gemm, product_into};
use super::{activate, par_map, parallelism, threads};
use crate::engine::error::{Result, shape_error};

/// Floats of one im2col tile (1 MiB), unless that leaves fewer than [`TILE_POSITIONS`] positions.
const TILE_FLOATS: usize = 1 << 18;
/// The fewest output positions a tile holds: narrower GEMMs run far from the machine's peak (a
/// 320-channel 3x3 convolution ran at 185 GFLOP/s with 22-position tiles, 272 with 256 here).
const TILE_POSITIONS: usize = 256;

/// A 2-D convolution: input `[batch, cin, h, w]`, weight `[cout, cin, kh, kw]`, padding per side
/// as `[top, bottom, left, right]`, and a leaky ReLU applied to the inputs as they are read.
#[derive(Clone, Copy, Debug)]
pub struct Conv2d {
    pub batch: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub padding: [usize; 4],
    pub dilation: [usize; 2],
    pub input_leaky_relu: Option<f32>,
}

impl Conv2d {
    /// The output's height and width, or an error when the kernel does not fit the padded input.
    pub fn out_hw(&self) -> Result<(usize, usize)> {
        let extent = |size: usize, before: usize, after: usize, k: usize, dil: usize, s: usize| {
            let padded = size + before + after;
            let reach = dil * (k.max(1) - 1) + 1;
            (s > 0 && padded >= reach).then(|| (padded - reach) / s + 1)
        };
        let oh = extent(
            self.h,
            self.padding[0],
            self.padding[1],
            self.kh,
            self.dilation[0],
            self.stride[0],
        );
        let ow = extent(
            self.w,
            self.padding[2],
            self.padding[3],
            self.kw,
            self.dilation[1],
            self.stride[1],
        );
        match (oh, ow) {
            (Some(oh), Some(ow)) if self.kh > 0 && self.kw > 0 => Ok((oh, ow)),
            _ => Err(shape_error(
                "conv2d",
                format!(
                    "a {}x{} kernel (stride {:?}, dilation {:?}) does not fit a {}x{} input \
                     padded by {:?}",
                    self.kh, self.kw, self.stride, self.dilation, self.h, self.w, self.padding
                ),
            )),
        }
    }
}

/// `out = act(conv2d(x, weight) + bias) + residual`, all `[batch, channels, rows, columns]`
/// row-major; `epilogue.bias` has one value per output channel.
pub fn conv2d(
    out: &mut [f32],
    x: &[f32],
    weight: &[f32],
    c: &Conv2d,
    epilogue: Epilogue<'_>,
) -> Result<()> {
    let (oh, ow) = c.out_hw()?;
    let positions = oh * ow;
    let depth = c.cin * c.kh * c.kw;
    check_sizes(
        "conv2d",
        [
            ("input", x.len(), c.batch * c.cin * c.h * c.w),
            ("weight", weight.len(), c.cout * depth),
            ("output", out.len(), c.batch * c.cout * positions),
        ],
    )?;
    check_epilogue("conv2d", &epilogue, c.cout, out.len())?;
    if out.is_empty() {
        return Ok(());
    }
    let tile = (TILE_FLOATS / depth.max(1))
        .max(TILE_POSITIONS)
        .min(positions);
    let tiles = positions.div_ceil(tile);
    // Each (batch item, tile)'s `[cout, positions in the tile]` block, computed in parallel,
    // then placed. With a task per thread or more the tasks are the parallel work; with fewer,
    // the product of each is split instead.
    let tasks = c.batch * tiles;
    let par = if tasks >= threads() {
        faer::Par::Seq
    } else {
        parallelism(c.cout * depth * tile)
    };
    let plane = c.cin * c.h * c.w;
    let base = OutPtr(out.as_mut_ptr());
    let base = &base;
    let results = par_map(tasks, |task| {
        let (b, t) = (task / tiles, task % tiles);
        let (p0, p1) = (t * tile, ((t + 1) * tile).min(positions));
        IM2COL.with_borrow_mut(|cols| {
            im2col(cols, &x[b * plane..(b + 1) * plane], c, ow, p0..p1);
            // SAFETY: task (b, t) writes columns p0..p1 of the `[cout, positions]` output of
            // batch item b, and no other task does: the views are disjoint, inside `out`, and
            // `out` outlives `par_map`.
            let dst = unsafe {
                faer::MatMut::from_raw_parts_mut(
                    base.0.add(b * c.cout * positions + p0),
                    c.cout,
                    p1 - p0,
                    positions as isize,
                    1,
                )
            };
            product_into(
                dst,
                MatSlice::row_major(weight, c.cout, depth),
                MatSlice::row_major(cols, depth, p1 - p0),
                (c.cout, depth, p1 - p0),
                (faer::Accum::Replace, par),
            )
        })
    });
    results.into_iter().collect::<Result<()>>()?;
    apply_channel_epilogue(out, positions, c.cout, &epilogue);
    Ok(())
}

/// The `[cin * kh * kw, positions]` matrix of input values each output position in `range` reads
/// (zero where it reads padding), leaky ReLU applied. Output positions come in runs along a row;
/// with stride 1 a run reads a contiguous run of its input row, copied whole.
fn im2col(cols: &mut Vec<f32>, x: &[f32], c: &Conv2d, ow: usize, range: std::ops::Range<usize>) {
    let width = range.len();
    cols.clear();
    cols.resize(c.cin * c.kh * c.kw * width, 0.0);
    if ow < NARROW {
        return im2col_narrow(cols, x, c, ow, range);
    }
    let [sy, sx] = c.stride;
    let [dy, dx] = c.dilation;
    let (top, left) = (c.padding[0], c.padding[2]);
    for ci in 0..c.cin {
        let plane = &x[ci * c.h * c.w..(ci + 1) * c.h * c.w];
        for ky in 0..c.kh {
            for kx in 0..c.kw {
                let row = ((ci * c.kh + ky) * c.kw + kx) * width;
                let mut p = range.start;
                while p < range.end {
                    let (oy, ox0) = (p / ow, p % ow);
                    let ox1 = ow.min(ox0 + range.end - p);
                    let dst = &mut cols[row + p - range.start..row + p - range.start + ox1 - ox0];
                    p += ox1 - ox0;
                    let Some(iy) = (oy * sy + ky * dy).checked_sub(top).filter(|&iy| iy < c.h)
                    else {
                        continue;
                    };
                    let src = &plane[iy * c.w..(iy + 1) * c.w];
                    // Output columns whose input column `ox * sx + kx * dx - left` is inside.
                    let first = (left.saturating_sub(kx * dx)).div_ceil(sx).max(ox0);
                    let last = ((c.w + left).saturating_sub(kx * dx)).div_ceil(sx).min(ox1);
                    if first >= last {
                        continue;
                    }
                    let ix0 = first * sx + kx * dx - left;
                    let dst = &mut dst[first - ox0..last - ox0];
                    if sx == 1 {
                        dst.copy_from_slice(&src[ix0..ix0 + dst.len()]);
                    } else {
                        for (j, d) in dst.iter_mut().enumerate() {
                            *d = src[ix0 + j * sx];
                        }
                    }
                    if let Some(slope) = c.input_leaky_relu {
                        for d in dst.iter_mut() {
                            *d = if *d < 0.0 { *d * slope } else { *d };
                        }
                    }
                }
            }
        }
    }
}

thread_local! {
    /// Each thread's im2col columns, kept between tiles and ops: a fresh megabyte per tile
    /// went to the kernel for new zeroed pages every time.
    static IM2COL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The output's base pointer, shared by the tasks that write disjoint parts of it.
struct OutPtr(*mut f32);
// SAFETY: the tasks holding it write disjoint ranges (see `conv2d`).
unsafe impl Sync for OutPtr {}

/// Output rows narrower than this are gathered through a table rather than copied in runs: the
/// UNet's deepest levels are 2 to 8 wide, where a run is a handful of values.
const NARROW: usize = 16;

/// [`im2col`] for narrow outputs: the input offset each (tap, position) reads is the same for
/// every input channel, so it is worked out once per tap (`None` in the padding) and every
/// channel's row is a gather through it.
fn im2col_narrow(
    cols: &mut [f32],
    x: &[f32],
    c: &Conv2d,
    ow: usize,
    range: std::ops::Range<usize>,
) {
    let width = range.len();
    let taps = c.kh * c.kw;
    let mut table = Vec::with_capacity(taps * width);
    for ky in 0..c.kh {
        for kx in 0..c.kw {
            table.extend(range.clone().map(|p| {
                let (oy, ox) = (p / ow, p % ow);
                let iy = (oy * c.stride[0] + ky * c.dilation[0]).checked_sub(c.padding[0])?;
                let ix = (ox * c.stride[1] + kx * c.dilation[1]).checked_sub(c.padding[2])?;
                (iy < c.h && ix < c.w).then_some(iy * c.w + ix)
            }));
        }
    }
    for (ci, rows) in cols.chunks_mut(taps * width).enumerate() {
        let plane = &x[ci * c.h * c.w..(ci + 1) * c.h * c.w];
        for (d, at) in rows.iter_mut().zip(&table) {
            if let Some(at) = *at {
                let v = plane[at];
                *d = match c.input_leaky_relu {
                    Some(slope) if v < 0.0 => v * slope,
                    _ => v,
                };
            }
        }
    }
}

/// A transposed 1-D convolution: input `[batch, cin, len]`, weight `[cin, cout, k]` (PyTorch's
/// `ConvTranspose1d` layout), a leaky ReLU applied to the inputs as they are read.
#[derive(Clone, Copy, Debug)]
pub struct ConvTranspose1d {
    pub batch: usize,
    pub cin: usize,
    pub len: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
    pub output_padding: usize,
    pub input_leaky_relu: Option<f32>,
}

impl ConvTranspose1d {
    /// PyTorch's output length, `(len - 1) * stride - 2 * padding + k + output_padding`.
    pub fn out_len(&self) -> Result<usize> {
        ((self.len.max(1) - 1) * self.stride + self.k + self.output_padding)
            .checked_sub(2 * self.padding)
            .filter(|&l| l > 0 && self.len > 0 && self.stride > 0 && self.k > 0)
            .ok_or_else(|| {
                shape_error(
                    "conv_transpose1d",
                    format!(
                        "length {} with kernel {}, stride {} and padding {} leaves no output",
                        self.len, self.k, self.stride, self.padding
                    ),
                )
            })
    }
}

/// `out = act(conv_transpose1d(x, weight) + bias) + residual`, `out` `[batch, cout, out_len]`:
/// one product `weight^T x` (`[cout * k, len]`), whose column of input position `l` and tap `j`
/// lands at output position `l * stride + j - padding`.
pub fn conv_transpose1d(
    out: &mut [f32],
    x: &[f32],
    weight: &[f32],
    c: &ConvTranspose1d,
    epilogue: Epilogue<'_>,
) -> Result<()> {
    let lout = c.out_len()?;
    check_sizes(
        "conv_transpose1d",
        [
            ("input", x.len(), c.batch * c.cin * c.len),
            ("weight", weight.len(), c.cin * c.cout * c.k),
            ("output", out.len(), c.batch * c.cout * lout),
        ],
    )?;
    check_epilogue("conv_transpose1d", &epilogue, c.cout, out.len())?;
    for b in 0..c.batch {
        let mut xb = x[b * c.cin * c.len..(b + 1) * c.cin * c.len].to_vec();
        if let Some(slope) = c.input_leaky_relu {
            xb.iter_mut()
                .filter(|v| **v < 0.0)
                .for_each(|v| *v *= slope);
        }
        let mut cols = vec![0.0; c.cout * c.k * c.len];
        gemm(
            &mut cols,
            MatSlice::row_major(weight, c.cin, c.cout * c.k).t(),
            MatSlice::row_major(&xb, c.cin, c.len),
            (1, c.cout * c.k, c.cin, c.len),
            1.0,
            Epilogue::default(),
        )?;
        let rows = par_map(c.cout, |co| {
            let mut row = vec![0.0f32; lout];
            for j in 0..c.k {
                let taps = &cols[(co * c.k + j) * c.len..(co * c.k + j + 1) * c.len];
                for (l, &v) in taps.iter().enumerate() {
                    if let Some(t) = (l * c.stride + j).checked_sub(c.padding)
                        && t < lout
                    {
                        row[t] += v;
                    }
                }
            }
            row
        });
        let out = &mut out[b * c.cout * lout..(b + 1) * c.cout * lout];
        for (co, row) in rows.into_iter().enumerate() {
            out[co * lout..(co + 1) * lout].copy_from_slice(&row);
        }
    }
    apply_channel_epilogue(out, lout, c.cout, &epilogue);
    Ok(())
}

/// Fails unless each named slice holds the values its shape says: (what, held, wanted).
fn check_sizes(op: &str, sizes: [(&str, usize, usize); 3]) -> Result<()> {
    match sizes.iter().find(|(_, got, want)| got != want) {
        Some((what, got, want)) => Err(shape_error(
            op,
            format!("the {what} holds {got} values, not {want}"),
        )),
        None => Ok(()),
    }
}

fn check_epilogue(op: &str, epilogue: &Epilogue<'_>, channels: usize, len: usize) -> Result<()> {
    if let Some(bias) = epilogue.bias
        && bias.len() != channels
    {
        return Err(shape_error(
            op,
            format!("bias of {} values for {channels} channels", bias.len()),
        ));
    }
    if let Some(residual) = epilogue.residual
        && residual.len() != len
    {
        return Err(shape_error(
            op,
            format!(
                "residual of {} values for an output of {len}",
                residual.len()
            ),
        ));
    }
    Ok(())
}

/// Bias (per channel), activation and residual over `[batch, channels, positions]`.
fn apply_channel_epilogue(
    out: &mut [f32],
    positions: usize,
    channels: usize,
    epilogue: &Epilogue<'_>,
) {
    for (i, row) in out.chunks_mut(positions).enumerate() {
        let bias = epilogue.bias.map_or(0.0, |bias| bias[i % channels]);
        for (j, v) in row.iter_mut().enumerate() {
            *v = activate(*v + bias, epilogue.act);
            if let Some(residual) = epilogue.residual {
                *v += residual[i * positions + j];
            }
        }
    }
}
