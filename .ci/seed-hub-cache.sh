#!/usr/bin/env bash
# Seeds a Hugging Face hub cache with the MiniLM test model, in the hub's exact layout:
#   <HF_HOME>/hub/models--sentence-transformers--all-MiniLM-L6-v2/
#     blobs/<sha256>                  file contents
#     snapshots/<commit>/<file>       symlinks ../../blobs/<sha256>
#     refs/main                       <commit>
# so that `HF_HOME=<HF_HOME> HF_HUB_OFFLINE=1 candle-distill inspect
# sentence-transformers/all-MiniLM-L6-v2` works without network.
# Usage: .ci/seed-hub-cache.sh <HF_HOME>
# The files come from target/test-assets/all-MiniLM-L6-v2 (.ci/fetch-test-assets.sh).
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 <HF_HOME>" >&2
  exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
src="${CANDLE_DISTILL_MINILM:-$root/target/test-assets/all-MiniLM-L6-v2}"
[ -f "$src/model.safetensors" ] || "$root/.ci/fetch-test-assets.sh"
files=(config.json model.safetensors tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json)
repo="$1/hub/models--sentence-transformers--all-MiniLM-L6-v2"
mkdir -p "$repo/blobs" "$repo/refs"
# The cache needs a 40-hex commit id; this one is derived from the files' contents.
commit="$(cd "$src" && sha256sum "${files[@]}" | sha1sum | cut -c1-40)"
snapshot="$repo/snapshots/$commit"
mkdir -p "$snapshot"
for f in "${files[@]}"; do
  blob="$(sha256sum "$src/$f" | cut -d' ' -f1)"
  [ -f "$repo/blobs/$blob" ] || cp "$src/$f" "$repo/blobs/$blob.incomplete"
  [ -f "$repo/blobs/$blob" ] || mv "$repo/blobs/$blob.incomplete" "$repo/blobs/$blob"
  ln -sfn "../../blobs/$blob" "$snapshot/$f"
done
printf '%s' "$commit" > "$repo/refs/main"
echo "seeded $repo at commit $commit"
