#!/usr/bin/env bash
# The GPU measurement of issue 13, run on the lent machine from the repository root with
# `.device` carried (made by scripts/device/prepare.sh). Side by side on one card: our engine
# (f32, f16) through the release pipeline bench, and diffusers on CUDA (fp32 with TF32 off and on,
# fp16) through scripts/reference/bench_reference.py: text encoder, UNet guidance step, VAE decode,
# vocoder, whole 10- and 50-step runs at 10 s on the full-size random s-full-v2, which is made there
# from the real configs; a 1024^3 GEMM against cuBLAS; the per-kernel profile of our step, with the
# GPU kernel set and with the portable one; the normalisations with and without subgroups. Results
# go to $OUT (the device tool brings them back).
#
#   bash scripts/device/measure.sh          on the device
#   bash scripts/device/measure.sh --dry    here: the tiny model, 1 s, torch on the CPU, lavapipe
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-/tmp/measure}"
mkdir -p "$out"
log() { echo "== $(date +%T) $*" | tee -a "$out/log.txt"; }

if [ "${1:-}" = "--dry" ]; then
    model=tests/fixtures/tiny device=cpu duration=1 long_steps=3 python=.venv/bin/python
    pipeline=(cargo bench --locked --bench pipeline --) kernels=(cargo bench --locked --bench kernels --)
else
    for deb in .device/gl/*.deb; do dpkg -x "$deb" /; done
    ldconfig
    icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    [ -f "$icd" ] && export VK_DRIVER_FILES="$icd"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .device/whl/*.whl && export PYTHONPATH=/tmp/site
    nvidia-smi > "$out/nvidia-smi.txt" 2>&1
    model=/tmp/full device=cuda duration=10 long_steps=50 python=python3
    pipeline=(.device/pipeline-bench) kernels=(.device/kernels-bench)
    log "making the full-size random model"
    "$python" scripts/reference/make_reference.py --full --configs .device/configs --out "$model" \
        --no-goldens > "$out/make-model.txt" 2>&1 || { log "no model"; exit 1; }
fi
export WGPU_BACKEND=vulkan RUST_LOG=warn

reference() { # name, then bench_reference.py's options
    local name=$1; shift
    log "diffusers $name"
    "$python" scripts/reference/bench_reference.py --model "$model" --device "$device" \
        --duration "$duration" --out "$out/torch-$name.json" "$@" > "$out/torch-$name.txt" 2>&1
}
ours() { # name, then the pipeline bench's options
    local name=$1; shift
    log "ours $name"
    "${pipeline[@]}" --model "$model" --duration "$duration" "$@" > "$out/ours-$name.txt" 2>&1
}

reference fp32
reference tf32 --tf32
reference fp16 --dtype fp16
reference fp32-long --steps "$long_steps" --repeat 1
ours f32 --reference "$out/torch-fp32.json"
ours f16 --f16 --reference "$out/torch-fp16.json"
ours f32-long --steps "$long_steps" --repeat 1 --reference "$out/torch-fp32-long.json"
ours profile --steps 1 --profile
# The same profile with the CPU adapters' kernels: what the GPU set (tiles, fused norms, subgroup
# reductions) gains on this card.
AUDIOLDM_KERNELS=portable ours profile-portable --steps 1 --profile
log "GEMM 1024^3"
"$python" scripts/reference/bench_reference.py --model "$model" --device "$device" --gemm \
    --out "$out/cublas-fp32.json" > /dev/null 2>&1
"$python" scripts/reference/bench_reference.py --model "$model" --device "$device" --gemm --tf32 \
    --out "$out/cublas-tf32.json" > /dev/null 2>&1
"${kernels[@]}" --gemm --quick > "$out/ours-gemm.txt" 2>&1
log "normalisations: tree and subgroup reductions"
"${kernels[@]}" --norm --quick > "$out/ours-norm.txt" 2>&1
log "done"
grep -h "ours/theirs\|UNet\|whole run\|vocoder\|VAE\|text encoder\|step graph" "$out"/ours-f*.txt
grep -h "gflops" "$out"/cublas-*.json; grep -h "Tiles\|TiledN4 { tm: 8, tn: 2 }" "$out/ours-gemm.txt"
