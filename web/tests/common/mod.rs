//! Shared by the browser tests: the page's GPU context, seeded inputs, graph runs and the error
//! measure of the native kernel tests (`max_rel_err`: the largest absolute difference over the
//! largest magnitude of the reference).
#![allow(dead_code)]

#[path = "../../../tests/common/real_tokenizer.rs"]
pub mod real_tokenizer;
#[path = "../../../tests/common/reference.rs"]
pub mod reference;

use std::cell::RefCell;

use audioldm::engine::{Context, DType, Graph, Tensor, Var};
use wasm_bindgen_test::console_log;

#[allow(unused_imports)]
pub use reference::{f16_round, max_rel_err};

/// The page's GPU context, made on first use. There is no skip: a browser without WebGPU fails.
pub async fn ctx() -> Context {
    thread_local! {
        static CTX: RefCell<Option<Context>> = const { RefCell::new(None) };
    }
    if let Some(ctx) = CTX.with_borrow(Clone::clone) {
        // In a browser, GPU errors arrive after the call that caused them and are reported by
        // the context's next check: take those a failed test left behind, so they are not
        // blamed on this one.
        let leftover = ctx.wait_async().await.and_then(|()| ctx.check());
        if let Err(e) = leftover {
            console_log!("GPU error left by an earlier test: {e}");
        }
        return ctx;
    }
    let ctx = audioldm_web::webgpu_context()
        .await
        .unwrap_or_else(|e| panic!("the browser tests need WebGPU: {e}"));
    let info = ctx.adapter_info();
    console_log!(
        "adapter: {:?} ({:?}, {:?}, driver {:?}), {:?}, max binding {} MiB",
        info.name,
        info.backend,
        info.device_type,
        info.driver,
        ctx.capabilities(),
        ctx.max_binding_bytes() >> 20
    );
    assert_eq!(
        info.backend,
        wgpu::Backend::BrowserWebGpu,
        "not the browser's WebGPU"
    );
    CTX.with_borrow_mut(|slot| *slot = Some(ctx.clone()));
    ctx
}

/// SplitMix64: a seeded generator with no dependency on the platform's randomness.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1), on a grid of 2^-23.
    pub fn uniform(&mut self) -> f32 {
        let bits = (self.next_u64() >> 40) as u32; // 24 bits
        bits as f32 / (1u32 << 23) as f32 - 1.0
    }
}

/// Uniform values in [-1, 1) from a fixed seed.
pub fn random(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.uniform()).collect()
}

/// `scale * u + offset` for seeded uniform `u` in [-1, 1).
pub fn shifted(seed: u64, len: usize, scale: f32, offset: f32) -> Vec<f32> {
    random(seed, len)
        .into_iter()
        .map(|v| v * scale + offset)
        .collect()
}

/// Checks one kernel test's cases and reports the worst error of them at the end.
pub struct Checks {
    test: &'static str,
    cases: usize,
    worst: f64,
    worst_case: String,
    start: f64,
}

impl Checks {
    pub fn new(test: &'static str) -> Self {
        Self {
            test,
            cases: 0,
            worst: 0.0,
            worst_case: String::new(),
            start: js_sys::Date::now(),
        }
    }

    /// Asserts `got` is within `tol` max relative error of `want`, logging the error either way.
    pub fn close(&mut self, name: &str, got: &[f32], want: &[f64], tol: f64) {
        let err = max_rel_err(got, want);
        console_log!("{name}: max rel err {err:.3e} (tol {tol:.0e})");
        assert!(err <= tol, "{name}: max rel err {err:.3e} > {tol:.0e}");
        self.cases += 1;
        if err >= self.worst {
            self.worst = err;
            self.worst_case = name.to_string();
        }
    }

    /// Logs the summary line: cases, worst max relative error and where, time taken.
    pub fn finish(self) {
        console_log!(
            "SUMMARY {}: {} cases, worst max rel err {:.3e} ({}), {:.1} s",
            self.test,
            self.cases,
            self.worst,
            self.worst_case,
            (js_sys::Date::now() - self.start) / 1e3
        );
    }
}

/// Uploads f32 data as a graph input.
pub fn input(g: &mut Graph, shape: &[usize], data: &[f32]) -> Var {
    let t = Tensor::from_f32(g.context(), shape, DType::F32, data).expect("upload");
    g.input(&t)
}

/// Uploads a weight tensor stored as `dtype`.
pub fn weight(g: &mut Graph, shape: &[usize], dtype: DType, data: &[f32]) -> Var {
    let t = Tensor::from_f32(g.context(), shape, dtype, data).expect("upload");
    g.weight(&t)
}

/// Builds the graph with `out` as its output, runs it once and reads `out` back.
pub async fn run(mut g: Graph, out: Var) -> Vec<f32> {
    g.output(out).expect("output");
    let mut exe = g.build().expect("build");
    exe.run_async().await.expect("run");
    exe.read_async(out).await.expect("read")
}

/// The URL of `path` on the test server: `web/test.sh` has wasm-bindgen's runner serve the
/// folder of test files it prepares (the tiny model under `tiny/`, the real tokenizer under
/// `real-tokenizer/`).
pub fn served_url(path: &str) -> String {
    let origin = web_sys::window()
        .expect("a browser window")
        .location()
        .origin()
        .expect("the page's origin");
    format!("{origin}/{path}")
}

/// The file at `path` on the test server, as a Blob.
pub async fn fetch_served(path: &str) -> web_sys::Blob {
    use wasm_bindgen::JsCast;
    use wasm_bindgen_futures::JsFuture;
    let url = served_url(path);
    let window = web_sys::window().expect("a browser window");
    let response: web_sys::Response = JsFuture::from(window.fetch_with_str(&url))
        .await
        .unwrap_or_else(|e| panic!("{url}: {e:?}"))
        .dyn_into()
        .expect("a Response");
    assert!(
        response.ok(),
        "{url}: {} (the test server serves the files web/test.sh prepares: run the browser \
         tests through it)",
        response.status()
    );
    JsFuture::from(response.blob().expect("a body"))
        .await
        .expect("the body")
        .dyn_into()
        .expect("a Blob")
}
