//! Nearest-neighbour upsampling (the UNet's and VAE's `Upsample2D` before their conv).

use crate::engine::error::{Result, shape_error};
use crate::engine::graph::{Binding, Graph, OpKind, OpSpec, Params, Var, grid};
use crate::engine::kernel::KernelKey;
use crate::engine::tensor::{DType, Shape};

use super::layout::GROUP;

/// PyTorch's nearest source index: `min(floor(dst * (in / out)), in - 1)`, all in f32.
pub fn nearest_source_index(dst: usize, input: usize, output: usize) -> usize {
    let scale = input as f32 / output as f32;
    ((dst as f32 * scale).floor() as usize).min(input - 1)
}

impl Graph {
    /// `F.interpolate(x, size=(out_h, out_w), mode="nearest")` for `x [B, C, H, W]` (any sizes,
    /// also downsampling).
    pub fn upsample_nearest(&mut self, x: Var, out_h: usize, out_w: usize) -> Result<Var> {
        let op = "upsample_nearest";
        self.expect_dtype(op, x, &[DType::F32, DType::U32])?;
        let shape = self.shape(x).clone();
        let &[b, c, in_h, in_w] = shape.dims() else {
            return Err(shape_error(
                op,
                format!("input {shape} is not [B, C, H, W] (to {out_h}x{out_w})"),
            ));
        };
        if out_h == 0 || out_w == 0 || shape.numel() == 0 {
            return Err(shape_error(
                op,
                format!("cannot resize {shape} to {out_h}x{out_w}"),
            ));
        }
        let out_shape = Shape(vec![b, c, out_h, out_w]);
        let dtype = self.dtype(x);
        if self.records_nodes() {
            let kind = OpKind::UpsampleNearest { x, out_h, out_w };
            return self.push_node_as(op, kind, out_shape, dtype);
        }
        let (in_plane, out_plane) = (in_h * in_w, out_h * out_w);
        let y = self.alloc(op, out_shape.clone(), dtype)?;
        let x_parts = self.parts_in_units(op, x, in_plane)?;
        let y_parts = self.parts_in_units(op, y, out_plane)?;
        // One dispatch per run of planes that lies in one part of the input and one of the output.
        for ys in &y_parts {
            for xs in &x_parts {
                let (x0, x1, y0, y1) = (xs.start, xs.end, ys.start, ys.end);
                let (lo, hi) = (y0.max(x0), y1.min(x1));
                if lo >= hi {
                    continue;
                }
                let n = (hi - lo) * out_plane;
                self.push_window(
                    Binding::elements(y, y0 * out_plane..y1 * out_plane),
                    OpSpec {
                        label: op.to_string(),
                        key: KernelKey::new("upsample.wgsl", "upsample_nearest", 1, 1),
                        inputs: vec![Some(Binding::elements(x, x0 * in_plane..x1 * in_plane))],
                        out_shape: out_shape.clone(),
                        out_dtype: dtype,
                        params: Params::default()
                            .u(n)
                            .u(in_h)
                            .u(in_w)
                            .u(out_h)
                            .u(out_w)
                            .f(in_h as f32 / out_h as f32)
                            .f(in_w as f32 / out_w as f32)
                            .u(lo - x0)
                            .u(lo - y0),
                        workgroups: grid(n.div_ceil(GROUP)),
                    },
                )?;
            }
        }
        Ok(y)
    }
}
