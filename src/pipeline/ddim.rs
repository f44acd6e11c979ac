//! `DDIMScheduler` as diffusers configures it for the AudioLDM checkpoints (`scheduling_ddim.py`):
//! the schedule, the inference timesteps, and each step's coefficients. The arithmetic of a step
//! runs on the GPU as part of the replayed graph; this file only computes its scalars.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

fn default_train_steps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_schedule() -> String {
    "linear".into()
}
fn default_true() -> bool {
    true
}
fn default_epsilon() -> String {
    "epsilon".into()
}
/// `scheduler/scheduler_config.json`, with diffusers' defaults for missing keys. (The AudioLDM
/// files predate `timestep_spacing`, so DDIM's default `"leading"` applies, and DPM-Solver's
/// `"linspace"`: see [`super::dpm`].)
#[derive(Clone, Debug, Deserialize)]
pub struct DdimConfig {
    #[serde(default = "default_train_steps")]
    pub num_train_timesteps: usize,
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    #[serde(default = "default_schedule")]
    pub beta_schedule: String,
    #[serde(default = "default_true")]
    pub clip_sample: bool,
    #[serde(default = "default_true")]
    pub set_alpha_to_one: bool,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default = "default_epsilon")]
    pub prediction_type: String,
    #[serde(default)]
    pub thresholding: bool,
    /// `None` when the file names none: each scheduler then takes its own default.
    #[serde(default)]
    pub timestep_spacing: Option<String>,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
}

/// The scalars of one DDIM step, for `x_prev = sqrt(a_prev) * x0 + sqrt(1 - a_prev - σ²) * ε + σ z`
/// with `x0 = (x - sqrt(1 - a_t) ε) / sqrt(a_t)` (all f32, as diffusers computes them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DdimStep {
    pub timestep: usize,
    pub sqrt_one_minus_alpha: f32,
    pub sqrt_alpha: f32,
    pub sqrt_alpha_prev: f32,
    pub direction: f32,
    pub sigma: f32,
}

impl DdimStep {
    /// The step as the step graph computes it.
    pub fn coefficients(&self) -> StepCoefficients {
        StepCoefficients {
            timestep: self.timestep,
            signal: self.sqrt_alpha,
            noise: self.sqrt_one_minus_alpha,
            x0_scale: 1.0 / self.sqrt_alpha,
            x0_eps: -self.sqrt_one_minus_alpha / self.sqrt_alpha,
            x: 0.0,
            clean: self.sqrt_alpha_prev,
            eps: self.direction,
            prev_clean: 0.0,
            sigma: self.sigma,
        }
    }
}

/// One denoising step as the replayed step graph computes it from the guided prediction `ε` at
/// `timestep`: `x0 = x0_scale x + x0_eps ε`, then
/// `x' = x * x + clean * x0 + eps * ε + prev_clean * x0_prev + sigma * z`, `x0_prev` being the
/// previous step's `x0` (a multistep solver's memory) and `z` fresh noise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCoefficients {
    pub timestep: usize,
    /// `(signal, noise)`: clean latents noised to this step's level are
    /// `signal * x0 + noise * e` (what masked edits hold the known region at).
    pub signal: f32,
    pub noise: f32,
    pub x0_scale: f32,
    pub x0_eps: f32,
    pub x: f32,
    pub clean: f32,
    pub eps: f32,
    pub prev_clean: f32,
    pub sigma: f32,
}

#[derive(Clone, Debug)]
pub struct DdimScheduler {
    pub config: DdimConfig,
    pub alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
}

impl DdimScheduler {
    pub fn load(dir: &Path) -> Result<Self> {
        let config: DdimConfig =
            crate::model::load_config_file(&dir.join("scheduler_config.json"))?;
        Self::new(config, dir)
    }

    pub fn new(config: DdimConfig, source: &Path) -> Result<Self> {
        let bad = |message: String| Error::Config {
            path: source.join("scheduler_config.json"),
            message,
        };
        let n = config.num_train_timesteps;
        let check = crate::model::ConfigCheck {
            path: &source.join("scheduler_config.json"),
        };
        check.range(
            "num_train_timesteps",
            n,
            1..=crate::model::limits::TIMESTEPS,
        )?;
        check.range("steps_offset", config.steps_offset, 0..=n - 1)?;
        if !(in_unit(config.beta_start) && in_unit(config.beta_end)) {
            return Err(bad(format!(
                "beta_start {} and beta_end {} must lie in [0, 1)",
                config.beta_start, config.beta_end
            )));
        }
        // diffusers would clamp x0 here; AudioLDM's configs turn both off.
        if config.clip_sample || config.thresholding {
            return Err(bad(
                "clip_sample and thresholding are not supported (AudioLDM turns both off)".into(),
            ));
        }
        if config.prediction_type != "epsilon" {
            return Err(bad(format!(
                "prediction_type {:?} is not supported (AudioLDM predicts epsilon)",
                config.prediction_type
            )));
        }
        let betas: Vec<f32> = match (&config.trained_betas, config.beta_schedule.as_str()) {
            (Some(betas), _) => betas.iter().map(|&b| b as f32).collect(),
            (None, "linear") => linspace(config.beta_start, config.beta_end, n),
            (None, "scaled_linear") => {
                linspace(config.beta_start.sqrt(), config.beta_end.sqrt(), n)
                    .iter()
                    .map(|b| b * b)
                    .collect()
            }
            (None, other) => return Err(bad(format!("beta_schedule {other:?} is not supported"))),
        };
        if betas.len() != n {
            return Err(bad(format!(
                "{} trained betas for {n} timesteps",
                betas.len()
            )));
        }
        if let Some(b) = betas.iter().find(|&&b| !in_unit(f64::from(b))) {
            return Err(bad(format!("trained beta {b} does not lie in [0, 1)")));
        }
        let mut alphas_cumprod = Vec::with_capacity(n);
        let mut product = 1.0f32;
        for beta in &betas {
            product *= 1.0 - beta;
            alphas_cumprod.push(product);
        }
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Self {
            config,
            alphas_cumprod,
            final_alpha_cumprod,
        })
    }

    /// The inference timesteps, first (noisiest) to last.
    pub fn timesteps(&self, steps: usize) -> Result<Vec<usize>> {
        let n = self.config.num_train_timesteps;
        if steps == 0 || steps > n {
            return Err(Error::Input(format!(
                "the number of steps must be between 1 and {n}, got {steps}"
            )));
        }
        let offset = self.config.steps_offset;
        let spacing = self.config.timestep_spacing.as_deref().unwrap_or("leading");
        let mut t: Vec<usize> = match spacing {
            "leading" => (0..steps).map(|i| i * (n / steps) + offset).collect(),
            "linspace" => (0..steps)
                .map(|i| (i as f64 * (n - 1) as f64 / (steps - 1).max(1) as f64).round() as usize)
                .collect(),
            "trailing" => {
                let ratio = n as f64 / steps as f64;
                (1..=steps)
                    .map(|i| ((i as f64 * ratio).round() as usize).saturating_sub(1))
                    .collect()
            }
            other => {
                return Err(Error::Input(format!(
                    "timestep_spacing {other:?} is not supported"
                )));
            }
        };
        if let Some(&last) = t.last()
            && last >= n
        {
            return Err(Error::Input(format!(
                "{steps} steps with steps_offset {offset} and timestep_spacing {spacing:?} reach \
                 timestep {last}, past the {n} the schedule was trained on"
            )));
        }
        t.reverse();
        Ok(t)
    }

    /// `(sqrt(ᾱ_t), sqrt(1 - ᾱ_t))`, with which diffusers' `add_noise` takes clean latents to
    /// the noise level of `timestep`; `None` past the end of the training schedule.
    pub fn noise_scales(&self, timestep: usize) -> Option<(f32, f32)> {
        let alpha = *self.alphas_cumprod.get(timestep)?;
        Some((alpha.sqrt(), (1.0 - alpha).sqrt()))
    }

    /// The scalars of the step at `timestep` when running `steps` steps with `eta`.
    pub fn step(&self, timestep: usize, steps: usize, eta: f32) -> DdimStep {
        let n = self.config.num_train_timesteps;
        let prev = timestep as isize - (n / steps) as isize;
        let alpha = self.alphas_cumprod[timestep.min(n - 1)];
        let alpha_prev = if prev >= 0 {
            // `timesteps` never yields a step past the schedule; clamped all the same.
            self.alphas_cumprod[(prev as usize).min(n - 1)]
        } else {
            self.final_alpha_cumprod
        };
        let beta = 1.0 - alpha;
        let beta_prev = 1.0 - alpha_prev;
        let variance = (beta_prev / beta) * (1.0 - alpha / alpha_prev);
        let sigma = eta * variance.sqrt();
        DdimStep {
            timestep,
            sqrt_one_minus_alpha: beta.sqrt(),
            sqrt_alpha: alpha.sqrt(),
            sqrt_alpha_prev: alpha_prev.sqrt(),
            direction: (1.0 - alpha_prev - sigma * sigma).sqrt(),
            sigma,
        }
    }
}

/// Whether `beta` is a usable noise variance: finite, in [0, 1).
fn in_unit(beta: f64) -> bool {
    beta.is_finite() && (0.0..1.0).contains(&beta)
}

/// `torch.linspace(start, end, n, dtype=float32)`: computed in f64, rounded once.
fn linspace(start: f64, end: f64, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start as f32];
    }
    let step = (end - start) / (n - 1) as f64;
    (0..n).map(|i| (start + step * i as f64) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audioldm() -> DdimScheduler {
        let config: DdimConfig = serde_json::from_str(
            r#"{"_class_name": "DDIMScheduler", "beta_end": 0.0195, "beta_schedule": "scaled_linear",
                "beta_start": 0.0015, "clip_sample": false, "num_train_timesteps": 1000,
                "prediction_type": "epsilon", "set_alpha_to_one": false, "steps_offset": 1,
                "trained_betas": null, "unknown_future_key": 3}"#,
        )
        .unwrap();
        DdimScheduler::new(config, Path::new("test")).unwrap()
    }

    /// Values diffusers' `DDIMScheduler` (`schedulers/scheduling_ddim.py`) computes.
    #[test]
    fn schedule_matches_diffusers() {
        let s = audioldm();
        for (t, want) in [
            (0, 0.99849999f64),
            (1, 0.99699444),
            (2, 0.99548328),
            (500, 0.11492198),
            (999, 0.00014230386),
        ] {
            let got = f64::from(s.alphas_cumprod[t]);
            assert!(
                ((got - want) / want).abs() < 2e-6,
                "alpha_cumprod[{t}] = {got}, want {want}"
            );
        }
    }

    #[test]
    fn leading_timesteps_match_diffusers() {
        let s = audioldm();
        assert_eq!(
            s.timesteps(10).unwrap(),
            vec![901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
        );
        let t25 = s.timesteps(25).unwrap();
        assert_eq!((t25[0], t25[1], t25[23], t25[24]), (961, 921, 41, 1));
        let t200 = s.timesteps(200).unwrap();
        assert_eq!((t200[0], t200[1], t200[198], t200[199]), (996, 991, 6, 1));
        assert_eq!(s.timesteps(3).unwrap(), vec![667, 334, 1]);
        assert!(s.timesteps(0).is_err());
        assert!(s.timesteps(1001).is_err());
    }

    #[test]
    fn last_step_lands_on_the_first_alpha_and_eta_zero_has_no_noise() {
        let s = audioldm();
        let step = s.step(1, 10, 0.0);
        assert_eq!(step.sigma, 0.0);
        assert_eq!(step.sqrt_alpha_prev, s.alphas_cumprod[0].sqrt());
        let noisy = s.step(501, 10, 1.0);
        assert!(noisy.sigma > 0.0 && noisy.direction > 0.0);
    }
}
