#!/usr/bin/env bash
# For a machine with an NVIDIA GPU (the `device` tool of a session that is lent one):
#   1. what is installed there (driver, nvcc, Rust, PyTorch);
#   2. CUDA against the CPU: teacher forward (f32 <= 1e-3, bf16 <= 2e-2) and distillation
#      steps (<= 1e-3), tests/cuda_parity.rs;
#   3. the distillation step (BERT-base teacher + TinyBERT-4 student, batch 32, seq 128)
#      and the student's inference (b1 and b32, seq 64) beside PyTorch on the same GPU,
#      benches/distill.rs with BENCH_DEVICE=cuda:0 (BENCH_ROWS names other rows);
#   4. a streamed general stage on the GPU (its corpus read ahead on a background thread)
#      against the CPU (read inline), .ci/gpu-corpus-check.sh.
# With cargo there it builds there. Without, it runs the binaries `.ci/gpu-build.sh
# --bundle` made on the machine that sent it (carry target/gpu-bin.tar.xz), with the
# CUDA libraries of the PyTorch installed there. Output goes to $OUT when set.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-target/gpu-check}"
mkdir -p "$out"
exec > >(tee "$out/gpu-check.log") 2>&1

echo "== installed"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || echo "nvidia-smi: not found"
command -v nvcc && nvcc --version | tail -n 1
command -v cargo && cargo --version || echo "cargo: not found"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), 'transformers', transformers.__version__)" || echo "torch: not found"
cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d .)"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-${cap:-90}}"
rows="${BENCH_ROWS:-step,teacher,student,infer_b1,infer_b32}"
bench_env=(BENCH_DEVICE=cuda:0 BENCH_STEP_BATCH=32 PYTHON="${PYTHON:-python3}" CANDLE_DISTILL_ROOT="$PWD")

if ! command -v cargo >/dev/null && [ ! -d target/gpu-bin ] && [ -f target/gpu-bin.tar.xz ]; then
  tar -C target -xJf target/gpu-bin.tar.xz
fi
if command -v cargo >/dev/null; then
  source .ci/cuda-env.sh
  echo "== CUDA against the CPU (built here)"
  cargo test --features cuda --test cuda_parity -- --nocapture --test-threads 1
  echo "== distillation step on the GPU, beside PyTorch eager"
  env "${bench_env[@]}" cargo bench --features cuda --bench distill -- --only "$rows"
  echo "== a streamed corpus stage on the GPU and on the CPU"
  cargo build --features cuda --bin candle-distill &&
    BIN=target/debug/candle-distill bash .ci/gpu-corpus-check.sh
elif [ -x target/gpu-bin/cuda_parity ]; then
  # The CUDA 13 libraries PyTorch's wheels installed (site-packages/nvidia/*/lib).
  libs="$(python3 -c 'import glob, os, nvidia; print(":".join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(d + "/**/lib*.so*", recursive=True)})))' 2>/dev/null)"
  export LD_LIBRARY_PATH="${libs:+$libs:}${LD_LIBRARY_PATH:-}"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  for b in target/gpu-bin/*; do
    echo "$b:"; ldd "$b" | grep -E "cuda|cublas|curand|nvrtc|nccl"
  done
  echo "== CUDA against the CPU (carried binary)"
  target/gpu-bin/cuda_parity --nocapture --test-threads 1
  echo "== distillation step on the GPU, beside PyTorch eager"
  env "${bench_env[@]}" target/gpu-bin/distill --only "$rows"
  echo "== a streamed corpus stage on the GPU and on the CPU"
  bash .ci/gpu-corpus-check.sh
else
  echo "no cargo here and no target/gpu-bin: run '.ci/gpu-build.sh --bundle' where cargo is and carry target/gpu-bin.tar.xz"
  exit 2
fi
