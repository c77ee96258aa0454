#!/usr/bin/env bash
# Builds llama.cpp, the peer edgeshard is measured against, OUTSIDE this repo and prints the
# folder holding its binaries (llama-bench, llama-server, llama-perplexity, llama-cli).
#
#   bench/peer_llamacpp.sh [--ref 2026-09|b4747|GIT_REF] [--src GIT_URL_OR_PATH] [--dir ../peer]
#                          [--native|--avx2] [--rpc] [--vulkan]
#
# The default peer is current llama.cpp: the source of 2026-09-28 that npm's node-llama-cpp@3.22.1
# carries as a git bundle (fetched with `npm install --ignore-scripts` into --dir/npm; the npm
# registry is the only network it needs). --native builds it for this CPU as llama.cpp would run
# here, with one exception on x86: no AMX (its kernels fault with SIGILL on some VMs); AVX512-FP16
# stays on. Older refs (b4747, the build that made ../shared/models/ref) come from --src, which
# defaults to $LLAMA_CPP_SRC, else https://github.com/ggerganov/llama.cpp (a local clone or mirror
# works offline). --rpc adds llama.cpp's RPC backend and rpc-server (for bench/cluster) in a
# separate build folder; --vulkan its Vulkan backend (for GPU comparisons: bench/gpu_bundle.sh),
# likewise. Nothing from llama.cpp is copied into the repo: the source and build live under --dir
# (default: beside the checkout).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="${LLAMA_CPP_SRC:-https://github.com/ggerganov/llama.cpp}"
ref="2026-09"
dir="$root/../peer"
arch="native"
rpc=0
vulkan=0
while [ $# -gt 0 ]; do
  case "$1" in
    --src) src="$2"; shift 2 ;;
    --ref) ref="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --native) arch="native"; shift ;;
    --avx2) arch="avx2"; shift ;;
    --rpc) rpc=1; shift ;;
    --vulkan) vulkan=1; shift ;;
    -h|--help) sed -n "2,17p" "$0"; exit 0 ;;
    *) echo "peer_llamacpp.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$(cd "$root" && realpath -m "$dir")/" in
  "$root"/*) echo "peer_llamacpp.sh: --dir must be outside the repo ($root)" >&2; exit 2 ;;
esac
mkdir -p "$dir"
tree="$dir/llama.cpp-$ref"
if [ "$ref" = 2026-09 ]; then
  # node-llama-cpp's bundle of llama.cpp's source; the same tree ../shared/tools/llamacpp-ref.sh
  # uses (its reference build lives in build/, this script's in build-<arch>).
  tree="$dir/llama.cpp-2026-09/src"
  if [ ! -f "$tree/CMakeLists.txt" ]; then
    npm_dir="$dir/llama.cpp-2026-09/npm"
    mkdir -p "$npm_dir"
    (cd "$npm_dir" && npm init -y >/dev/null &&
      npm install --no-audit --no-fund --ignore-scripts node-llama-cpp@3.22.1 >&2)
    git clone -q "$npm_dir/node_modules/node-llama-cpp/llama/gitRelease.bundle" "$tree" >&2
  fi
elif [ ! -f "$tree/CMakeLists.txt" ]; then
  rm -rf "$tree.tmp"
  if [ -d "$src" ]; then
    # A local clone or mirror: export the tree at $ref. Partial mirrors lack some large blobs
    # (vocab models under models/), which the build does not need, so only present blobs are taken.
    gd="$(git -C "$src" rev-parse --absolute-git-dir)"
    mkdir -p "$tree.tmp"
    git --git-dir="$gd" ls-tree -r "$ref" | awk '$2 == "blob"' > "$tree.paths"
    cut -d' ' -f3 "$tree.paths" | cut -f1 | git --git-dir="$gd" cat-file --batch-check |
      paste - <(cut -f2 "$tree.paths") | awk -F'\t' '$1 !~ / missing$/ {print $2}' |
      xargs -d '\n' bash -c 'gd=$1 ref=$2 out=$3; shift 3
        git --git-dir="$gd" archive "$ref" -- "$@" | tar -x -C "$out"' _ "$gd" "$ref" "$tree.tmp"
    rm -f "$tree.paths"
  else
    git clone -q --depth 1 --branch "$ref" "$src" "$tree.tmp" >&2
  fi
  mv "$tree.tmp" "$tree"
fi
build="$tree/build-$arch"
[ "$ref" = 2026-09 ] && build="$dir/llama.cpp-2026-09/build-$arch"
[ "$rpc" = 1 ] && build="$build-rpc"
[ "$vulkan" = 1 ] && build="$build-vulkan"
flags=(-DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=OFF)
if [ "$arch" = avx2 ]; then
  flags+=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
else
  flags+=(-DGGML_NATIVE=ON)
  if [ "$(uname -m)" = x86_64 ]; then
    noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    flags+=("-DCMAKE_C_FLAGS=$noamx" "-DCMAKE_CXX_FLAGS=$noamx")
  fi
fi
[ "$ref" = 2026-09 ] && flags+=(-DLLAMA_OPENSSL=OFF)
targets=(llama-bench llama-server llama-perplexity llama-cli)
if [ "$rpc" = 1 ]; then
  flags+=(-DGGML_RPC=ON)
  targets+=(rpc-server)
fi
if [ "$vulkan" = 1 ]; then
  flags+=(-DGGML_VULKAN=ON)
  # Its shaders need a glslc that knows cooperative matrices and its code Vulkan headers that
  # declare them; Debian 12's (shaderc 2023.2, headers 1.3.239) do not. Debian 13's are fetched
  # from the package archive into --dir, glslc run with its own C and C++ runtimes (nothing is
  # installed).
  if ! printf '#version 450\n#extension GL_KHR_cooperative_matrix : require\nvoid main() {}\n' |
      glslc -fshader-stage=compute --target-env=vulkan1.3 - -o /dev/null 2>/dev/null; then
    g="$dir/glslc-trixie"
    if [ ! -x "$g/glslc" ]; then
      rm -rf "$g" && mkdir -p "$g/apt/lists/partial" "$g/apt/cache/partial" "$g/debs" "$g/root"
      echo "deb http://deb.debian.org/debian trixie main" > "$g/apt/sources.list"
      o=(-o "Dir::Etc::sourcelist=$g/apt/sources.list" -o Dir::Etc::sourceparts=-
         -o "Dir::State::Lists=$g/apt/lists" -o "Dir::Cache=$g/apt/cache")
      apt-get "${o[@]}" update -q >&2
      (cd "$g/debs" &&
        apt-get "${o[@]}" download glslc libshaderc1 libc6 libstdc++6 libgcc-s1 libvulkan-dev >&2)
      for f in "$g"/debs/*.deb; do dpkg -x "$f" "$g/root"; done
      l="$g/root/usr/lib/x86_64-linux-gnu"
      printf '#!/bin/sh\nexec %s --library-path %s %s "$@"\n' "$l/ld-linux-x86-64.so.2" "$l" \
        "$g/root/usr/bin/glslc" > "$g/glslc"
      chmod +x "$g/glslc"
    fi
    flags+=("-DVulkan_GLSLC_EXECUTABLE=$g/glslc" "-DVulkan_INCLUDE_DIR=$g/root/usr/include")
  fi
fi
cmake -S "$tree" -B "$build" -G Ninja "${flags[@]}" >&2
cmake --build "$build" --target "${targets[@]}" -j"$(nproc)" >&2
echo "$build/bin"
