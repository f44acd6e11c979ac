//! The page's entry: the desktop app's code on the page's canvas (eframe's web runner), the
//! engine on the renderer's WebGPU device, or on the CPU backend where the browser has no WebGPU
//! (the app then draws with WebGL2). `web/index.html` calls [`start`].

use audioldm::app::AppOptions;
use audioldm::app::state::{DURATION_RANGE, STEPS_RANGE};
use audioldm::model::nn::Precision;
use wasm_bindgen::prelude::*;

/// Starts the app on `canvas`. From the page's address: `model` (`?model=`, a Hugging Face repo
/// id or a URL folder in diffusers layout) replaces the model chosen last, and `steps` and
/// `duration` (`?steps=`, `?duration=` in seconds) the settings, within the sliders' ranges.
/// Weights are stored in f16, on the GPU or in the CPU backend's memory: half the memory of f32,
/// which a browser tab needs.
#[wasm_bindgen]
pub async fn start(
    canvas: web_sys::HtmlCanvasElement,
    model: Option<String>,
    steps: Option<u32>,
    duration: Option<f64>,
) -> Result<(), JsValue> {
    crate::install_panic_hook();
    let options = AppOptions {
        model: model.filter(|m| !m.trim().is_empty()),
        precision: Precision::weights_f16(true),
        ..AppOptions::default()
    };
    audioldm::app::web::start(canvas, options)
        .await
        .map_err(|e| JsValue::from_str(&e))?;
    audioldm::app::web::with_app(|app| {
        let settings = app.settings_mut();
        if let Some(steps) = steps {
            settings.steps = (steps as usize).clamp(*STEPS_RANGE.start(), *STEPS_RANGE.end());
        }
        if let Some(duration) = duration.filter(|d| d.is_finite()) {
            settings.duration_s = duration.clamp(*DURATION_RANGE.start(), *DURATION_RANGE.end());
        }
    });
    Ok(())
}

/// The app's state as JSON (see `audioldm::app::web::state_json`); `undefined` before `start`.
#[wasm_bindgen]
pub fn app_state() -> Option<String> {
    audioldm::app::web::state_json()
}

/// Saves history entry `id` as the app's "Save as WAV" does: a download.
#[wasm_bindgen]
pub fn save_clip(id: f64) -> bool {
    audioldm::app::web::with_app(|app| app.save_as(id as u64)).is_some()
}
