# Sourced by the CUDA scripts: the CUDA 13.0 tool chain from NVIDIA's PyPI wheels (nvcc,
# NVVM, runtime and CRT headers, CCCL) under target/cuda-toolkit, unless nvcc is already
# on PATH. Exports CUDA_HOME, CUDA_PATH, PATH and CUDA_COMPUTE_CAP (80 unless set, so the
# build does not look for a GPU).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! command -v nvcc >/dev/null || [ -n "${CUDA_FROM_WHEELS:-}" ]; then
  prefix="$root/target/cuda-toolkit"
  toolkit="$prefix/nvidia/cu13"
  if [ ! -x "$toolkit/bin/nvcc" ]; then
    python3 -m pip install --quiet --no-deps --target "$prefix" \
      nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
  fi
  export CUDA_HOME="$toolkit" CUDA_PATH="$toolkit" PATH="$toolkit/bin:$PATH"
fi
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
