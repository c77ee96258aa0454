#!/usr/bin/env bash
# Issue 21's GPU check, on a lent GPU machine (the `device` tool), from the repo root with .gpu/
# carried (bench/gpu_bundle.sh makes it; unpacked into /tmp/gpu-bundle):
#
#   run(command="bench/gpu_check.sh", carry=[".gpu"], timeout_s=560)
#
# 1. the GPU and the devices Vulkan offers (the NVIDIA driver's ICD where the machine mounts it);
# 2. test_gpu, test_gpu_ops and test_gpu_model's stories260K cases on the GPU (bit for bit where
#    the device fuses fma and has doubles: the mixed builds);
# 3. the GPU's read bandwidth (PyTorch, which the machine has: a sum over 4 GiB);
# 4. bench/compare_llamacpp.py --gpu-layers all against llama.cpp's Vulkan backend on the same
#    synthesised files (GPU_CHECK_PRESETS, default tinyllama-1.1b; GPU_CHECK_TYPES, default
#    q4_0,q8_0,q4_k_m,f16; GPU_CHECK_REPS, default 3).
# Everything lands in $OUT (the device tool's; /tmp/gpu-check elsewhere).
set -uo pipefail
[ -f .gpu/bundle.tgz ] || { echo "gpu_check.sh: no .gpu/bundle.tgz: run bench/gpu_bundle.sh, carry .gpu" >&2; exit 2; }
g=/tmp/gpu-bundle
rm -rf "$g" && mkdir -p "$g" && tar -C "$g" -xzf .gpu/bundle.tgz
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES="$icd"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; } | tee "$out/gpu.txt"
"$g/edgeshard" --list-devices 2>&1 | tee "$out/devices.txt"
# The peer skips devices that are CPUs (lavapipe): without a GPU it would run on the CPU, and the
# comparison would not be one.
"$g/llama-bench" --list-devices 2>&1 | tee "$out/peer-devices.txt"
peer_gpu=1
grep -q "Vulkan0" "$out/peer-devices.txt" || peer_gpu=0
export EDGESHARD_TEST_MODELS="$g/models"
for t in test_gpu test_gpu_ops; do
  timeout 120 "$g/test" "$t" 2>&1 | tee "$out/$t.txt" | grep -E "^\[  (PASSED|FAILED) |fma |differ"
done
timeout 120 "$g/test" test_gpu_model \
  --gtest_filter='GpuOffload.MatchesTheCpuRun:GpuOffload.HostKvCacheHoldsOnlyTheCpuLayers' 2>&1 |
  tee "$out/test_gpu_model.txt" | grep -E "^\[  (PASSED|FAILED) |relative|bit for bit|rounding"
bw=$(timeout 60 python3 - <<'PY' 2>/dev/null
import time, torch
x = torch.ones(1 << 30, dtype=torch.float32, device="cuda")  # 4 GiB
for _ in range(3): x.sum()
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(20): x.sum()
torch.cuda.synchronize()
print(f"{20 * x.numel() * 4 / (time.perf_counter() - t) / 1e9:.0f}")
PY
)
echo "GPU read bandwidth (torch sum over 4 GiB): ${bw:-unmeasured} GB/s" | tee "$out/bandwidth.txt"
if [ "$peer_gpu" = 0 ]; then
  echo "gpu_check.sh: llama-bench sees no Vulkan GPU: no comparison" | tee "$out/compare.txt"
  exit 1
fi
PYTHONUNBUFFERED=1 timeout 360 python3 bench/compare_llamacpp.py --edgeshard "$g/edgeshard" \
  --llama-bench "$g/llama-bench" --models-dir /tmp/gpu-check-models \
  --vocab "$g/models/vocab/ggml-vocab-llama-spm.gguf" --presets "${GPU_CHECK_PRESETS:-tinyllama-1.1b}" \
  --types "${GPU_CHECK_TYPES:-q4_0,q8_0,q4_k_m,f16}" --threads "$(nproc)" -r "${GPU_CHECK_REPS:-3}" \
  --gpu-layers all --bandwidth-gbps "${bw:-0}" -o "$out/benchmarks-gpu.md" 2>&1 |
  tee "$out/compare.txt" | tail -n 20
