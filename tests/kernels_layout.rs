//! Permute, slice and concat against CPU references, on the GPU and on the CPU backend: copies
//! must be exact.

mod common;

use audioldm::engine::{DType, Graph, Tensor};
use common::*;

fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// Coordinates of flat index `i` in `dims`.
fn coords(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut c = vec![0; dims.len()];
    for d in (0..dims.len()).rev() {
        c[d] = i % dims[d];
        i /= dims[d];
    }
    c
}

fn permute_ref(x: &[f32], dims: &[usize], perm: &[usize]) -> Vec<f64> {
    let st = strides(dims);
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    (0..x.len())
        .map(|i| {
            let c = coords(i, &out_dims);
            let src: usize = c.iter().zip(perm).map(|(&ci, &p)| ci * st[p]).sum();
            x[src] as f64
        })
        .collect()
}

/// All permutations of 0..n (Heap's algorithm).
fn permutations(n: usize) -> Vec<Vec<usize>> {
    fn heap(k: usize, p: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if k <= 1 {
            out.push(p.clone());
            return;
        }
        for i in 0..k {
            heap(k - 1, p, out);
            let j = if k.is_multiple_of(2) { i } else { 0 };
            p.swap(j, k - 1);
        }
    }
    let mut out = Vec::new();
    heap(n, &mut (0..n).collect(), &mut out);
    out
}

#[test]
fn permute_is_exact_for_every_permutation() {
    for (backend, ctx) in backends() {
        let cases: Vec<(Vec<usize>, Vec<Vec<usize>>)> = vec![
            (vec![2, 3, 4, 5], permutations(4)),
            (vec![1, 7, 1, 3], permutations(4)),
            (vec![5], permutations(1)),
            (vec![3, 17], permutations(2)),
            (vec![2, 3, 1, 4, 5, 2], {
                // A sample of the 720: rotations, reversal and a few shuffles.
                let mut p: Vec<Vec<usize>> = (0..6)
                    .map(|r| (0..6).map(|i| (i + r) % 6).collect())
                    .collect();
                p.push(vec![5, 4, 3, 2, 1, 0]);
                p.push(vec![0, 2, 4, 1, 3, 5]);
                p.push(vec![3, 0, 5, 2, 1, 4]);
                p
            }),
            // [B, C, H, W] -> [B, H, W, C] and back, as attention blocks do.
            (
                vec![2, 64, 17, 33],
                vec![vec![0, 2, 3, 1], vec![0, 3, 1, 2]],
            ),
        ];
        for (seed, (dims, perms)) in cases.into_iter().enumerate() {
            let n: usize = dims.iter().product();
            let x = random(seed as u64, n);
            for perm in perms {
                let mut g = Graph::new(ctx);
                let vx = input(&mut g, &dims, &x);
                let y = g.permute(vx, &perm).unwrap();
                let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
                assert_eq!(g.dims(y), &out_dims[..]);
                let got = run(g, y);
                assert_close(
                    &format!("permute {dims:?} {perm:?} on {backend}"),
                    &got,
                    &permute_ref(&x, &dims, &perm),
                    0.0,
                );
            }
        }
    }
}

#[test]
fn permute_copies_u32_bits() {
    for (backend, ctx) in backends() {
        let dims = [3usize, 4, 5];
        let x: Vec<u32> = (0..60u32).map(|i| i.wrapping_mul(2654435761)).collect();
        let mut g = Graph::new(ctx);
        let t = Tensor::from_u32(ctx, dims, &x).unwrap();
        let vx = g.input(&t);
        let y = g.permute(vx, &[2, 0, 1]).unwrap();
        assert_eq!(g.dtype(y), DType::U32);
        g.output(y).unwrap();
        let mut exe = g.build().unwrap();
        exe.run().unwrap();
        let got = exe.tensor(y).unwrap().to_vec_u32(ctx).unwrap();
        assert_eq!(got.len(), x.len(), "on {backend}");
        for (i, &v) in got.iter().enumerate() {
            let c = coords(i, &[5, 3, 4]);
            assert_eq!(v, x[c[1] * 20 + c[2] * 5 + c[0]], "at {i} on {backend}");
        }
    }
}

#[test]
fn slice_is_exact_on_every_axis() {
    for (backend, ctx) in backends() {
        let dims = vec![3usize, 4, 5, 6];
        let n: usize = dims.iter().product();
        let x = random(7, n);
        for axis in 0..dims.len() {
            let len = dims[axis];
            for (start, end) in [(0, len), (0, 1), (len - 1, len), (1, len - 1), (1, 3)] {
                let mut g = Graph::new(ctx);
                let vx = input(&mut g, &dims, &x);
                let y = g.slice(vx, axis, start, end).unwrap();
                let mut out_dims = dims.clone();
                out_dims[axis] = end - start;
                assert_eq!(g.dims(y), &out_dims[..]);
                let got = run(g, y);
                let st = strides(&dims);
                let want: Vec<f64> = (0..got.len())
                    .map(|i| {
                        let mut c = coords(i, &out_dims);
                        c[axis] += start;
                        x[c.iter().zip(&st).map(|(a, b)| a * b).sum::<usize>()] as f64
                    })
                    .collect();
                assert_close(
                    &format!("slice {dims:?} axis {axis} {start}..{end} on {backend}"),
                    &got,
                    &want,
                    0.0,
                );
            }
        }
        // The q/k/v thirds of a fused projection [B, L, 3C].
        let (b, l, c) = (2, 9, 40);
        let qkv = random(8, b * l * 3 * c);
        for part in 0..3 {
            let mut g = Graph::new(ctx);
            let vx = input(&mut g, &[b, l, 3 * c], &qkv);
            let y = g.slice(vx, 2, part * c, (part + 1) * c).unwrap();
            let got = run(g, y);
            let want: Vec<f64> = (0..b * l * c)
                .map(|i| qkv[(i / c) * 3 * c + part * c + i % c] as f64)
                .collect();
            assert_close(
                &format!("slice qkv part {part} on {backend}"),
                &got,
                &want,
                0.0,
            );
        }
    }
}

#[test]
fn concat_is_exact_on_every_axis() {
    for (backend, ctx) in backends() {
        let cases: &[(&[usize], &[usize], usize)] = &[
            (&[2, 3, 4, 5], &[2, 3, 4, 5], 0),
            (&[2, 3, 4, 5], &[2, 1, 4, 5], 1),
            (&[2, 3, 4, 5], &[2, 3, 7, 5], 2),
            (&[2, 3, 4, 5], &[2, 3, 4, 1], 3),
            (&[1, 1, 1], &[1, 2, 1], 1),
            (&[7], &[13], 0),
            // UNet skip connection: channels of [B, C, H, W].
            (&[2, 320, 8, 16], &[2, 640, 8, 16], 1),
        ];
        for (seed, &(da, db, axis)) in cases.iter().enumerate() {
            let a = random(20 + seed as u64, da.iter().product());
            let b = random(40 + seed as u64, db.iter().product());
            let mut g = Graph::new(ctx);
            let va = input(&mut g, da, &a);
            let vb = input(&mut g, db, &b);
            let y = g.concat(va, vb, axis).unwrap();
            let mut out_dims = da.to_vec();
            out_dims[axis] += db[axis];
            assert_eq!(g.dims(y), &out_dims[..]);
            let got = run(g, y);
            let (sa, sb) = (strides(da), strides(db));
            let want: Vec<f64> = (0..got.len())
                .map(|i| {
                    let mut c = coords(i, &out_dims);
                    if c[axis] < da[axis] {
                        a[c.iter().zip(&sa).map(|(x, y)| x * y).sum::<usize>()] as f64
                    } else {
                        c[axis] -= da[axis];
                        b[c.iter().zip(&sb).map(|(x, y)| x * y).sum::<usize>()] as f64
                    }
                })
                .collect();
            assert_close(
                &format!("concat {da:?} + {db:?} axis {axis} on {backend}"),
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
        let a = input(&mut g, &[2, 3, 4], &random(1, 24));
        let b = input(&mut g, &[2, 5, 3], &random(2, 30));
        let err = g.concat(a, b, 1).unwrap_err().to_string();
        assert!(
            err.contains("concat") && err.contains("[2, 3, 4]") && err.contains("[2, 5, 3]"),
            "{backend}: {err}"
        );
        let err = g.concat(a, a, 3).unwrap_err().to_string();
        assert!(
            err.contains("concat") && err.contains("axis 3"),
            "{backend}: {err}"
        );
        for perm in [&[0, 1][..], &[0, 1, 1], &[0, 1, 3]] {
            let err = g.permute(a, perm).unwrap_err().to_string();
            assert!(
                err.contains("permute")
                    && err.contains("[2, 3, 4]")
                    && err.contains(&format!("{perm:?}")),
                "{backend}: {err}"
            );
        }
        for (axis, start, end) in [(3, 0, 1), (1, 2, 4), (0, 1, 1)] {
            let err = g.slice(a, axis, start, end).unwrap_err().to_string();
            assert!(
                err.contains("slice") && err.contains("[2, 3, 4]"),
                "{backend}: {err}"
            );
        }
    }
}
