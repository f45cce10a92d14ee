"""A small SentencePiece unigram model and what the sentencepiece library makes of some
test sentences, for tests/augment_spm.rs (the Rust spm -> tokenizers conversion).

Trains on the first 4,000 SST-2 and 1,000 MRPC training sentences with sentencepiece's
defaults (unigram, nmt_nfkc normalisation, dummy prefix, whitespace collapsing), then
writes tests/fixtures/spm/glue-unigram.spm and tests/fixtures/spm/expected.json with the
pieces and ids `sp.encode` returns and the text `sp.decode` rebuilds.

Usage: python tests/scripts/make_spm_fixture.py GLUE_DIR OUT_DIR
"""
import csv
import io
import json
import sys
from pathlib import Path

import sentencepiece as spm

SENTENCES = [
    "hide new secretions from the parental units",
    "The movie was surprisingly good, and the actors shine!",
    "  leading, trailing   and   repeated   spaces  ",
    "tabs\tand\nnewlines",
    "Ｆｕｌｌ－ｗｉｄｔｈ ｌｅｔｔｅｒｓ and ①②③ and ﬁ ligatures",
    "Café, naïve, résumé, Zürich, São Paulo",
    "unknown characters: 日本語 😀 ∮ ⅞",
    "numbers 1,234.56 and 3rd, 42nd; e-mail: a@b.c",
    "",
    "x",
    "\"Quotes\" and 'apostrophes' aren't dropped -- dashes — too…",
]


def read_tsv(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def main(glue_dir, out_dir):
    glue, out = Path(glue_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sst = [r[0] for r in read_tsv(glue / "SST-2/train.tsv")[1:4001]]
    mrpc = [r[3] for r in read_tsv(glue / "MRPC/train.tsv")[1:1001]]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sst + mrpc),
        model_writer=model,
        vocab_size=1000,
        model_type="unigram",
        character_coverage=1.0,
        num_threads=1,
        seed_sentencepiece_size=100000,
    )
    (out / "glue-unigram.spm").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    cases = []
    for text in SENTENCES + sst[4:12]:
        ids = sp.encode(text, out_type=int)
        cases.append(
            {
                "text": text,
                "pieces": sp.encode(text, out_type=str),
                "ids": ids,
                "decoded": sp.decode(ids),
            }
        )
    meta = {
        "vocab_size": sp.get_piece_size(),
        "unk_id": sp.unk_id(),
        "bos_id": sp.bos_id(),
        "eos_id": sp.eos_id(),
        "sentencepiece": spm.__version__,
        "cases": cases,
    }
    (out / "expected.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
