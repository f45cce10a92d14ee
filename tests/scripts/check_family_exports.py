"""Interop check for every family: candle-distill's export of each fixture in
tests/fixtures/families, loaded by transformers as is.

For each family it loads EXPORTS_DIR/<family> with AutoModelForSequenceClassification
(no missing, unexpected or mismatched keys allowed) and AutoTokenizer (for RoBERTa and
XLM-R, the ids of tokenization.json's texts must be the original tokenizer's), runs the
fixture's reference batch and compares the logits with the ones transformers computed
from the original checkpoint (norm-relative error within 1e-4). Prints a line per
family; exits 1 on any failure.

It records what it loaded in tests/fixtures/families/<family>/transformers_load.json:
the export's tensors (name, dtype, shape) and config.json, the classes transformers
chose, the loading problems and the logits' error. The test
`families::every_familys_export_is_the_folder_transformers_loaded` exports the fixture
again and requires the same tensors and config, so CI (without torch) fails when the
export's layout drifts from what transformers was shown; rerun this script then.

Usage:
  for f in roberta xlm-roberta electra distilbert mpnet; do
    cargo run -- export --from tests/fixtures/families/$f --out /tmp/exports/$f
  done
  python tests/scripts/check_family_exports.py /tmp/exports
"""
import json
import sys
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

FAMILIES = ["roberta", "xlm-roberta", "electra", "distilbert", "mpnet"]


def record_load(path, export, model, tokenizer, problems, err):
    with safe_open(str(export / "model.safetensors"), framework="pt") as f:
        tensors = []
        for name in sorted(f.keys()):
            t = f.get_slice(name)
            tensors.append([name, t.get_dtype(), list(t.get_shape())])
    record = {
        "transformers": transformers.__version__,
        "model_class": type(model).__name__,
        "tokenizer_class": type(tokenizer).__name__,
        "loading_problems": {k: v if isinstance(v, str) else sorted(map(str, v))
                             for k, v in problems.items()},
        "logits_rel_error": err,
        "tensors": tensors,
        "config": json.loads((export / "config.json").read_text()),
    }
    path.write_text(json.dumps(record, indent=1) + "\n")


def main():
    exports = Path(sys.argv[1])
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "families"
    failed = False
    for name in FAMILIES:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            exports / name, output_loading_info=True, attn_implementation="eager")
        model.eval()
        problems = {k: v for k, v in info.items() if v}
        tokenizer = AutoTokenizer.from_pretrained(exports / name)
        ref = load_file(fixtures / name / "reference.safetensors")
        kwargs = dict(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"])
        if name == "electra":
            kwargs["token_type_ids"] = ref["token_type_ids"]
        with torch.no_grad():
            logits = model(**kwargs).logits
        err = (torch.linalg.norm(logits - ref["logits"]) / torch.linalg.norm(ref["logits"])).item()
        tokenization = fixtures / name / "tokenization.json"
        if tokenization.is_file():
            # The exported tokenizer gives the ids the original gave in transformers.
            want = json.loads(tokenization.read_text())
            got = [tokenizer(*t)["input_ids"] for t in want["texts"]]
            if got != want["input_ids"]:
                problems["tokenization"] = "ids differ from the original tokenizer's"
        ok = not problems and err < 1e-4
        record_load(fixtures / name / "transformers_load.json", exports / name, model, tokenizer,
                    problems, err)
        failed |= not ok
        print(f"{name:12} {type(model).__name__:40} {type(tokenizer).__name__:28} "
              f"loading problems: {problems or 'none'}; logits rel. error {err:.1e} "
              f"{'ok' if ok else 'FAILED'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
