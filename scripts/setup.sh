#!/usr/bin/env bash
# System packages the build and the tests need on Debian/Ubuntu: a Vulkan loader and Mesa's
# software Vulkan driver (lavapipe; real GPUs bring their own driver), ALSA headers for audio, an
# X server without a screen (Xvfb) plus ImageMagick for the test that opens the real window, and
# Chromium with its chromedriver and Node for the browser tests (web/test.sh); then wasm-bindgen's
# CLI at the wasm-bindgen crate's exact version, whose test runner drives them, and the end-to-end
# test's playwright-core.
set -euo pipefail
packages=(mesa-vulkan-drivers libvulkan1 pkg-config libasound2-dev xvfb xauth imagemagick
    chromium chromium-driver)
# Node for the end-to-end test: Debian's, unless the machine has one already.
command -v node >/dev/null && command -v npm >/dev/null || packages+=(nodejs npm)
if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${packages[@]}"
fi

# The version in Cargo.lock; the CLI must match it exactly (about 6 minutes to build).
lock="$(cd "$(dirname "$0")/.." && pwd)/Cargo.lock"
version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$lock")
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $version" ]; then
    cargo install --quiet wasm-bindgen-cli --version "$version"
fi

# playwright-core for the web build's end-to-end test (web/e2e), at the version its lock file pins.
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -d "$root/web/e2e/node_modules/playwright-core" ]; then
    npm ci --prefix "$root/web/e2e" --no-audit --no-fund --silent
fi
