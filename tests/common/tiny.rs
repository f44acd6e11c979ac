//! The request the tiny model's goldens were made with (`scripts/reference/make_reference.py`):
//! a 3-step DDIM run with guidance 2.5 and a negative prompt from injected initial latents.
//! Shared by the native tests and the browser's (`web/tests/pipeline.rs`).

pub fn tiny_request_from(init_latents: Vec<f32>) -> audioldm::pipeline::Request {
    audioldm::pipeline::Request {
        prompt: "a dog barking in the rain, then thunder!".into(),
        negative_prompt: Some(
            "low quality, noisy, distorted, muffled, clipping, hum, static, silence, wind, crowd \
             talking, music"
                .into(),
        ),
        steps: 3,
        guidance_scale: 2.5,
        duration_s: Some(1.0),
        seed: 0,
        eta: 0.0,
        init_latents: Some(init_latents),
        conditioning: None,
        scheduler: audioldm::pipeline::SchedulerKind::Ddim,
    }
}

/// What a run of [`tiny_request_from`] is checked on: each output against its golden (by name in
/// `tiny-goldens.safetensors`) within a max relative error.
pub fn tiny_checks(
    out: &audioldm::pipeline::Output,
) -> [(&'static str, &[f32], &'static str, f64); 4] {
    [
        (
            "pipeline text_embeds",
            &out.text_embeds,
            "text_embeds",
            1e-4,
        ),
        (
            "pipeline final latents",
            &out.latents,
            "run_final_latents",
            1e-4,
        ),
        ("pipeline mel", &out.mel.data, "run_mel", 1e-4),
        (
            "pipeline waveform",
            &out.audio.samples,
            "run_waveform",
            1e-3,
        ),
    ]
}
