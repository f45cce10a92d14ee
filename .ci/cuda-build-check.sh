#!/usr/bin/env bash
# Checks that `--features cuda` (and `nccl`) compile on a machine without a GPU.
#
# candle's CUDA kernels are compiled by nvcc at build time. The CUDA 13.0 tool chain comes
# from NVIDIA's PyPI wheels (nvcc, NVVM, runtime and CRT headers, CCCL), unpacked under
# target/cuda-toolkit; CUDA_COMPUTE_CAP skips GPU detection. The check builds into its
# own target folder so the default build is untouched. Nothing here is needed by, or
# changes, the default `cargo test`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="$root/target/cuda-toolkit"
toolkit="$prefix/nvidia/cu13"
if [ ! -x "$toolkit/bin/nvcc" ]; then
  python3 -m pip install --quiet --no-deps --target "$prefix" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
fi
export CUDA_HOME="$toolkit" CUDA_PATH="$toolkit" PATH="$toolkit/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
nvcc --version | tail -n 1
# A library build: linking a binary would need the driver's libcuda.so, which only a
# machine with a GPU has.
cargo build --lib --features "${CUDA_FEATURES:-cuda,nccl}" --target-dir "$root/target/cuda"
