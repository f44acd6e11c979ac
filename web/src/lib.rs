//! AudioLDM in the browser: the engine on the page's WebGPU, built for `wasm32-unknown-unknown`.
//!
//! For now this is the GPU context a page starts from; the app entry comes later. Its tests
//! (`web/tests/`) run the engine's kernels in headless Chromium: `bash web/test.sh`.

use std::fmt;

use audioldm::engine::{Context, GpuError, LimitsProfile};

/// Why a page got no GPU context.
#[derive(Debug)]
pub enum WebGpuError {
    /// `navigator.gpu` is missing: the browser has no WebGPU, has it switched off, or the page is
    /// not a secure context (https or localhost).
    Unavailable,
    /// WebGPU is there but offered no adapter (a blocked or missing GPU driver).
    NoAdapter(String),
    /// The adapter refused the device the engine asks for.
    Device(String),
}

impl fmt::Display for WebGpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable => f.write_str(
                "this browser does not offer WebGPU (navigator.gpu is missing): open the page in a \
                 browser with WebGPU, such as Chrome or Edge 113 or later, Safari 26 or later, or \
                 Firefox 141 or later on Windows, served over https or from localhost",
            ),
            Self::NoAdapter(detail) => write!(
                f,
                "the browser's WebGPU offered no GPU adapter ({detail}): its GPU may be blocked \
                 (see chrome://gpu), or WebGPU switched off"
            ),
            Self::Device(detail) => write!(f, "the browser's GPU refused a device: {detail}"),
        }
    }
}

impl std::error::Error for WebGpuError {}

/// Whether the page (or worker) has `navigator.gpu`.
pub fn has_webgpu() -> bool {
    let global = js_sys::global();
    let navigator = js_sys::Reflect::get(&global, &"navigator".into()).unwrap_or_default();
    if navigator.is_undefined() || navigator.is_null() {
        return false;
    }
    js_sys::Reflect::get(&navigator, &"gpu".into())
        .is_ok_and(|gpu| !gpu.is_undefined() && !gpu.is_null())
}

/// The engine's context on the browser's WebGPU, with everything the adapter offers.
pub async fn webgpu_context() -> Result<Context, WebGpuError> {
    webgpu_context_with_limits(LimitsProfile::Adapter).await
}

/// The engine's context on the browser's WebGPU with the limits of `profile`. Only WebGPU: a
/// WebGL2 adapter has no compute shaders, so its absence is an error, never a fallback.
pub async fn webgpu_context_with_limits(profile: LimitsProfile) -> Result<Context, WebGpuError> {
    if !has_webgpu() {
        return Err(WebGpuError::Unavailable);
    }
    Context::with_limits(profile).await.map_err(|e| match e {
        GpuError::NoAdapter(detail) => WebGpuError::NoAdapter(detail),
        other => WebGpuError::Device(other.to_string()),
    })
}

/// Sends panics to the browser console (`console.error`) with their message and location.
pub fn install_panic_hook() {
    console_error_panic_hook::set_once();
}

mod app;
pub use app::start;
