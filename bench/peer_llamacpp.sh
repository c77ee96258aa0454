#!/usr/bin/env bash
# Builds llama.cpp, the peer edgeshard is measured against, OUTSIDE this repo and prints the
# folder holding its binaries (llama-bench, llama-server, llama-perplexity, llama-cli).
#
#   bench/peer_llamacpp.sh [--src GIT_URL_OR_PATH] [--ref b4747] [--dir ../peer] [--native|--avx2] [--rpc]
#
# --src defaults to $LLAMA_CPP_SRC, else https://github.com/ggerganov/llama.cpp. A local clone or
# mirror works offline. b4747 is the build that made ../shared/models/ref. --rpc adds llama.cpp's RPC
# backend and rpc-server (for bench/cluster) in a separate build folder. Nothing from llama.cpp is
# copied into the repo: the source and build live under --dir (default: beside the checkout).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="${LLAMA_CPP_SRC:-https://github.com/ggerganov/llama.cpp}"
ref="b4747"
dir="$root/../peer"
arch="native"
rpc=0
while [ $# -gt 0 ]; do
  case "$1" in
    --src) src="$2"; shift 2 ;;
    --ref) ref="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --native) arch="native"; shift ;;
    --avx2) arch="avx2"; shift ;;
    --rpc) rpc=1; shift ;;
    -h|--help) sed -n "2,11p" "$0"; exit 0 ;;
    *) echo "peer_llamacpp.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$(cd "$root" && realpath -m "$dir")/" in
  "$root"/*) echo "peer_llamacpp.sh: --dir must be outside the repo ($root)" >&2; exit 2 ;;
esac
mkdir -p "$dir"
tree="$dir/llama.cpp-$ref"
if [ ! -f "$tree/CMakeLists.txt" ]; then
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
[ "$rpc" = 1 ] && build="$build-rpc"
flags=(-DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=OFF)
if [ "$arch" = avx2 ]; then
  flags+=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
else
  flags+=(-DGGML_NATIVE=ON)
fi
targets=(llama-bench llama-server llama-perplexity llama-cli)
if [ "$rpc" = 1 ]; then
  flags+=(-DGGML_RPC=ON)
  targets+=(rpc-server)
fi
cmake -S "$tree" -B "$build" -G Ninja "${flags[@]}" >&2
cmake --build "$build" --target "${targets[@]}" -j"$(nproc)" >&2
echo "$build/bin"
