#!/usr/bin/env bash
# Builds the web app into web/dist: the wasm32 release build of web/ and wasm-bindgen's JS glue
# (the CLI at the wasm-bindgen crate's exact version; `scripts/setup.sh --tests` installs it),
# with index.html. Serve the folder with any static file server over https or from localhost:
#   python3 -m http.server -d web/dist 8000
# WEB_PROFILE (default release) and WEB_DIST (default web/dist) choose the cargo profile and
# the output folder: the browser tests build the page with their `web-test` profile, sharing
# every compiled dependency with their own build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }')
if [ "$have" != "$want" ]; then
    echo "web/build.sh: wasm-bindgen ${have:-is missing}, the crate is $want:" \
        "cargo install wasm-bindgen-cli --version $want" >&2
    exit 1
fi
if [ ! -d "$(rustc --print sysroot)/lib/rustlib/wasm32-unknown-unknown" ]; then
    echo "web/build.sh: the wasm32-unknown-unknown target is not installed:" \
        "rustup target add wasm32-unknown-unknown (or bash scripts/setup.sh --tests)" >&2
    exit 1
fi
target_dir="${CARGO_TARGET_DIR:-$root/target}"
profile="${WEB_PROFILE:-release}"
dist="${WEB_DIST:-$root/web/dist}"
cargo build --locked --profile "$profile" --target wasm32-unknown-unknown -p audioldm-web
case "$profile" in dev | test) out=debug ;; *) out="$profile" ;; esac
rm -rf "$dist"
mkdir -p "$dist"
wasm-bindgen --target web --no-typescript --out-dir "$dist" \
    "$target_dir/wasm32-unknown-unknown/$out/audioldm_web.wasm"
cp web/index.html "$dist/"
echo "web/build.sh: $dist is ready ($(du -sh "$dist" | cut -f1), wasm" \
    "$(gzip -9 -c "$dist/audioldm_web_bg.wasm" | wc -c) bytes gzipped);" \
    "serve it with: python3 -m http.server -d $dist 8000"
