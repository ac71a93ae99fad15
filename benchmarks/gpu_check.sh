#!/usr/bin/env bash
# One short GPU run: build with CUDA, run the GPU tests and the GPU benchmarks, print one table.
# Usage (on a CUDA machine, from the repository root): bash benchmarks/gpu_check.sh
# Writes logs and bench.json under $OUT (default: ./gpu-check-out). Budget: under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
start=$(date +%s)
step() { printf '\n== %s (t=%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"
python -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name(0))" 2>&1 | tee -a "$OUT/gpu.txt"

step "build (FASTNAS_CUDA=ON, native arch)"
export FASTNAS_CUDA=ON
# "native" needs CMake >= 3.24; fall back to Hopper (sm_90, with PTX) when it is not understood.
export CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=native"
if ! timeout 240 pip install --no-build-isolation --no-deps . >"$OUT/build.log" 2>&1; then
  echo "native-arch build failed; retrying with CMAKE_CUDA_ARCHITECTURES=90"
  export CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90"
  if ! timeout 240 pip install --no-build-isolation --no-deps . >"$OUT/build.log" 2>&1; then
    echo "BUILD FAILED (tail of $OUT/build.log):"; tail -n 40 "$OUT/build.log"; exit 1
  fi
fi
python -c "import pytest" 2>/dev/null || { echo "pytest is not installed on this machine: cannot run the GPU tests"; exit 1; }
# Run from outside the source tree so the installed package (with its CUDA build) is imported.
cd "$OUT"
python -c "import fastnas; [print(' ', s) for s in fastnas.backends().values()]" 2>&1 | tee "$OUT/backends.txt"
cd - >/dev/null

step "GPU tests (pytest -m gpu)"
timeout 200 pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -n 25

step "GPU benchmarks"
FASTNAS_BENCH_JSON="$OUT/bench.json" timeout 200 pytest -m gpu --benchmark-only -q -p no:cacheprovider \
  --benchmark-columns=median,rounds benchmarks 2>&1 | tee "$OUT/gpu_bench.log" | sed -n '/fastnas ratios/,$p'

step "2 GPUs under torchrun (NCCL), where the machine has them"
ngpu=$(cd "$OUT" && python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "${ngpu:-0}" -ge 2 ]; then
  (
    cd "$OUT"
    args="--data digits --channels 16 --cells 2 --epochs 3 --batch-size 64 --device cuda --quiet"
    t0=$(date +%s.%N)
    timeout 60 python -m fastnas train-supernet $args --out "$OUT/one" > "$OUT/dist_one.log" 2>&1
    t1=$(date +%s.%N)
    timeout 60 torchrun --standalone --nproc_per_node=2 -m fastnas train-supernet $args --out "$OUT/two" \
      > "$OUT/dist_two.log" 2>&1
    t2=$(date +%s.%N)
    python -c "import sys; a, b, c = map(float, sys.argv[1:]); print(f'  train-supernet: 1 GPU {b - a:.1f} s, 2 GPUs {c - b:.1f} s ({(b - a) / (c - b):.2f}x)')" "$t0" "$t1" "$t2"
    cp -r "$OUT/one" "$OUT/one_b"
    timeout 45 python -m fastnas search --resume "$OUT/one" --population 6 --generations 2 --quiet > /dev/null 2>&1
    timeout 45 torchrun --standalone --nproc_per_node=2 -m fastnas search --resume "$OUT/one_b" --population 6 \
      --generations 2 --quiet > "$OUT/dist_search.log" 2>&1
    if cmp -s "$OUT/one/history.csv" "$OUT/one_b/history.csv"; then echo "  2-GPU search of one trained supernet: same history (bit-identical)"
    else echo "  2-GPU search of one trained supernet: DIFFERENT history (see $OUT/dist_search.log)"; fi
  ) 2>&1 | tee "$OUT/dist.log"
else
  echo "  $ngpu GPU(s): skipped (needs 2)"
fi

step "table"
python - "$OUT/bench.json" <<'PY'
import json, sys
try:
    data = json.load(open(sys.argv[1]))
except Exception as exc:
    print("no benchmark results:", exc); sys.exit(0)
for group, entries in data.items():
    floor = next((e for e in entries.values() if e.get("role") == "floor"), None)
    base = next((e for e in entries.values() if e.get("role") == "baseline"), None)
    print(f"{group}")
    for name, e in entries.items():
        row = f"  {name:<40} {e['s'] * 1e3:10.3f} ms"
        if e.get("bytes"):
            row += f"  {e['bytes'] / e['s'] / 1e9:8.1f} GB/s"
            if floor and floor.get("bytes"):
                row += f"  ({(e['bytes'] / e['s']) / (floor['bytes'] / floor['s']) * 100:5.1f}% of copy bandwidth)"
        if base:
            row += f"  {base['s'] / e['s']:7.2f}x vs baseline"
        print(row)
PY
step "done"
