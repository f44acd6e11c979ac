#!/usr/bin/env bash
# Prepares, on this machine, everything the GPU measurement (scripts/device/measure.sh) carries to
# the lent machine, under .device/ (git-ignored; pass `.device` as the run's carry):
#   pipeline-bench, kernels-bench  release benchmark binaries, stripped
#   configs/                       the real audioldm-s-full-v2 configs and tokenizer (test fixtures)
#   whl/                           diffusers (the only package the device's image lacks)
#   gl/                            the Vulkan loader's Debian package
# The full-size random model is made there from the configs (no weights travel). 64 MiB may
# travel in all; the sizes are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .device && mkdir -p .device/whl .device/gl

cargo bench --locked --no-run --bench pipeline --bench kernels
for bench in pipeline kernels; do
    binary=$(ls -t target/release/deps/"$bench"-* | grep -v '\.d$' | head -n 1)
    cp "$binary" ".device/$bench-bench"
    strip ".device/$bench-bench"
done

cp -r tests/fixtures/audioldm-s-full-v2 .device/configs

python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform any -d .device/whl diffusers==0.42.1

options=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
mkdir -p /tmp/amd64/partial
apt-get "${options[@]}" update -qq
(cd .device/gl && apt-get "${options[@]}" download libvulkan1 >/dev/null)

du -sh .device/* .device
