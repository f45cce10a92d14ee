#!/usr/bin/env bash
# Builds here, without a GPU, what .ci/gpu-check.sh runs on a GPU machine that has no
# Rust toolchain: tests/cuda_parity.rs and the distill bench with `--features cuda,nccl`,
# linked against stub CUDA libraries (.ci/cuda-stubs.py), stripped, in target/gpu-bin/,
# with the candle-distill command itself; `--bundle` also packs them into
# target/gpu-bin.tar.xz (about 27 MB) for the device tool's `carry`.
# There they need the NVIDIA driver (CUDA 13: 580 or newer) and CUDA 13's cuBLAS,
# cuRAND, NVRTC and NCCL, such as the ones a CUDA 13 PyTorch wheel installs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
CUDA_FROM_WHEELS=1 source .ci/cuda-env.sh
# The binaries travel to a machine that may lack OpenBLAS: the pure-Rust CPU matmul.
export CANDLE_DISTILL_BLAS=none
cudarc="$(cargo metadata --format-version 1 --features cuda,nccl \
  | python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc").rsplit("/", 1)[0])')"
# cudarc searches $CUDA_HOME/lib for the libraries it links; candle's kernels also link
# the CUDA runtime, which the wheel ships only under its versioned name.
python3 .ci/cuda-stubs.py "$cudarc" "$CUDA_HOME/lib"
[ -e "$CUDA_HOME/lib/libcudart.so" ] || ln -s libcudart.so.13 "$CUDA_HOME/lib/libcudart.so"
out="$root/target/gpu-bin"
rm -rf "$out" && mkdir -p "$out"
cargo build --features cuda,nccl --test cuda_parity --bench distill \
  --message-format json-render-diagnostics \
  | python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("cuda_parity", "distill", "candle-distill"):
        shutil.copy(m["executable"], sys.argv[1] + "/" + m["target"]["name"])
' "$out"
strip "$out"/*
for b in "$out"/*; do echo "$b needs:"; readelf -d "$b" | grep NEEDED; done
# They load, every symbol bound at once (-z now), with the stubs standing in for the
# real libraries under their SONAMEs.
sonames="$(mktemp -d)"
for lib in "$CUDA_HOME"/lib/lib*.so; do
  soname="$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')"
  [ -n "$soname" ] && ln -sf "$lib" "$sonames/$soname"
done
LD_LIBRARY_PATH="$sonames:$CUDA_HOME/lib" "$out/candle-distill" --help >/dev/null
LD_LIBRARY_PATH="$sonames:$CUDA_HOME/lib" "$out/cuda_parity" --list
rm -rf "$sonames"
# --bundle: one compressed file to carry to the GPU machine (the device tool carries
# 64 MiB; the binaries hold candle's PTX and are about 60 MB each).
if [ "${1:-}" = "--bundle" ]; then
  tar -C "$root/target" -cJf "$root/target/gpu-bin.tar.xz" gpu-bin
fi
ls -la "$out" "$root"/target/gpu-bin.tar.xz 2>/dev/null || true
