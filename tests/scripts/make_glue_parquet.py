"""Writes small parquet fixtures in the layout of the hub dataset `nyu-mll/glue`.

Every task config gets every split as `<config>/<split>-00000-of-00001.parquet` with the
hub's columns and types (ClassLabel -> int64, -1 in test splits; STS-B float32; idx
int32). Rows come from the first lines of the local GLUE TSVs where they exist (so the
tests can check that TSV strings and hub integers mean the same classes), and are
synthetic for MNLI, QQP and QNLI train. MNLI is written with zstd, everything else with
snappy (pyarrow's default, as the hub's files), so both codecs are exercised.
A manifest.json records what was written.

Usage: /work/pyenv/bin/python tests/scripts/make_glue_parquet.py ../shared/data/glue tests/fixtures/glue-parquet
"""

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROWS = 6

LABELS = {
    "cola": ["unacceptable", "acceptable"],
    "sst2": ["negative", "positive"],
    "mrpc": ["not_equivalent", "equivalent"],
    "qqp": ["not_duplicate", "duplicate"],
    "stsb": None,
    "mnli": ["entailment", "neutral", "contradiction"],
    "qnli": ["entailment", "not_entailment"],
    "rte": ["entailment", "not_entailment"],
    "wnli": ["not_entailment", "entailment"],
}
COLUMNS = {
    "cola": ["sentence"],
    "sst2": ["sentence"],
    "mrpc": ["sentence1", "sentence2"],
    "qqp": ["question1", "question2"],
    "stsb": ["sentence1", "sentence2"],
    "mnli": ["premise", "hypothesis"],
    "qnli": ["question", "sentence"],
    "rte": ["sentence1", "sentence2"],
    "wnli": ["sentence1", "sentence2"],
}
SPLITS = {
    "mnli": ["train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"],
}
GLUE_DIR = {
    "cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "stsb": "STS-B",
    "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI",
}
# Text and label columns of each GLUE TSV (CoLA: positions, no header).
TSV = {
    "sst2": (["sentence"], "label"),
    "mrpc": (["#1 String", "#2 String"], "Quality"),
    "stsb": (["sentence1", "sentence2"], "score"),
    "qnli": (["question", "sentence"], "label"),
    "rte": (["sentence1", "sentence2"], "label"),
    "wnli": (["sentence1", "sentence2"], "label"),
}


def tsv_rows(glue, config, split):
    """First ROWS (texts, label) of a local TSV, or None when the file is absent."""
    name = {"train": "train.tsv", "validation": "dev.tsv"}.get(split)
    path = Path(glue) / GLUE_DIR[config] / (name or "")
    if name is None or not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8-sig").split("\n")
    out = []
    if config == "cola":
        for line in lines[:ROWS]:
            f = line.split("\t")
            out.append(([f[3].strip()], int(f[1])))
        return out
    header = lines[0].split("\t")
    texts, label = TSV[config]
    for line in lines[1 : ROWS + 1]:
        f = line.split("\t")
        value = f[header.index(label)].strip()
        if config == "stsb":
            y = float(value)
        elif value.isdigit():
            y = int(value)
        else:
            y = LABELS[config].index(value)
        out.append(([f[header.index(c)].strip() for c in texts], y))
    return out


def synthetic_rows(config, split):
    words = ["the cat sat", "a dog ran", "it was fun", "the plot is thin", "she saw a film", "they ate"]
    out = []
    for i in range(ROWS):
        texts = [f"{words[i % len(words)]} {config} {split} {i}"]
        if len(COLUMNS[config]) == 2:
            texts.append(f"{words[(i + 2) % len(words)]} ?")
        if config == "stsb":
            y = round(5.0 * i / (ROWS - 1), 2)
        else:
            y = i % len(LABELS[config])
        out.append((texts, y))
    return out


def main(glue, out_dir):
    out_dir = Path(out_dir)
    manifest = {}
    for config, columns in COLUMNS.items():
        for split in SPLITS.get(config, ["train", "validation", "test"]):
            rows = None if split.startswith("test") else tsv_rows(glue, config, split)
            source = "tsv" if rows else "synthetic"
            if rows is None:
                rows = synthetic_rows(config, split)
            if split.startswith("test"):
                rows = [(t, -1.0 if config == "stsb" else -1) for t, _ in rows]
            data = {c: [r[0][k] for r in rows] for k, c in enumerate(columns)}
            label_type = pa.float32() if config == "stsb" else pa.int64()
            data["label"] = pa.array([r[1] for r in rows], type=label_type)
            # idx from 100 so that tests can tell it from the row number.
            data["idx"] = pa.array([100 + i for i in range(len(rows))], type=pa.int32())
            table = pa.table(data)
            path = out_dir / config / f"{split}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path, compression="zstd" if config == "mnli" else "snappy")
            manifest[f"{config}/{split}"] = {
                "source": source,
                "rows": len(rows),
                "texts": [r[0] for r in rows],
                "labels": [r[1] for r in rows],
            }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
