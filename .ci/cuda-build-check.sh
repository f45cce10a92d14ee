#!/usr/bin/env bash
# Checks that `--features cuda` (and `nccl`) compile on a machine without a GPU.
#
# candle's CUDA kernels are compiled by nvcc at build time; .ci/cuda-env.sh provides it
# from PyPI. The check builds into its own target folder so the default build is
# untouched. Nothing here is needed by, or changes, the default `cargo test`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
CUDA_FROM_WHEELS=1 source "$root/.ci/cuda-env.sh"
nvcc --version | tail -n 1
# A library build: linking a binary needs the CUDA libraries (.ci/gpu-build.sh links
# against stubs of them).
cargo build --lib --features "${CUDA_FEATURES:-cuda,nccl}" --target-dir "$root/target/cuda"
