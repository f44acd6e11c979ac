//! DPM-Solver++ 2M against diffusers' `DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)`
//! on the tiny model (`scripts/reference/make_dpm_reference.py`), with the config's own
//! `timestep_spacing` ("leading", as the fixture's file names it) and without one (DPM's default
//! "linspace", as the Hub checkpoints' files are); the goldens on the GPU (lavapipe here) and on the
//! CPU backend, the other tests on `model_ctx()`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use audioldm::checkpoint::Checkpoint;
use audioldm::engine::Context;
use audioldm::model::nn::Precision;
use audioldm::noise;
use audioldm::pipeline::ddim::DdimScheduler;
use audioldm::pipeline::dpm::DpmSolver;
use audioldm::pipeline::edit::{EditRequest, Mode};
use audioldm::pipeline::{Event, Pipeline, Request, SchedulerKind};
use common::{assert_close, cpu_ctx, ctx, f64s, fixtures, model_ctx};

fn goldens() -> Checkpoint {
    Checkpoint::open(&fixtures().join("tiny-dpm-goldens.safetensors")).expect("goldens")
}

/// The tiny model with its scheduler config edited: its other folders linked, not copied.
fn tiny_with_scheduler(case: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let tiny = fixtures().join("tiny");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("dpm")
        .join(case);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("scheduler")).unwrap();
    for entry in std::fs::read_dir(&tiny).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "scheduler" {
            std::os::unix::fs::symlink(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    let path = tiny.join("scheduler/scheduler_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(
        dir.join("scheduler/scheduler_config.json"),
        config.to_string(),
    )
    .unwrap();
    dir
}

fn request(steps: usize) -> Request {
    Request {
        prompt: "a dog barking in the rain, then thunder!".into(),
        negative_prompt: Some("low quality".into()),
        steps,
        guidance_scale: 2.5,
        duration_s: Some(1.0),
        seed: 7,
        scheduler: SchedulerKind::DpmSolverPlusPlus,
        ..Request::default()
    }
}

#[test]
fn dpm_solver_matches_diffusers_with_either_spacing_on_the_gpu() {
    dpm_solver_matches_diffusers_with_either_spacing(ctx());
}

#[test]
fn dpm_solver_matches_diffusers_with_either_spacing_on_the_cpu() {
    dpm_solver_matches_diffusers_with_either_spacing(cpu_ctx());
}

fn dpm_solver_matches_diffusers_with_either_spacing(ctx: &Context) {
    let backend = if ctx.is_cpu() { "cpu" } else { "gpu" };
    let goldens = goldens();
    // A folder per backend: the two tests run at once.
    let without_spacing = tiny_with_scheduler(&format!("linspace-{backend}"), |c| {
        c.as_object_mut().unwrap().remove("timestep_spacing");
    });
    for (spacing, dir) in [
        ("leading", fixtures().join("tiny")),
        ("linspace", without_spacing),
    ] {
        let schedule = DdimScheduler::load(&dir.join("scheduler")).unwrap();
        let dpm = DpmSolver::new(&schedule);
        assert_eq!(dpm.spacing(), spacing);
        let (_, want_t) = goldens.i64_any(&format!("{spacing}_timesteps")).unwrap();
        let got_t: Vec<i64> = dpm
            .timesteps(5)
            .unwrap()
            .iter()
            .map(|&t| t as i64)
            .collect();
        assert_eq!(got_t, want_t, "{spacing} timesteps");

        let pipeline = Pipeline::load(ctx, &dir, Precision::default()).expect("load");
        let mut steps = Vec::new();
        let out = pipeline
            .generate(&request(5), &AtomicBool::new(false), |e| {
                if let Event::Step { i, .. } = e {
                    steps.push(i);
                }
            })
            .expect("generate");
        assert_eq!(steps, [1, 2, 3, 4, 5]);
        let (shape, latents) = goldens.f32_any(&format!("{spacing}_latents")).unwrap();
        assert_eq!(out.latent_shape.to_vec(), shape);
        assert_close(
            &format!("{backend}: DPM-Solver++ ({spacing}) final latents"),
            &out.latents,
            &f64s(&latents),
            1e-4,
        );
        let (_, wave) = goldens.f32_any(&format!("{spacing}_waveform")).unwrap();
        assert_close(
            &format!("{backend}: DPM-Solver++ ({spacing}) waveform"),
            &out.audio.samples,
            &f64s(&wave),
            1e-3,
        );
        let settings: serde_json::Value =
            serde_json::from_str(&request(5).describe("tiny", 1.0)).unwrap();
        assert_eq!(settings["scheduler"], "DPM-Solver++ 2M");
    }
}

/// The step graph is shared by both schedulers: DDIM after DPM (and the other way round) on one
/// pipeline gives each one's own clip.
#[test]
fn schedulers_share_the_step_graph_without_leaking_state() {
    let pipeline =
        Pipeline::load(model_ctx(), &fixtures().join("tiny"), Precision::default()).expect("load");
    let cancel = AtomicBool::new(false);
    let ddim = Request {
        scheduler: SchedulerKind::Ddim,
        ..request(3)
    };
    let a = pipeline.generate(&ddim, &cancel, |_| {}).unwrap();
    let dpm = pipeline.generate(&request(5), &cancel, |_| {}).unwrap();
    let b = pipeline.generate(&ddim, &cancel, |_| {}).unwrap();
    let dpm_again = pipeline.generate(&request(5), &cancel, |_| {}).unwrap();
    assert_eq!(a.audio.samples, b.audio.samples);
    assert_eq!(dpm.audio.samples, dpm_again.audio.samples);
    assert_ne!(a.audio.samples, dpm.audio.samples);
}

#[test]
fn dpm_solver_refuses_what_it_does_not_do() {
    let pipeline =
        Pipeline::load(model_ctx(), &fixtures().join("tiny"), Precision::default()).expect("load");
    let cancel = AtomicBool::new(false);
    let with_eta = Request {
        eta: 0.5,
        ..request(3)
    };
    let err = pipeline
        .generate(&with_eta, &cancel, |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("eta is DDIM's"), "{err}");
    let edit = EditRequest {
        request: Request {
            duration_s: None,
            ..request(3)
        },
        source: audioldm::audio::Audio {
            sample_rate: 16_000,
            samples: noise::standard_normal(1, 8000),
        },
        source_name: "noise".into(),
        mode: Mode::StyleTransfer { strength: 0.5 },
    };
    let err = pipeline
        .edit(&edit, &cancel, |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("edits run DDIM"), "{err}");
    let unknown = SchedulerKind::parse("euler").unwrap_err().to_string();
    assert!(unknown.contains("ddim, dpm++"), "{unknown}");
    assert_eq!(
        SchedulerKind::parse("DPM++").unwrap(),
        SchedulerKind::DpmSolverPlusPlus
    );
}
