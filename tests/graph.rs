//! The graph executor: the planned, single-submit replay equals the op-by-op run with a buffer per
//! tensor; the plan saves memory; replays with new scalars give new, correct results.

mod common;

use audioldm::engine::ops::conv::{Conv2dOptions, conv_weight_layout};
use audioldm::engine::{Activation, DType, Executable, Graph, Scalar, Tensor, Var};
use common::*;

const B: usize = 2;
const C: usize = 8;
const H: usize = 9;
const W: usize = 5;
const TEMB: usize = 12;

/// A small block in the shape of the UNet's: a time embedding through a linear layer, a ResNet
/// block (GroupNorm+SiLU, conv, time-embedding add, GroupNorm+SiLU, conv with the skip fused), then
/// a self-attention block over the H*W positions with a residual linear projection.
fn record(timestep: f32) -> (Graph, Var, Scalar) {
    let mut g = Graph::new(ctx());
    let mut seed = 1000;
    let mut param = |g: &mut Graph, shape: &[usize]| {
        seed += 1;
        let n = shape.iter().product();
        let t = Tensor::from_f32(ctx(), shape, DType::F32, &random(seed, n)).unwrap();
        g.weight(&t)
    };
    let conv_w = |g: &mut Graph, seed: u64| {
        let (shape, w) = conv_weight_layout(&random(seed, C * C * 9), C, C, 3, 3);
        let t = Tensor::from_f32(ctx(), shape, DType::F32, &w).unwrap();
        g.weight(&t)
    };
    let x = input(&mut g, &[B, C, H, W], &random(1, B * C * H * W));
    let t = g.scalar(timestep);
    let temb = g
        .timestep_embedding(B, t, TEMB, true, 0.0, 10000.0)
        .unwrap();
    let (tw, tb) = (param(&mut g, &[C, TEMB]), param(&mut g, &[C]));
    let temb = g
        .linear(temb, tw, Some(tb), Activation::Silu, None)
        .unwrap();
    let temb = g.reshape(temb, [B, C, 1, 1]).unwrap();

    let (g1, b1) = (param(&mut g, &[C]), param(&mut g, &[C]));
    let h = g.group_norm(x, 4, Some(g1), Some(b1), 1e-5, true).unwrap();
    let (w1, c1) = (conv_w(&mut g, 7), param(&mut g, &[C]));
    let h = g
        .conv2d(h, w1, Some(c1), None, Conv2dOptions::same_padding(1, 1))
        .unwrap();
    let h = g.add(h, temb).unwrap();
    let (g2, b2) = (param(&mut g, &[C]), param(&mut g, &[C]));
    let h = g.group_norm(h, 4, Some(g2), Some(b2), 1e-5, true).unwrap();
    let (w2, c2) = (conv_w(&mut g, 8), param(&mut g, &[C]));
    let h = g
        .conv2d(h, w2, Some(c2), Some(x), Conv2dOptions::same_padding(1, 1))
        .unwrap();

    let tokens = g.permute(h, &[0, 2, 3, 1]).unwrap();
    let tokens = g.reshape(tokens, [B, H * W, C]).unwrap();
    let (lg, lb) = (param(&mut g, &[C]), param(&mut g, &[C]));
    let normed = g.layer_norm(tokens, lg, lb, 1e-5).unwrap();
    let (wq, wk, wv) = (
        param(&mut g, &[C, C]),
        param(&mut g, &[C, C]),
        param(&mut g, &[C, C]),
    );
    let q = g.linear(normed, wq, None, Activation::None, None).unwrap();
    let k = g.linear(normed, wk, None, Activation::None, None).unwrap();
    let v = g.linear(normed, wv, None, Activation::None, None).unwrap();
    let attn = g.attention(q, k, v, 2, 0.5).unwrap();
    let (wo, bo) = (param(&mut g, &[C, C]), param(&mut g, &[C]));
    let out = g
        .linear(attn, wo, Some(bo), Activation::None, Some(tokens))
        .unwrap();
    g.output(out).unwrap();
    (g, out, t)
}

fn run_planned(exe: &mut Executable, out: Var) -> Vec<f32> {
    exe.run().unwrap();
    exe.read(out).unwrap()
}

#[test]
fn planned_graph_equals_op_by_op_run() {
    let (g, out, _) = record(421.0);
    let ops = g.len();
    let mut planned = g.build().unwrap();
    let got = run_planned(&mut planned, out);

    let (g, out_ref, _) = record(421.0);
    let mut eager = g.build_unplanned().unwrap();
    eager.run_op_by_op().unwrap();
    let want = eager.read(out_ref).unwrap();

    // Same kernels in the same order: any aliasing mistake in the plan shows as a difference.
    let diff = max_abs_err(&got, &f64s(&want));
    println!(
        "planned vs op-by-op: max abs diff {diff:e} over {} values",
        got.len()
    );
    assert_eq!(diff, 0.0);
    assert!(got.iter().all(|v| v.is_finite()));

    let stats = planned.stats();
    println!("{stats:#?}");
    assert_eq!(stats.dispatches, ops);
    assert_eq!(stats.submits, 1, "one submit per run");
    assert!(
        stats.planned_bytes < stats.unplanned_bytes,
        "plan {} bytes, unplanned {}",
        stats.planned_bytes,
        stats.unplanned_bytes
    );
    assert!(stats.buffers < ops);
    assert!(stats.weight_bytes > 0);
    assert_eq!(eager.stats().submits, ops, "op by op: one submit per op");
    assert_eq!(eager.stats().planned_bytes, eager.stats().unplanned_bytes);

    // Sliced into submits of 3 dispatches (what the app does to let its renderer in): the same
    // result, bit for bit, in ceil(ops / 3) submits.
    let (g, out_sliced, _) = record(421.0);
    let mut sliced = g.build().unwrap();
    sliced.set_max_dispatches_per_submit(Some(3));
    let got_sliced = run_planned(&mut sliced, out_sliced);
    assert_eq!(got_sliced, got);
    assert_eq!(sliced.stats().submits, ops.div_ceil(3));

    // A stop flag is checked before every submit.
    let stop = std::sync::atomic::AtomicBool::new(true);
    assert!(
        !sliced.run_unless(&stop).unwrap(),
        "stopped before the first slice"
    );
    assert_eq!(sliced.stats().submits, ops.div_ceil(3));
    stop.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(sliced.run_unless(&stop).unwrap());
    assert_eq!(sliced.stats().submits, 2 * ops.div_ceil(3));
}

#[test]
fn replay_with_a_new_timestep_gives_the_new_result() {
    let (g, out, t) = record(1.0);
    let mut exe = g.build().unwrap();
    let first = run_planned(&mut exe, out);
    exe.set_scalar(t, 999.0);
    let replayed = run_planned(&mut exe, out);
    assert_eq!(exe.stats().submits, 2);

    let (fresh, fresh_out, _) = record(999.0);
    let mut fresh = fresh.build().unwrap();
    let want = run_planned(&mut fresh, fresh_out);
    assert_eq!(
        max_abs_err(&replayed, &f64s(&want)),
        0.0,
        "replay differs from a graph built for t=999"
    );
    let moved = max_abs_err(&first, &f64s(&replayed));
    println!("output moved by {moved:e} when t went from 1 to 999");
    assert!(
        moved > 1e-3,
        "changing the timestep did not change the output"
    );
}

/// A scalar coefficient against a CPU reference, over several replays.
#[test]
fn replayed_scalars_are_applied_exactly() {
    let x = random(5, 37);
    let y = random(6, 37);
    let mut g = Graph::new(ctx());
    let vx = input(&mut g, &[37], &x);
    let vy = input(&mut g, &[37], &y);
    let alpha = g.scalar(0.0);
    let beta = g.scalar(0.0);
    let out = g.axpby(vx, vy, alpha, beta).unwrap();
    g.output(out).unwrap();
    let mut exe = g.build().unwrap();
    for (a, b) in [(1.0f32, 0.0f32), (0.25, -3.5), (-7.0, 2.0)] {
        exe.set_scalar(alpha, a);
        exe.set_scalar(beta, b);
        let got = run_planned(&mut exe, out);
        let want: Vec<f64> = x
            .iter()
            .zip(&y)
            .map(|(&x, &y)| a as f64 * x as f64 + b as f64 * y as f64)
            .collect();
        assert_close(&format!("axpby replay a={a} b={b}"), &got, &want, 1e-6);
    }
}

#[test]
fn intermediates_cannot_be_read_and_inputs_cannot_be_outputs() {
    let mut g = Graph::new(ctx());
    let x = input(&mut g, &[4], &[1.0, 2.0, 3.0, 4.0]);
    let hidden = g.scale(x, 2.0, 0.0).unwrap();
    let out = g.scale(hidden, 3.0, 0.0).unwrap();
    assert!(g.output(x).is_err());
    g.output(out).unwrap();
    let mut exe = g.build().unwrap();
    exe.run().unwrap();
    assert!(exe.read(hidden).is_err());
    assert_eq!(exe.read(out).unwrap(), vec![6.0, 12.0, 18.0, 24.0]);
    assert_eq!(exe.read(x).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
}

/// A profiled replay times every dispatch, counts the work of GEMMs, convolutions and attention,
/// and leaves the same results as a plain replay. lavapipe offers timestamp queries, so CI runs
/// the measuring branch; an adapter without them must say so.
#[test]
fn a_profiled_replay_times_every_dispatch() {
    let (mut g, out, _) = record(250.0);
    g.output(out).unwrap();
    let mut exe = g.build().unwrap();
    let dispatches = exe.stats().dispatches;
    exe.run().unwrap();
    let plain = exe.read(out).unwrap();
    let profile = match exe.profile() {
        Ok(profile) => profile,
        Err(e) => {
            assert!(
                !ctx().capabilities().timestamp_query,
                "profiling failed on an adapter with timestamps: {e}"
            );
            assert!(e.to_string().contains("TIMESTAMP_QUERY"), "{e}");
            assert!(
                std::env::var("CI").is_err(),
                "CI's adapter (lavapipe) must offer timestamp queries"
            );
            return;
        }
    };
    assert_eq!(
        exe.read(out).unwrap(),
        plain,
        "a profiled replay computes the same"
    );
    assert_eq!(profile.ops.len(), dispatches);
    assert!(
        profile
            .ops
            .iter()
            .all(|op| op.seconds >= 0.0 && op.bytes > 0)
    );
    let total = profile.total();
    assert!(total.seconds > 0.0, "{profile:?}");
    // The time-embedding linear layer: [B, TEMB] x [TEMB, C].
    let linear = profile
        .ops
        .iter()
        .find(|op| op.kernel.starts_with("matmul.wgsl") && op.shape == format!("[{B}, {C}]"))
        .expect("the linear layer");
    assert_eq!(linear.flops, 2 * (B * TEMB * C) as u64);
    let conv = profile
        .ops
        .iter()
        .find(|op| op.kernel.starts_with("conv.wgsl:conv2d"))
        .expect("a convolution");
    assert_eq!(conv.flops, 2 * (B * C * H * W * C * 9) as u64);
    let families: Vec<String> = profile.by_family().into_iter().map(|(f, _)| f).collect();
    for family in ["matmul", "conv", "norm", "attention"] {
        assert!(families.iter().any(|f| f == family), "{families:?}");
    }
    let report = profile.report("test block", 5);
    println!("{report}");
    assert!(report.contains("GFLOP/s") && report.contains("by kernel family"));
}

/// A staged output is copied by every run in the run's own submit and read back run by run, in
/// order; the ring keeps the newest runs when more are queued than it holds.
#[test]
fn staged_outputs_are_read_run_by_run() {
    let mut g = Graph::new(ctx());
    let counter = Tensor::from_f32(ctx(), [5], DType::F32, &[0.0; 5]).unwrap();
    let x = g.input(&counter);
    let next = g.scale(x, 1.0, 1.0).unwrap();
    g.output(next).unwrap();
    let mut exe = g.build().unwrap();
    exe.feed_back(next, x).unwrap();
    assert!(exe.read_staged().is_err(), "nothing is staged yet");
    exe.stage_output(next, 2).unwrap();
    assert!(exe.read_staged().is_err(), "no run yet");
    exe.run().unwrap();
    exe.run().unwrap();
    assert_eq!(exe.unread_runs(), 2);
    assert_eq!(exe.read_staged().unwrap(), vec![1.0; 5]);
    exe.run().unwrap();
    assert_eq!(exe.read_staged().unwrap(), vec![2.0; 5]);
    assert_eq!(exe.read_staged().unwrap(), vec![3.0; 5]);
    assert!(exe.read_staged().is_err(), "every run was read");
    // Three runs unread in a ring of two: the first one's copy is gone.
    for _ in 0..3 {
        exe.run().unwrap();
    }
    assert_eq!(exe.unread_runs(), 2);
    assert_eq!(exe.read_staged().unwrap(), vec![5.0; 5]);
    assert_eq!(exe.read_staged().unwrap(), vec![6.0; 5]);
    // What a cancelled loop leaves unread is dropped before the next one starts.
    exe.run().unwrap();
    exe.discard_unread_runs();
    exe.run().unwrap();
    assert_eq!(exe.read_staged().unwrap(), vec![8.0; 5]);
}

/// Reading run i's staged output waits for run i only: run i + 1, queued behind it, is still on
/// the GPU when the read returns (the denoising loop shows step i's preview while step i + 1
/// runs, and the GPU never waits for the CPU between steps).
#[test]
fn reading_a_staged_run_leaves_the_next_run_going() {
    // Chained 384x384 GEMMs, 2.7 GFLOP: about 0.4 s a run on lavapipe, against a read-back of
    // microseconds.
    const N: usize = 384;
    // A device of its own: the other tests' submissions must not decide when its queue is done.
    let own = common::new_ctx();
    let ctx = &own;
    let mut g = Graph::new(ctx);
    let a = Tensor::from_f32(ctx, [N, N], DType::F32, &random(71, N * N)).unwrap();
    let w = Tensor::from_f32(ctx, [N, N], DType::F32, &random(72, N * N)).unwrap();
    let a = g.input(&a);
    let w = g.weight(&w);
    let mut h = a;
    for _ in 0..24 {
        h = g.matmul(h, w, 1.0 / N as f32).unwrap();
    }
    let out = g.scale(h, 1.0, 0.0).unwrap();
    g.output(out).unwrap();
    let mut exe = g.build().unwrap();
    exe.stage_output(out, 2).unwrap();
    exe.run().unwrap();
    let first = exe.read_staged().unwrap();
    exe.run().unwrap();
    exe.run().unwrap();
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&finished);
    ctx.queue().on_submitted_work_done(move || {
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let second = exe.read_staged().unwrap();
    ctx.device().poll(wgpu::PollType::Poll).unwrap();
    assert!(
        !finished.load(std::sync::atomic::Ordering::SeqCst),
        "reading the second run waited for the third"
    );
    let third = exe.read_staged().unwrap();
    ctx.device().poll(wgpu::PollType::Poll).unwrap();
    assert!(finished.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(first, second);
    assert_eq!(second, third);
    assert!(first.iter().all(|v| v.is_finite()) && first.iter().any(|&v| v != 0.0));
}

/// The CPU backend's executable: the planned run equals the unplanned one (an arena range per
/// tensor), a stop flag set before the run stops it before any op (it is checked before every
/// op), and a staged output is kept run by run.
#[test]
fn the_cpu_backend_replays_plans_stops_and_stages() {
    use std::sync::atomic::AtomicBool;
    let ctx = cpu_ctx();
    let build = |planned: bool| {
        let x = Tensor::from_f32(ctx, [3, 40], DType::F32, &random(1, 120)).unwrap();
        let w = Tensor::from_f32(ctx, [40, 40], DType::F32, &random(2, 1600)).unwrap();
        let mut g = Graph::new(ctx);
        let (vx, vw) = (g.input(&x), g.weight(&w));
        let s = g.scalar(0.5);
        let mut h = vx;
        for _ in 0..6 {
            let y = g.linear(h, vw, None, Activation::Silu, None).unwrap();
            h = g.axpby(y, h, s, 1.0).unwrap();
        }
        g.output(h).unwrap();
        let exe = if planned {
            g.build()
        } else {
            g.build_unplanned()
        };
        (exe.unwrap(), h, s)
    };
    let (mut planned, out, scalar) = build(true);
    let (mut unplanned, out2, _) = build(false);
    assert!(planned.stats().planned_bytes < unplanned.stats().planned_bytes);
    planned.run().unwrap();
    unplanned.run().unwrap();
    assert_eq!(planned.read(out).unwrap(), unplanned.read(out2).unwrap());

    let before = planned.read(out).unwrap();
    planned.set_scalar(scalar, 2.0);
    assert!(!planned.run_unless(&AtomicBool::new(true)).unwrap());
    assert_eq!(
        planned.read(out).unwrap(),
        before,
        "a stopped run wrote its output"
    );

    planned.stage_output(out, 2).unwrap();
    planned.run().unwrap();
    let changed = planned.read(out).unwrap();
    assert_ne!(changed, before);
    planned.set_scalar(scalar, 0.5);
    planned.run().unwrap();
    assert_eq!(planned.unread_runs(), 2);
    assert_eq!(planned.read_staged().unwrap(), changed);
    assert_eq!(planned.read_staged().unwrap(), before);
    assert!(planned.read_staged().is_err(), "no run is left to read");
}
