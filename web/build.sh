#!/usr/bin/env bash
# Builds the web app into web/dist: the wasm32 release build of web/ and wasm-bindgen's JS glue
# (the CLI at the wasm-bindgen crate's exact version; scripts/setup.sh installs it), with
# index.html. Serve the folder with any static file server over https or from localhost:
#   python3 -m http.server -d web/dist 8000
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
target_dir="${CARGO_TARGET_DIR:-$root/target}"
cargo build --locked --release --target wasm32-unknown-unknown -p audioldm-web
rm -rf web/dist
mkdir -p web/dist
wasm-bindgen --target web --no-typescript --out-dir web/dist \
    "$target_dir/wasm32-unknown-unknown/release/audioldm_web.wasm"
cp web/index.html web/dist/
echo "web/build.sh: web/dist is ready ($(du -sh web/dist | cut -f1));" \
    "serve it with: python3 -m http.server -d web/dist 8000"
