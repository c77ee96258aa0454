#!/usr/bin/env bash
# Packs what bench/gpu_check.sh needs on the device machine (the `device` tool's GPU box: no
# network, and not Debian 12's libraries) into .gpu/bundle.tgz in the repo root, which git
# ignores: name ".gpu" in the tool's `carry` (64 MiB at most with the tree).
#
#   bench/gpu_bundle.sh [LLAMA_BENCH]
#
# LLAMA_BENCH defaults to the one bench/peer_llamacpp.sh --avx2 --vulkan builds (llama.cpp's
# Vulkan backend; AVX2 so that its CPU part runs on any x86-64 host). The bundle holds the release
# build's edgeshard and GPU test binaries (scripts/build release first), llama-bench, every shared
# library they load and this system's dynamic loader (they run through it there: edgeshard,
# llama-bench and `test NAME` at the bundle's top), the Vulkan loader, stories260K and the
# llama-spm vocabulary (gpu_check.sh synthesises the benchmark models there).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mktemp -d)/gpu"
lb="${1:-$("$root/bench/peer_llamacpp.sh" --avx2 --vulkan | tail -n 1)/llama-bench}"
models="${EDGESHARD_TEST_MODELS:-$root/../shared/models}"
bins=("$root/build/release/edgeshard" "$lb")
for t in test_gpu test_gpu_ops test_gpu_model; do bins+=("$root/build/release/tests/$t"); done
for b in "${bins[@]}"; do
  [ -x "$b" ] || { echo "gpu_bundle.sh: $b is missing: build it first" >&2; exit 1; }
done
exclude="$(git -C "$root" rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >> "$exclude"
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib" "$out/models/vocab"
for b in "${bins[@]}"; do
  cp "$b" "$out/bin/"
  strip "$out/bin/$(basename "$b")"
  # Every library it loads, and the loader itself (the path without "=>").
  ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' |
    while read -r l; do cp -Ln "$l" "$out/lib/" 2>/dev/null || true; done
done
cp -L "$(ldconfig -p | awk '/libvulkan.so.1 .*x86-64/ {print $NF; exit}')" "$out/lib/"
loader="$(basename "$(ldd "$root/build/release/edgeshard" | awk '$1 ~ /ld-linux/ {print $1}')")"
for n in edgeshard llama-bench; do
  printf '#!/bin/sh\nd="$(cd "$(dirname "$0")" && pwd)"\nexec "$d/lib/%s" --library-path "$d/lib" "$d/bin/%s" "$@"\n' \
    "$loader" "$n" > "$out/$n"
  chmod +x "$out/$n"
done
printf '#!/bin/sh\nd="$(cd "$(dirname "$0")" && pwd)"\nt="$1"; shift\nexec "$d/lib/%s" --library-path "$d/lib" "$d/bin/$t" "$@"\n' \
  "$loader" > "$out/test"
chmod +x "$out/test"
cp "$models/stories260K.gguf" "$out/models/"
cp "$models/vocab/ggml-vocab-llama-spm.gguf" "$out/models/vocab/"
rm -rf "$root/.gpu"
mkdir -p "$root/.gpu"
tar -C "$out" -czf "$root/.gpu/bundle.tgz" .
rm -rf "$(dirname "$out")"
size=$(du -m "$root/.gpu/bundle.tgz" | cut -f1)
echo "gpu_bundle.sh: .gpu/bundle.tgz, $size MiB" >&2
[ "$size" -lt 56 ] || echo "gpu_bundle.sh: the device tool carries at most 64 MiB with the tree" >&2
