//! Sinusoidal timestep embedding against diffusers' `get_timestep_embedding`, evaluated in f64
//! from the same f32 argument PyTorch forms (t * freq in f32), on the GPU and on the CPU backend.

mod common;

use audioldm::engine::Graph;
use common::*;

struct Config {
    dim: usize,
    flip: bool,
    shift: f32,
    max_period: f32,
}

/// diffusers' frequencies: exp(-ln(max_period) * j / (half - shift)), in f64, rounded to f32.
fn freqs(c: &Config) -> Vec<f32> {
    let half = c.dim / 2;
    (0..half)
        .map(|j| {
            (-(c.max_period as f64).ln() * j as f64 / (half as f64 - c.shift as f64)).exp() as f32
        })
        .collect()
}

/// `[batch, dim]`; with `f32_arg` the argument is t * freq rounded to f32 as PyTorch forms it,
/// otherwise it is exact (to show what f32 arguments cost).
fn embedding_ref(c: &Config, batch: usize, t: f32, f32_arg: bool) -> Vec<f64> {
    let half = c.dim / 2;
    let f = freqs(c);
    let arg = |j: usize| {
        if f32_arg {
            (t * f[j]) as f64
        } else {
            t as f64 * f[j] as f64
        }
    };
    let row: Vec<f64> = (0..c.dim)
        .map(|col| {
            if col >= 2 * half {
                0.0
            } else if col < half {
                if c.flip {
                    arg(col).cos()
                } else {
                    arg(col).sin()
                }
            } else if c.flip {
                arg(col - half).sin()
            } else {
                arg(col - half).cos()
            }
        })
        .collect();
    row.repeat(batch)
}

const CONFIGS: [Config; 5] = [
    // The UNet's time_proj (flip_sin_to_cos=True, freq_shift=0).
    Config {
        dim: 128,
        flip: true,
        shift: 0.0,
        max_period: 10000.0,
    },
    Config {
        dim: 320,
        flip: false,
        shift: 1.0,
        max_period: 10000.0,
    },
    Config {
        dim: 7,
        flip: true,
        shift: 1.0,
        max_period: 10000.0,
    },
    Config {
        dim: 2,
        flip: false,
        shift: 0.0,
        max_period: 10000.0,
    },
    Config {
        dim: 33,
        flip: false,
        shift: 0.5,
        max_period: 100.0,
    },
];

#[test]
fn matches_diffusers_for_fixed_timesteps() {
    for c in &CONFIGS {
        for (batch, t) in [(1usize, 0.0f32), (2, 1.0), (3, 999.0), (1, 500.5)] {
            for (backend, ctx) in backends() {
                let mut g = Graph::new(ctx);
                let y = g
                    .timestep_embedding(batch, t, c.dim, c.flip, c.shift, c.max_period)
                    .unwrap();
                assert_eq!(g.dims(y), &[batch, c.dim]);
                let got = run(g, y);
                let name = format!(
                    "timestep dim {} flip {} shift {} period {} t {t} batch {batch} on {backend}",
                    c.dim, c.flip, c.shift, c.max_period
                );
                assert_close(&name, &got, &embedding_ref(c, batch, t, true), 1e-6);
                let exact = max_abs_err(&got, &embedding_ref(c, batch, t, false));
                println!("{name}: vs exact (f64) argument: max abs err {exact:.3e}");
                if c.dim % 2 == 1 {
                    assert!(got.chunks(c.dim).all(|row| row[c.dim - 1] == 0.0));
                }
            }
        }
    }
}

/// One graph, t changed between replays with `set_scalar`: every t in a sweep over [0, 1000]
/// (args up to 1000 rad) stays within 1e-6 of sin/cos of the f32 argument.
#[test]
fn timestep_changes_on_replay() {
    for (backend, ctx) in backends() {
        let c = &CONFIGS[1];
        let mut g = Graph::new(ctx);
        let t = g.scalar(0.0);
        let y = g
            .timestep_embedding(2, t, c.dim, c.flip, c.shift, c.max_period)
            .unwrap();
        g.output(y).unwrap();
        let mut exe = g.build().unwrap();
        let mut ts: Vec<f32> = vec![0.0, 1.0, 999.0, 500.5, 20.0, 981.0];
        ts.extend((0..40).map(|i| i as f32 * 24.97 + 0.3));
        let mut worst = 0.0f64;
        for &tv in &ts {
            exe.set_scalar(t, tv);
            exe.run().unwrap();
            let got = exe.read(y).unwrap();
            let err = max_abs_err(&got, &embedding_ref(c, 2, tv, true));
            assert!(err <= 1e-6, "t = {tv} on {backend}: max abs err {err:.3e}");
            worst = worst.max(err);
        }
        println!(
            "timestep replay over {} values of t on {backend}: max abs err {worst:.3e}",
            ts.len()
        );
        assert_eq!(exe.stats().runs, ts.len());
    }
}

#[test]
fn bad_dims_are_an_error_naming_the_op() {
    for (backend, ctx) in backends() {
        let mut g = Graph::new(ctx);
        for (batch, dim, shift) in [(0usize, 128usize, 0.0f32), (1, 1, 0.0), (1, 2, 1.0)] {
            let err = g
                .timestep_embedding(batch, 1.0, dim, false, shift, 10000.0)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("timestep_embedding") && err.contains(&format!("dim {dim}")),
                "{backend}: {err}"
            );
        }
    }
}
