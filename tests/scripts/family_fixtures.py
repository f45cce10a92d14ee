"""Tiny random checkpoints of every supported encoder family, with transformers'
outputs on one padded batch, for the parity tests (tests/families.rs).

For each family it writes tests/fixtures/families/<family>/: the
`<Family>ForSequenceClassification` checkpoint as `save_pretrained` writes it
(config.json, model.safetensors); a tiny tokenizer with the family's special tokens
(RoBERTa: byte-level BPE, XLM-R: SentencePiece-style Unigram, both trained here on a
few sentences; the others word-level), saved by transformers' tokenizer
(tokenizer.json, tokenizer_config.json) with
tokenization.json, transformers' ids for some sentences and pairs; and
reference.safetensors: the batch (input_ids, token_type_ids, attention_mask) and
transformers' outputs (hidden_states stacked, attention probabilities stacked,
logits). The fixtures are committed, so CI needs no torch.

Usage: python tests/scripts/family_fixtures.py [OUT_DIR]
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    MPNetConfig,
    MPNetForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

VOCAB = 99
SHAPE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=40,
    num_labels=3,
)
# <s>-style vocabularies (RoBERTa, XLM-R, MPNet) and [CLS]-style ones (ELECTRA, DistilBERT).
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


CORPUS = [
    "the movie was a delight from start to finish",
    "an awful , boring film with a plot that goes nowhere",
    "Its actors are charming and the story is funny",
    "I hated every minute of this dull and lifeless mess",
    "a warm, witty and wonderfully acted comedy",
    "the director's best work in years",
    "not good , not bad , just forgettable",
    "Hollywood rarely makes films this smart",
]
TEXTS = [
    ["the movie was charming"],
    ["An unexpectedly funny, smart film!"],
    ["a boring plot", "the actors were wonderful"],
    ["Zyx qwv (unknown) words", "and numbers 12345"],
]
BPE_VOCAB = 300
UNIGRAM_VOCAB = 120


def bpe_tokenizer():
    """RoBERTa's kind: byte-level BPE with <s> A </s></s> B </s> pairs."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=BPE_VOCAB, special_tokens=ROBERTA_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return tok


def unigram_tokenizer():
    """XLM-R's kind: a SentencePiece-style Unigram model (Metaspace pre-tokenizer)."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(
        vocab_size=UNIGRAM_VOCAB, special_tokens=ROBERTA_SPECIALS, unk_token="<unk>"))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return tok


def families():
    roberta = dict(SHAPE, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                   layer_norm_eps=1e-5, max_position_embeddings=42)
    return {
        "roberta": (RobertaConfig(**dict(roberta, vocab_size=BPE_VOCAB)),
                    RobertaForSequenceClassification, ROBERTA_SPECIALS),
        "xlm-roberta": (XLMRobertaConfig(**dict(roberta, vocab_size=UNIGRAM_VOCAB)),
                        XLMRobertaForSequenceClassification, ROBERTA_SPECIALS),
        # embedding_size != hidden_size: the embedding projection is exercised.
        "electra": (ElectraConfig(**SHAPE, embedding_size=16), ElectraForSequenceClassification,
                    BERT_SPECIALS),
        "distilbert": (DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4,
                                        hidden_dim=37, max_position_embeddings=40, num_labels=3),
                       DistilBertForSequenceClassification, BERT_SPECIALS),
        "mpnet": (MPNetConfig(**dict(SHAPE, max_position_embeddings=42), pad_token_id=1),
                  MPNetForSequenceClassification, ROBERTA_SPECIALS),
    }


def tokenizer(name, specials):
    if name == "roberta":
        return bpe_tokenizer()
    if name == "xlm-roberta":
        return unigram_tokenizer()
    vocab = {t: i for i, t in enumerate(specials)}
    for i in range(len(specials), VOCAB):
        vocab[f"w{i}"] = i
    unk = specials[3] if specials is ROBERTA_SPECIALS else specials[1]
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if specials is ROBERTA_SPECIALS:
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    else:
        tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    return tok


def batch(specials, pair_types, vocab):
    """Three rows of 12, 7 and 3 tokens, padded to 12; row 0 is a sentence pair."""
    g = torch.Generator().manual_seed(7)
    pad = specials.index("<pad>") if "<pad>" in specials else 0
    first = 0 if specials is ROBERTA_SPECIALS else 2
    lengths = [12, 7, 3]
    ids = torch.full((3, 12), pad, dtype=torch.long)
    types = torch.zeros((3, 12), dtype=torch.long)
    mask = torch.zeros((3, 12), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(len(specials), vocab, (n,), generator=g)
        ids[row, 0] = first
        mask[row, :n] = 1
    if pair_types:
        types[0, 6:12] = 1
    return ids, types, mask


def tokenization_reference(out_dir):
    """Reloads the tokenizer with transformers and saves it as a hub folder has it;
    its ids for TEXTS are the reference for ours."""
    hf_tokenizer = AutoTokenizer.from_pretrained(out_dir)
    hf_tokenizer.save_pretrained(out_dir)
    ids_of = [hf_tokenizer(*t)["input_ids"] for t in TEXTS]
    (out_dir / "tokenization.json").write_text(json.dumps(
        {"tokenizer": type(hf_tokenizer).__name__, "texts": TEXTS, "input_ids": ids_of},
        indent=1) + "\n")


def main():
    out_root = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/families")
    for seed, (name, (config, cls, specials)) in enumerate(families().items()):
        torch.manual_seed(100 + seed)
        config._attn_implementation = "eager"
        model = cls(config).eval()
        # Weights far from their initialisation, so that every tensor shows in the outputs.
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.3)
        ids, types, mask = batch(specials, getattr(config, "type_vocab_size", 0) > 1,
                                 config.vocab_size)
        kwargs = dict(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                      output_attentions=True)
        if name == "electra":
            kwargs["token_type_ids"] = types
        with torch.no_grad():
            out = model(**kwargs)
        out_dir = out_root / name
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer(name, specials).save(str(out_dir / "tokenizer.json"))
        if name in ("roberta", "xlm-roberta"):
            tokenization_reference(out_dir)
        save_file(
            {
                "input_ids": ids.to(torch.int64),
                "token_type_ids": types.to(torch.int64),
                "attention_mask": mask.to(torch.int64),
                "hidden_states": torch.stack(out.hidden_states).contiguous(),
                "attentions": torch.stack(out.attentions).contiguous(),
                "logits": out.logits.contiguous(),
            },
            out_dir / "reference.safetensors",
        )
        print(name, sorted(k for k in model.state_dict()))


if __name__ == "__main__":
    main()
