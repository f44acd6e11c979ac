//! Nearest-neighbour resizing against PyTorch's index formula (in f32), on the GPU and on the CPU
//! backend: copies must be exact.

mod common;

use audioldm::engine::Graph;
use common::*;

/// `F.interpolate(mode="nearest", size=out)`'s source index, as ATen computes it: the scale
/// `in / out` and the product in f32, floored, clamped to the last row.
fn source_index(dst: usize, input: usize, output: usize) -> usize {
    let scale = input as f32 / output as f32;
    ((dst as f32 * scale).floor() as usize).min(input - 1)
}

fn upsample_ref(x: &[f32], dims: [usize; 4], out_h: usize, out_w: usize) -> Vec<f64> {
    let [b, c, h, w] = dims;
    let mut y = Vec::with_capacity(b * c * out_h * out_w);
    for plane in 0..b * c {
        for oy in 0..out_h {
            let sy = source_index(oy, h, out_h);
            for ox in 0..out_w {
                let sx = source_index(ox, w, out_w);
                y.push(x[(plane * h + sy) * w + sx] as f64);
            }
        }
    }
    y
}

#[test]
fn upsample_nearest_matches_pytorch_indexing() {
    let cases: &[([usize; 4], usize, usize)] = &[
        ([1, 1, 8, 8], 16, 16),
        ([1, 1, 2, 3], 82, 3),
        ([2, 3, 125, 4], 250, 8),
        ([1, 2, 63, 5], 125, 9),
        ([2, 1, 32, 7], 63, 13),
        ([1, 4, 5, 6], 5, 6),
        ([1, 1, 1, 1], 3, 2),
        ([3, 2, 9, 10], 4, 7),
        ([1, 8, 128, 4], 256, 8),
        ([2, 4, 25, 16], 50, 32),
    ];
    for (seed, &(dims, out_h, out_w)) in cases.iter().enumerate() {
        let x = random(seed as u64, dims.iter().product());
        let want = upsample_ref(&x, dims, out_h, out_w);
        for (backend, ctx) in backends() {
            let mut g = Graph::new(ctx);
            let vx = input(&mut g, &dims, &x);
            let y = g.upsample_nearest(vx, out_h, out_w).unwrap();
            assert_eq!(g.dims(y), &[dims[0], dims[1], out_h, out_w]);
            let got = run(g, y);
            assert_close(
                &format!("upsample_nearest {dims:?} -> {out_h}x{out_w} on {backend}"),
                &got,
                &want,
                0.0,
            );
        }
    }
}

/// Where the f32 scale rounds down, PyTorch picks an earlier row than exact arithmetic would:
/// 26 -> 44 at row 22 gives 12 (exact: 22 * 26 / 44 = 13), 2 -> 82 at row 41 gives 0. The kernel
/// must follow the f32 formula, not the exact one.
#[test]
fn f32_rounding_of_the_scale_is_reproduced() {
    assert_eq!(source_index(22, 26, 44), 12);
    assert_eq!(source_index(41, 2, 82), 0);
    for (dims, out_h, out_w) in [([1, 2, 26, 2], 44, 82), ([1, 1, 32, 48], 82, 123)] {
        let x = random(99, dims.iter().product());
        let want = upsample_ref(&x, dims, out_h, out_w);
        for (backend, ctx) in backends() {
            let mut g = Graph::new(ctx);
            let vx = input(&mut g, &dims, &x);
            let y = g.upsample_nearest(vx, out_h, out_w).unwrap();
            let got = run(g, y);
            assert_close(
                &format!("upsample_nearest {dims:?} -> {out_h}x{out_w} on {backend}"),
                &got,
                &want,
                0.0,
            );
        }
    }
}

#[test]
fn shape_mismatch_is_an_error_naming_the_op_and_shapes() {
    for (backend, ctx) in backends() {
        let mut g = Graph::new(ctx);
        let x = input(&mut g, &[2, 3, 4], &random(1, 24));
        let err = g.upsample_nearest(x, 8, 8).unwrap_err().to_string();
        assert!(
            err.contains("upsample_nearest") && err.contains("[2, 3, 4]") && err.contains("8x8"),
            "{backend}: {err}"
        );
        let x = input(&mut g, &[1, 2, 3, 4], &random(2, 24));
        let err = g.upsample_nearest(x, 0, 8).unwrap_err().to_string();
        assert!(
            err.contains("upsample_nearest") && err.contains("[1, 2, 3, 4]"),
            "{backend}: {err}"
        );
    }
}
