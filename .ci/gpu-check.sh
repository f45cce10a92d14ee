#!/usr/bin/env bash
# For a machine with an NVIDIA GPU (the `device` tool of a session that is lent one):
#   1. what is installed there (driver, nvcc, Rust, PyTorch);
#   2. CUDA against the CPU: teacher forward (f32 <= 1e-3, bf16 <= 2e-2) and distillation
#      steps (<= 1e-3), tests/cuda_parity.rs;
#   3. the distillation step (BERT-base teacher + TinyBERT-4 student, batch 32, seq 128)
#      beside PyTorch eager on the same GPU, benches/distill.rs with BENCH_DEVICE=cuda:0.
# It builds there, so it needs cargo on that machine (and nvcc, or it installs the PyPI
# CUDA 13.0 tool chain as .ci/cuda-build-check.sh does). Output goes to $OUT when set.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-target/gpu-check}"
mkdir -p "$out"
exec > >(tee "$out/gpu-check.log") 2>&1

echo "== installed"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || echo "nvidia-smi: not found"
command -v nvcc && nvcc --version | tail -n 1
command -v cargo && cargo --version || { echo "cargo: not found; install a Rust toolchain (rustup) to run this check"; exit 2; }
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), 'transformers', transformers.__version__)" || echo "torch: not found"

if ! command -v nvcc >/dev/null; then
  prefix="$PWD/target/cuda-toolkit"
  python3 -m pip install --quiet --no-deps --target "$prefix" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
  export CUDA_HOME="$prefix/nvidia/cu13" PATH="$prefix/nvidia/cu13/bin:$PATH"
fi
cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d .)"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-${cap:-90}}"

echo "== CUDA against the CPU"
cargo test --release --features cuda --test cuda_parity -- --nocapture --test-threads 1

echo "== distillation step on the GPU, beside PyTorch eager"
BENCH_DEVICE=cuda:0 BENCH_STEP_BATCH=32 PYTHON="${PYTHON:-python3}" \
  cargo bench --features cuda --bench distill -- --only step,teacher,student
