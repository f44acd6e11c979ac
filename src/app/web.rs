//! The app in a browser page: eframe's web runner on the page's canvas, drawing with WebGPU, and
//! the engine on the renderer's device as on the desktop. Where the browser has no WebGPU the
//! app draws with WebGL2 and the networks run on the CPU backend, compiled to WebAssembly: the
//! slow path, which the app says when it starts.

use std::path::PathBuf;

use eframe::egui_wgpu::WgpuConfiguration;
use wasm_bindgen::JsCast;

use super::{AppOptions, AudioLdmApp, wgpu_setup};

// Points are CSS pixels: eframe's web runner sets egui's scale to the page's device pixel ratio.

thread_local! {
    /// The running app (it stops when its runner is dropped).
    static RUNNER: std::cell::RefCell<Option<eframe::WebRunner>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs the app on `canvas` until the page closes (a second call replaces the first). The clips
/// of earlier visits come back from the browser's storage first, where the history finds them.
pub async fn start(
    canvas: web_sys::HtmlCanvasElement,
    mut options: AppOptions,
) -> Result<(), String> {
    let data_dir = options
        .data_dir
        .take()
        .unwrap_or_else(super::default_data_dir);
    // Without storage the app still runs; its clips then last as long as the page.
    let kept = crate::mounted::persist(&data_dir).await;
    if let Err(e) = &kept {
        tracing::warn!("earlier clips are not available: {e}");
    }
    options.data_dir = Some(data_dir);
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
                "the app could not start drawing ({detail}). It needs a browser with WebGPU \
                 (Chrome or Edge 113+, Safari 26+, Firefox 141+ on Windows) or at least WebGL2"
            )
        })?;
    RUNNER.with(|r| *r.borrow_mut() = Some(runner));
    Ok(())
}

/// Asks the user for a model folder (a file input with `webkitdirectory`) and mounts the files
/// the pipeline needs under [`crate::hub::web::LOCAL_ROOT`]; `done` hears the folder to load the
/// model from, or why not. Nothing is heard when the user cancels.
pub fn pick_folder(done: impl FnOnce(Result<PathBuf, String>) + 'static) -> Result<(), String> {
    let fail = |what: &str| format!("the browser offered no folder picker ({what})");
    let input: web_sys::HtmlInputElement = create_element("input").map_err(|e| fail(&e))?;
    input.set_type("file");
    input.set_webkitdirectory(true);
    let picked = input.clone();
    let on_change = wasm_bindgen::closure::Closure::once_into_js(move || {
        wasm_bindgen_futures::spawn_local(async move {
            done(mount_picked(&picked).await.map_err(|e| e.to_string()));
        });
    });
    input.set_onchange(Some(on_change.unchecked_ref()));
    input.click();
    Ok(())
}

/// Mounts the folder chosen in `input` (each file's `webkitRelativePath` starts with the
/// folder's name).
async fn mount_picked(input: &web_sys::HtmlInputElement) -> crate::Result<PathBuf> {
    let list = input
        .files()
        .ok_or_else(|| crate::Error::Input("no folder was picked".into()))?;
    let mut name = None;
    let mut files = Vec::new();
    for index in 0..list.length() {
        let Some(file) = list.get(index) else {
            continue;
        };
        // web-sys has no binding for it.
        let relative = js_sys::Reflect::get(&file, &"webkitRelativePath".into())
            .ok()
            .and_then(|p| p.as_string())
            .unwrap_or_default();
        let Some((folder, path)) = relative.split_once('/') else {
            continue;
        };
        name.get_or_insert_with(|| folder.to_string());
        files.push((path.to_string(), web_sys::Blob::from(file)));
    }
    let name = name.ok_or_else(|| crate::Error::Input("the picked folder is empty".into()))?;
    crate::hub::web::mount_folder(&name, files).await
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
    let link: web_sys::HtmlAnchorElement = create_element("a").map_err(|e| fail(&e))?;
    link.set_href(&url);
    link.set_download(name);
    link.click();
    // The click has started the download; the URL can go.
    let _ = web_sys::Url::revoke_object_url(&url);
    Ok(())
}

/// A new element `<tag>` of the page's document (not yet in it).
fn create_element<T: JsCast>(tag: &str) -> Result<T, String> {
    web_sys::window()
        .and_then(|w| w.document())
        .ok_or("no document")?
        .create_element(tag)
        .map_err(|_| format!("no <{tag}>"))?
        .dyn_into()
        .map_err(|_| format!("no <{tag}>"))
}

/// Runs `f` on the running app, then has it drawn again; `None` before [`start`] or after the
/// app panicked.
pub fn with_app<R>(f: impl FnOnce(&mut AudioLdmApp) -> R) -> Option<R> {
    reading_app(|app| {
        let result = f(app);
        app.egui_ctx.request_repaint();
        result
    })
}

/// Runs `f` on the running app without drawing it again (for what only reads it).
fn reading_app<R>(f: impl FnOnce(&mut AudioLdmApp) -> R) -> Option<R> {
    RUNNER.with(|r| {
        let runner = r.borrow();
        let mut app = runner.as_ref()?.app_mut::<AudioLdmApp>()?;
        Some(f(&mut app))
    })
}

/// What the app shows, as JSON, for a script on the page (the end-to-end test reads it): the
/// phase of a running generation, the messages, the history, the model and what the app says of
/// it, what runs the networks (the status line's backend), the clip playing, the input clip, how
/// many spectrogram frames are shown, and where the main controls are (CSS pixels, as
/// `[x, y, width, height]`).
pub fn state_json() -> Option<String> {
    reading_app(|app| {
        let labels = ["Prompt", "Generate", "Folder…", "Play", "Generate edit"];
        let controls: serde_json::Map<String, serde_json::Value> = labels
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
            "model": app.settings_mut().model.clone(),
            "model_status": app.model_status(),
            "backend": app.backend_status(),
            "playing": app.playing(),
            "input": app.input_clip().map(|clip| serde_json::json!({
                "name": clip.name,
                "duration_s": clip.audio.duration_s(),
            })),
            "shown_frames": app.shown_frames(),
            "controls": controls,
        })
        .to_string()
    })
}
