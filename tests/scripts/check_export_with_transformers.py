"""Interop check: an exported candle-distill folder, loaded by transformers as is.

Loads EXPORT_DIR with AutoTokenizer and AutoModelForSequenceClassification, runs the
examples of RUST_JSON (written by `candle-distill export --logits-out`), and compares
transformers' logits with the Rust model's: norm-relative error within 1e-4 per example.
Also checks that README.md's front matter is valid YAML and that config.json names the
architecture and labels. Prints a table; exits 1 on any mismatch.

With --fixture OUT, writes OUT (JSON: examples, transformers' input ids, Rust logits,
transformers logits) for tests/export.rs, which re-checks it in CI without Python.

Usage: python tests/scripts/check_export_with_transformers.py EXPORT_DIR RUST_JSON [--fixture OUT]

A real student to check: any run's checkpoints/best (e.g. the quick start's
runs/quickstart-sst2/checkpoints/best), exported with `candle-distill export --from`.

The committed fixture tests/fixtures/tiny_export_transformers.json was made with
(seed 7 = SEED in tests/export.rs):

  CANDLE_DISTILL_TINY_STUDENT=/tmp/tiny cargo test --test tests export::tiny_export
  cargo run -- export --from /tmp/tiny --out /tmp/tiny-export \
      --check-texts tests/fixtures/tiny_export_texts.txt --logits-out /tmp/tiny-rust.json
  python tests/scripts/check_export_with_transformers.py /tmp/tiny-export /tmp/tiny-rust.json \
      --fixture tests/fixtures/tiny_export_transformers.json
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

TOLERANCE = 1e-4


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check_card(export_dir):
    text = (export_dir / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n"), "README.md has no YAML front matter"
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "transformers", front
    assert front["pipeline_tag"] == "text-classification", front
    return front


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("rust_json", type=Path)
    parser.add_argument("--fixture", type=Path)
    args = parser.parse_args()

    rust = json.loads(args.rust_json.read_text(encoding="utf-8"))
    front = check_card(args.export_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.export_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.export_dir, dtype=torch.float32
    ).eval()
    config = model.config
    assert type(model).__name__ == "BertForSequenceClassification", type(model)
    print(
        f"transformers {transformers.__version__}, torch {torch.__version__}: "
        f"{type(model).__name__}, {type(tokenizer).__name__}, "
        f"{config.num_hidden_layers} layers, labels {config.id2label}, "
        f"problem_type {config.problem_type}, stored dtype {rust['dtype']}, "
        f"card tags {front['tags']}"
    )

    rows, ids, ours = [], [], []
    worst = 0.0
    for (a, b), rust_logits in zip(rust["examples"], rust["logits"]):
        enc = tokenizer(a, b, return_tensors="pt") if b is not None else tokenizer(a, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0].tolist()
        err = rel_err(rust_logits, logits)
        worst = max(worst, err)
        ids.append(enc["input_ids"][0].tolist())
        ours.append(logits)
        text = a if b is None else f"{a} || {b}"
        rows.append((text, rust_logits, logits, err))

    def fmt(v):
        return "[" + ", ".join(f"{x:+.6f}" for x in v) + "]"

    width = min(48, max(len(r[0]) for r in rows))
    print(f"{'text':<{width}}  {'candle-distill':>26}  {'transformers':>26}  rel err")
    for text, r, t, e in rows:
        short = text if len(text) <= width else text[: width - 3] + "..."
        print(f"{short:<{width}}  {fmt(r):>26}  {fmt(t):>26}  {e:.2e}")
    overall = rel_err(rust["logits"], ours)
    ok = worst <= TOLERANCE
    print(
        f"{len(rows)} examples: worst relative error {worst:.2e}, overall {overall:.2e} "
        f"(tolerance {TOLERANCE:.0e}): {'OK' if ok else 'MISMATCH'}"
    )

    if args.fixture:
        fixture = {
            "generator": "tests/scripts/check_export_with_transformers.py",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "examples": rust["examples"],
            "transformers_input_ids": ids,
            "rust_logits": rust["logits"],
            "transformers_logits": ours,
        }
        args.fixture.write_text(json.dumps(fixture, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.fixture}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
