//! The web build's tests: `bash web/test.sh` builds web/'s browser tests for wasm32 and runs them
//! in headless Chromium's WebGPU (the engine's kernels against CPU references, the tiny pipeline
//! against diffusers' goldens), then builds the page and drives it end to end. Needs chromium,
//! chromedriver, wasm-bindgen-test-runner, node and playwright-core (`scripts/setup.sh --tests`
//! installs them). Where they are missing the test fails under `CI=true`, and elsewhere says why
//! and returns.

use std::path::Path;
use std::process::Command;

/// web/test.sh's exit status when a tool is missing.
const TOOL_MISSING: i32 = 3;

#[test]
fn browser_tests_pass_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("web/test.sh"))
        .current_dir(root)
        .output()
        .expect("bash must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(TOOL_MISSING) {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
        assert!(!ci, "CI=true and the browser tooling is missing:\n{stderr}");
        eprintln!("browser tests not run, the tooling is missing:\n{stderr}");
        return;
    }
    // The per-test summaries (worst max relative error of each kernel test).
    for line in stdout.lines().filter(|l| l.contains("SUMMARY")) {
        println!("{line}");
    }
    assert!(
        out.status.success(),
        "web/test.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}
