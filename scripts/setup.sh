#!/usr/bin/env bash
# System packages the build and the tests need on Debian/Ubuntu: a Vulkan loader and Mesa's
# software Vulkan driver (lavapipe; real GPUs bring their own driver), ALSA headers for audio, and
# an X server without a screen (Xvfb) plus ImageMagick for the test that opens the real window.
set -euo pipefail
packages=(mesa-vulkan-drivers libvulkan1 pkg-config libasound2-dev xvfb xauth imagemagick)
if dpkg -s "${packages[@]}" >/dev/null 2>&1; then
    exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${packages[@]}"
