#!/usr/bin/env bash
# What the build needs on Debian/Ubuntu: a Vulkan loader and Mesa's software Vulkan driver
# (lavapipe; real GPUs bring their own driver) and ALSA headers for audio.
#   bash scripts/setup.sh           # to build and run
#   bash scripts/setup.sh --tests   # and what the tests need besides
# With --tests, also: an X server without a screen (Xvfb) and ImageMagick for the test that opens
# the real window; Chromium with its chromedriver and Node for the browser tests (web/test.sh);
# rustup's wasm32-unknown-unknown target and wasm-bindgen's CLI at the wasm-bindgen crate's exact
# version, whose test runner drives them and which builds the web page; the end-to-end test's
# playwright-core; the Khronos Vulkan validation layer (tests/vulkan_validation.rs); and SPIR-V
# Tools and glslang, which check what naga writes for each backend (tests/shader_backends.rs).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tests=false
[ "${1:-}" = "--tests" ] && tests=true

packages=(mesa-vulkan-drivers libvulkan1 pkg-config libasound2-dev)
if $tests; then
    packages+=(xvfb xauth imagemagick chromium chromium-driver)
    packages+=(vulkan-validationlayers spirv-tools glslang-tools)
    # Node for the end-to-end test: Debian's, unless the machine has one already.
    command -v node >/dev/null && command -v npm >/dev/null || packages+=(nodejs npm)
fi
if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${packages[@]}"
fi
$tests || exit 0

# The browser build's target. rustup is what a Rust install brings; a toolchain without it (a
# distribution's rustc) must have the target's standard library some other way.
if ! rustc --print sysroot >/dev/null 2>&1 ||
    [ ! -d "$(rustc --print sysroot)/lib/rustlib/wasm32-unknown-unknown" ]; then
    if command -v rustup >/dev/null; then
        rustup target add wasm32-unknown-unknown
    else
        echo "setup.sh: the wasm32-unknown-unknown standard library is missing and there is no" \
            "rustup to add it; install it with your toolchain" >&2
        exit 1
    fi
fi

# The version in Cargo.lock; the CLI must match it exactly (6-9 minutes to build).
version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' \
    "$root/Cargo.lock")
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $version" ]; then
    # --force: a binary that is missing or of another version replaces cargo's record of it.
    cargo install --quiet --force wasm-bindgen-cli --version "$version"
fi

# playwright-core for the web build's end-to-end test (web/e2e), at the version its lock pins.
if [ ! -d "$root/web/e2e/node_modules/playwright-core" ]; then
    npm ci --prefix "$root/web/e2e" --no-audit --no-fund --loglevel=error
fi
