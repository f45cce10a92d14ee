"""DistilBERT's sinusoidal position tables as transformers builds them, for
tests/families.rs (a random DistilBERT with `sinusoidal_pos_embds` must hold exactly
these, before and after training).

It builds DistilBertModel with sinusoidal_pos_embds=True, max_position_embeddings=128
and dim 16 and 32 (the tiny student's and teacher's widths), and writes each
model's position table to tests/fixtures/distilbert_sinusoidal.safetensors as
`width_16` and `width_32`. Committed, so CI needs no torch.

Usage: python tests/scripts/sinusoidal_reference.py [OUT_FILE]
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import DistilBertConfig, DistilBertModel


def table(width):
    config = DistilBertConfig(vocab_size=30, dim=width, n_layers=1, n_heads=4, hidden_dim=2 * width,
                              max_position_embeddings=128, sinusoidal_pos_embds=True)
    torch.manual_seed(0)
    model = DistilBertModel(config)
    return model.embeddings.position_embeddings.weight.detach().clone().contiguous()


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else \
        Path(__file__).resolve().parents[1] / "fixtures" / "distilbert_sinusoidal.safetensors"
    save_file({f"width_{w}": table(w) for w in (16, 32)}, str(out))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
