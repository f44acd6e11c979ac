#!/usr/bin/env bash
# Builds the fuzz targets (optimised, with debug assertions: an overflow is a crash) and runs each
# on its committed corpus for SECONDS (default 20) or RUNS executions, whichever ends first,
# under the limits the loaders promise: 4 GiB of memory and 5 s per input. New corpus entries go
# to a scratch folder, not into fuzz/corpus.
#   bash fuzz/run.sh [SECONDS] [RUNS] [TARGET...]
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
runs="${2:--1}"
shift $(( $# > 2 ? 2 : $# ))
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(safetensors pickle_archive pickle_data_pkl config scheduler tokenizer audio)
fi
declare -A dict=(
    [safetensors]=safetensors [pickle_archive]=pickle [pickle_data_pkl]=pickle [config]=json
    [scheduler]=json [tokenizer]=json [audio]=audio
)
cargo +nightly fuzz build -O -a
scratch="$(mktemp -d)"
status=0
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target"
    log="$scratch/$target.log"
    if cargo +nightly fuzz run -O -a "$target" "$scratch/$target" "corpus/$target" -- \
        -dict="dicts/${dict[$target]}.dict" -max_total_time="$seconds" -runs="$runs" \
        -rss_limit_mb=4096 -timeout=5 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
        status=1
        tail -n 60 "$log"
    fi
    executed=$(grep -oE "stat::number_of_executed_units: *[0-9]+" "$log" | grep -oE "[0-9]+$" || echo "?")
    coverage=$(grep -oE "cov: [0-9]+ ft: [0-9]+" "$log" | tail -n 1 || echo "cov: ?")
    rss=$(grep -oE "stat::peak_rss_mb: *[0-9]+" "$log" | grep -oE "[0-9]+$" || echo "?")
    echo "fuzz $target: $result, $executed executions, $coverage, peak RSS ${rss} MB"
done
rm -rf "$scratch"
exit "$status"
