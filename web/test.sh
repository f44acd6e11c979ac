#!/usr/bin/env bash
# The browser tests: builds web/'s tests for wasm32 and runs them in headless Chromium's WebGPU
# (its SwiftShader adapter on a machine without a GPU) through wasm-bindgen-test-runner and
# chromedriver; then builds the page and runs the end-to-end test (web/e2e/run.mjs, playwright-core)
# on it. The browser tests fetch the tiny model and the real tokenizer over HTTP from the runner's
# server (web/test-runner.sh). Arguments go to the test harness (a name filter, for instance).
#
# Exit status: 0 when every test passed, 1 when the build or a test failed, 3 when a tool is
# missing (chromium, chromedriver, wasm-bindgen-test-runner at the wasm-bindgen crate's exact
# version, node, playwright-core; `bash scripts/setup.sh --tests` installs them). A missing tool
# is never a pass.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

missing() {
    echo "web/test.sh: $1 (bash scripts/setup.sh --tests installs it)" >&2
    exit 3
}

# The wasm-bindgen version Cargo.lock holds: the runner must be the same release.
want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[ -n "$want" ] || { echo "web/test.sh: no wasm-bindgen in Cargo.lock" >&2; exit 1; }
command -v wasm-bindgen-test-runner >/dev/null ||
    missing "wasm-bindgen-test-runner is not on PATH (cargo install wasm-bindgen-cli --version $want)"
have=$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{ print $2 }')
[ "$have" = "$want" ] ||
    missing "wasm-bindgen-test-runner is version ${have:-unknown}, the wasm-bindgen crate $want"

if [ -n "${CHROMEDRIVER:-}" ]; then
    [ -x "$CHROMEDRIVER" ] || missing "CHROMEDRIVER=$CHROMEDRIVER is not an executable"
else
    CHROMEDRIVER=$(command -v chromedriver) ||
        missing "chromedriver is not on PATH (Debian: chromium-driver)"
fi
command -v chromium >/dev/null || command -v chromium-browser >/dev/null ||
    command -v google-chrome >/dev/null || missing "no chromium on PATH (Debian: chromium)"
export CHROMEDRIVER

# Flags for Chromium (WebGPU on SwiftShader, headless), the whole run's time limit (SwiftShader
# compiles every pipeline on the CPU), and a target dir of its own so that this build never
# waits for the lock of a `cargo test` running at the root.
export WASM_BINDGEN_TEST_WEBDRIVER_JSON="$root/web/webdriver.json"
export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-900}"
export CARGO_TARGET_DIR="$root/target/web-tests"
cargo="${CARGO:-cargo}"

command -v node >/dev/null || missing "node is not on PATH (Debian: nodejs)"
[ -d "$root/web/e2e/node_modules/playwright-core" ] ||
    missing "playwright-core is not installed (npm ci --prefix web/e2e)"

# The files the tests fetch over HTTP (the runner serves them, see web/test-runner.sh): the tiny
# model and the real tokenizer of cvssp/audioldm-s-full-v2 (both test fixtures), copied under
# target/ for the run.
real_tokenizer="$root/tests/fixtures/audioldm-s-full-v2/tokenizer"
export WEB_TEST_SERVED="$CARGO_TARGET_DIR/served"
rm -rf "$WEB_TEST_SERVED"
mkdir -p "$WEB_TEST_SERVED"
cp -r "$root/tests/fixtures/tiny" "$WEB_TEST_SERVED/tiny"
cp -r "$real_tokenizer" "$WEB_TEST_SERVED/real-tokenizer"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="$root/web/test-runner.sh"

cd "$root/web"
start=$SECONDS
"$cargo" test --locked --profile web-test --target wasm32-unknown-unknown --no-run
built=$SECONDS
echo "web/test.sh: wasm test build $((built - start)) s"
status=0
"$cargo" test --locked --profile web-test --target wasm32-unknown-unknown -- --nocapture "$@" ||
    status=$?
echo "web/test.sh: browser test run $((SECONDS - built)) s"
if [ "$status" -ne 0 ]; then
    echo "web/test.sh: the browser tests failed (status $status)" >&2
    exit 1
fi

# The page itself, built with the tests' profile (`web-test` in Cargo.toml: every dependency is
# already compiled), driven end to end with the tiny model.
cd "$root"
start=$SECONDS
WEB_PROFILE=web-test WEB_DIST="$CARGO_TARGET_DIR/dist" bash web/build.sh
echo "web/test.sh: page build $((SECONDS - start)) s"
start=$SECONDS
if ! E2E_DIST="$CARGO_TARGET_DIR/dist" E2E_OUT="$CARGO_TARGET_DIR/e2e" node web/e2e/run.mjs; then
    echo "web/test.sh: the end-to-end test failed (screenshots in $CARGO_TARGET_DIR/e2e)" >&2
    exit 1
fi
echo "web/test.sh: end-to-end run $((SECONDS - start)) s"
