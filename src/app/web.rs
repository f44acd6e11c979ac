//! The app in a browser page: eframe's web runner on the page's canvas, drawing with WebGPU, and
//! the engine on the renderer's device as on the desktop. The page (web/) checks for WebGPU
//! before it loads this.

use eframe::egui_wgpu::WgpuConfiguration;
use wasm_bindgen::JsCast;

use super::{AppOptions, AudioLdmApp, wgpu_setup};

// Points are CSS pixels: eframe's web runner sets egui's scale to the page's device pixel ratio.

thread_local! {
    /// The running app (it stops when its runner is dropped).
    static RUNNER: std::cell::RefCell<Option<eframe::WebRunner>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs the app on `canvas` until the page closes (a second call replaces the first).
pub async fn start(canvas: web_sys::HtmlCanvasElement, options: AppOptions) -> Result<(), String> {
    let web_options = eframe::WebOptions {
        renderer: eframe::Renderer::Wgpu,
        wgpu_options: WgpuConfiguration {
            wgpu_setup: wgpu_setup(&options.limits),
            ..Default::default()
        },
        ..Default::default()
    };
    let runner = eframe::WebRunner::new();
    runner
        .start(
            canvas,
            web_options,
            Box::new(move |cc| Ok(Box::new(AudioLdmApp::new(cc, options)))),
        )
        .await
        .map_err(|e| {
            let detail = e
                .as_string()
                .or_else(|| {
                    e.dyn_ref::<js_sys::Error>()
                        .map(|e| String::from(e.message()))
                })
                .unwrap_or_else(|| format!("{e:?}"));
            format!(
                "the app could not start WebGPU drawing ({detail}). It needs a browser with \
                 WebGPU: Chrome or Edge 113+, Safari 26+, Firefox 141+ on Windows"
            )
        })?;
    RUNNER.with(|r| *r.borrow_mut() = Some(runner));
    Ok(())
}

/// Offers `bytes` to the user as a download named `name` (a link to a Blob, clicked).
pub fn download(name: &str, bytes: &[u8], mime: &str) -> Result<(), String> {
    let fail = |what: &str| format!("the browser refused the download ({what})");
    let parts = js_sys::Array::new();
    parts.push(&js_sys::Uint8Array::from(bytes));
    let options = web_sys::BlobPropertyBag::new();
    options.set_type(mime);
    let blob = web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &options)
        .map_err(|_| fail("blob"))?;
    let url = web_sys::Url::create_object_url_with_blob(&blob).map_err(|_| fail("url"))?;
    let document = web_sys::window()
        .and_then(|w| w.document())
        .ok_or_else(|| fail("no document"))?;
    let link: web_sys::HtmlAnchorElement = document
        .create_element("a")
        .map_err(|_| fail("link"))?
        .dyn_into()
        .map_err(|_| fail("link"))?;
    link.set_href(&url);
    link.set_download(name);
    link.click();
    // The click has started the download; the URL can go.
    let _ = web_sys::Url::revoke_object_url(&url);
    Ok(())
}

/// Runs `f` on the running app; `None` before [`start`] or after the app panicked.
pub fn with_app<R>(f: impl FnOnce(&mut AudioLdmApp) -> R) -> Option<R> {
    RUNNER.with(|r| {
        let runner = r.borrow();
        let mut app = runner.as_ref()?.app_mut::<AudioLdmApp>()?;
        Some(f(&mut app))
    })
}

/// What the app shows, as JSON, for a script on the page (the end-to-end test reads it): the
/// phase of a running generation, the messages, the history, how many spectrogram frames are
/// shown, and where the main controls are (CSS pixels, as `[x, y, width, height]`).
pub fn state_json() -> Option<String> {
    with_app(|app| {
        let controls: serde_json::Map<String, serde_json::Value> = ["Prompt", "Generate"]
            .into_iter()
            .filter_map(|label| {
                let r = app.control_rect(label)?;
                Some((
                    label.to_string(),
                    serde_json::json!([r.min.x, r.min.y, r.width(), r.height()]),
                ))
            })
            .collect();
        serde_json::json!({
            "running": app.is_running(),
            "phase": app.phase().map(|p| format!("{p:?}")),
            "messages": app.messages().iter().map(|m| m.text.clone()).collect::<Vec<_>>(),
            "history": app.history(),
            "shown_frames": app.shown_frames(),
            "controls": controls,
        })
        .to_string()
    })
}
