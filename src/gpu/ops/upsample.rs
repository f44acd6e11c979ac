//! Nearest-neighbour upsampling (the UNet's and VAE's `Upsample2D` before their conv).

use crate::gpu::error::{Result, shape_error};
use crate::gpu::graph::{Binding, Graph, OpSpec, Params, Var, grid};
use crate::gpu::kernel::KernelKey;
use crate::gpu::tensor::{DType, Shape};

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
        let n = out_shape.numel();
        let dtype = self.dtype(x);
        self.push(OpSpec {
            label: op.to_string(),
            key: KernelKey::new("upsample.wgsl", "upsample_nearest", 1, 1),
            inputs: vec![Some(Binding::from(x))],
            out_shape,
            out_dtype: dtype,
            params: Params::default()
                .u(n)
                .u(in_h)
                .u(in_w)
                .u(out_h)
                .u(out_w)
                .f(in_h as f32 / out_h as f32)
                .f(in_w as f32 / out_w as f32),
            workgroups: grid(n.div_ceil(GROUP)),
        })
    }
}
