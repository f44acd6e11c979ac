//! DPM-Solver++ 2M, as diffusers' `DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)`
//! runs it on the AudioLDM checkpoints (`schedulers/scheduling_dpmsolver_multistep.py`):
//! `dpmsolver++`, order 2, midpoint, `lower_order_final`, final sigma zero, epsilon prediction,
//! no thresholding. Like DDIM, a step is `x' = a x + b x0 + c ε + d x0_prev` on the GPU; this file computes the
//! scalars, in f32 as diffusers does (its sigma table is f32).
//!
//! The timestep spacing is the scheduler config's `timestep_spacing` when the file names one
//! (configs saved by recent diffusers do), and DPM's own default `"linspace"` when it names none
//! (the Hub checkpoints' configs): diffusers drops a key the file did not set when it builds
//! another scheduler class from the config.

use super::ddim::{DdimScheduler, StepCoefficients};
use crate::error::{Error, Result};

/// DPM-Solver++ (2M) over the schedule of a [`DdimScheduler`] (the same betas).
#[derive(Clone, Debug)]
pub struct DpmSolver {
    /// `sqrt((1 - ᾱ) / ᾱ)` per training timestep, in f32.
    sigmas: Vec<f32>,
    train_steps: usize,
    steps_offset: usize,
    spacing: String,
}

impl DpmSolver {
    pub fn new(schedule: &DdimScheduler) -> Self {
        Self {
            sigmas: schedule
                .alphas_cumprod
                .iter()
                .map(|&a| ((1.0 - a) / a).sqrt())
                .collect(),
            train_steps: schedule.config.num_train_timesteps,
            steps_offset: schedule.config.steps_offset,
            spacing: schedule
                .config
                .timestep_spacing
                .clone()
                .unwrap_or_else(|| "linspace".into()),
        }
    }

    /// The timestep spacing in use.
    pub fn spacing(&self) -> &str {
        &self.spacing
    }

    /// The inference timesteps, first (noisiest) to last.
    pub fn timesteps(&self, steps: usize) -> Result<Vec<usize>> {
        let n = self.train_steps;
        if steps == 0 || steps > n {
            return Err(Error::Input(format!(
                "the number of steps must be between 1 and {n}, got {steps}"
            )));
        }
        // `lambda_min_clipped` is -inf: no timestep is clipped, the last is `n`.
        let t: Vec<usize> = match self.spacing.as_str() {
            // `np.linspace(0, n - 1, steps + 1)` (i * step, the end exact), rounded half to even.
            "linspace" => {
                let step = (n - 1) as f64 / steps as f64;
                (1..=steps)
                    .rev()
                    .map(|i| match i == steps {
                        true => n - 1,
                        false => (i as f64 * step).round_ties_even() as usize,
                    })
                    .collect()
            }
            "leading" => {
                let ratio = n / (steps + 1);
                (1..=steps)
                    .rev()
                    .map(|i| i * ratio + self.steps_offset)
                    .collect()
            }
            "trailing" => {
                let ratio = n as f64 / steps as f64;
                (0..steps)
                    .map(|i| ((n as f64 - i as f64 * ratio).round_ties_even() as usize) - 1)
                    .collect()
            }
            other => {
                return Err(Error::Input(format!(
                    "timestep_spacing {other:?} is not supported"
                )));
            }
        };
        if let Some(&first) = t.first()
            && first >= n
        {
            return Err(Error::Input(format!(
                "{steps} steps with steps_offset {} and timestep_spacing {:?} reach timestep \
                 {first}, past the {n} the schedule was trained on",
                self.steps_offset, self.spacing
            )));
        }
        Ok(t)
    }

    /// The scalars of every step of a `steps`-step run, in order.
    pub fn plan(&self, steps: usize) -> Result<Vec<StepCoefficients>> {
        let timesteps = self.timesteps(steps)?;
        // `np.interp` at integer timesteps is the table itself; the final sigma is zero.
        let mut sigmas: Vec<f32> = timesteps.iter().map(|&t| self.sigmas[t]).collect();
        sigmas.push(0.0);
        let alpha_sigma = |sigma: f32| {
            let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
            (alpha, sigma * alpha)
        };
        let lambda = |(alpha, sigma): (f32, f32)| alpha.ln() - sigma.ln();
        let count = timesteps.len();
        Ok(timesteps
            .iter()
            .enumerate()
            .map(|(i, &timestep)| {
                let (alpha_s, sigma_s) = alpha_sigma(sigmas[i]);
                let (alpha_t, sigma_t) = alpha_sigma(sigmas[i + 1]);
                let h = lambda((alpha_t, sigma_t)) - lambda((alpha_s, sigma_s));
                let phi = alpha_t * ((-h).exp() - 1.0);
                // First order on the first step and on the last (final sigma zero).
                let (clean, prev_clean) = if i == 0 || i == count - 1 {
                    (-phi, 0.0)
                } else {
                    let h0 = lambda((alpha_s, sigma_s)) - lambda(alpha_sigma(sigmas[i - 1]));
                    let r0 = h0 / h;
                    // x' = (σt/σs) x − φ D0 − φ/2 D1 with D1 = (m0 − m1) / r0.
                    (-phi - 0.5 * phi / r0, 0.5 * phi / r0)
                };
                StepCoefficients {
                    timestep,
                    signal: alpha_s,
                    noise: sigma_s,
                    x0_scale: 1.0 / alpha_s,
                    x0_eps: -sigma_s / alpha_s,
                    x: sigma_t / sigma_s,
                    clean,
                    eps: 0.0,
                    prev_clean,
                    sigma: 0.0,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::ddim::DdimConfig;
    use std::path::Path;

    fn audioldm(spacing: Option<&str>) -> DpmSolver {
        let mut config: DdimConfig = serde_json::from_str(
            r#"{"beta_end": 0.0195, "beta_schedule": "scaled_linear", "beta_start": 0.0015,
                "clip_sample": false, "num_train_timesteps": 1000, "set_alpha_to_one": false,
                "steps_offset": 1}"#,
        )
        .unwrap();
        config.timestep_spacing = spacing.map(str::to_string);
        DpmSolver::new(&DdimScheduler::new(config, Path::new("test")).unwrap())
    }

    /// The real scheduler config names no `timestep_spacing`, so DPM's default linspace applies.
    #[test]
    fn linspace_timesteps_and_sigmas_match_diffusers() {
        let dpm = audioldm(None);
        assert_eq!(dpm.spacing(), "linspace");
        assert_eq!(
            dpm.timesteps(10).unwrap(),
            [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
        );
        let t20 = dpm.timesteps(20).unwrap();
        assert_eq!(
            (t20[0], t20[1], t20[2], t20[18], t20[19]),
            (999, 949, 899, 100, 50)
        );
        let t25 = dpm.timesteps(25).unwrap();
        assert_eq!((t25[0], t25[1], t25[23], t25[24]), (999, 959, 80, 40));
        for (t, want) in [(999, 83.82253f32), (899, 33.55335), (799, 15.32387)] {
            let got = dpm.sigmas[t];
            assert!(
                (got - want).abs() / want < 1e-6,
                "sigma({t}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn leading_and_trailing_timesteps_match_diffusers() {
        // 1000 // 11 = 90: 900, 810, ..., 90, plus steps_offset 1.
        assert_eq!(
            audioldm(Some("leading")).timesteps(10).unwrap(),
            [901, 811, 721, 631, 541, 451, 361, 271, 181, 91]
        );
        assert_eq!(
            audioldm(Some("trailing")).timesteps(4).unwrap(),
            [999, 749, 499, 249]
        );
        assert!(audioldm(Some("karras")).timesteps(4).is_err());
    }

    #[test]
    fn the_last_step_returns_the_clean_estimate() {
        let plan = audioldm(None).plan(5).unwrap();
        let last = plan.last().unwrap();
        assert_eq!((last.x, last.clean, last.prev_clean), (0.0, 1.0, 0.0));
        assert_eq!(plan[0].prev_clean, 0.0, "the first step is first order");
        assert!(
            plan[1].prev_clean != 0.0,
            "the middle steps are second order"
        );
        let one = audioldm(None).plan(1).unwrap();
        assert_eq!((one[0].x, one[0].clean), (0.0, 1.0));
    }
}
