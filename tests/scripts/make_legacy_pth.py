"""Writes tests/fixtures/legacy_pytorch_model.bin: a tiny state dict in PyTorch's legacy
(pre-1.6, non-zip) format, as old hub checkpoints are stored.

    /work/pyenv/bin/python tests/scripts/make_legacy_pth.py   # torch 2.15

It covers what such files hold: shared storages (tied weights), a transposed view, a view at
a storage offset, float16, an int64 buffer, a bool buffer, and old gamma/beta names. The
values are arange-based so the Rust test (tests/weight_formats.rs) recomputes them.
"""
import collections
import pathlib

import torch

out = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "legacy_pytorch_model.bin"
g = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 10
sd = collections.OrderedDict()
sd["bert.embeddings.word_embeddings.weight"] = g
sd["cls.predictions.decoder.weight"] = g  # same storage
sd["bert.encoder.layer.0.attention.self.query.weight"] = g.t()  # strides (1, 6)
sd["bert.embeddings.LayerNorm.gamma"] = g[1]  # storage offset 6
sd["bert.embeddings.LayerNorm.beta"] = torch.tensor([0.5, -0.5, 1.0, -1.0, 2.0, -2.0], dtype=torch.float16)
sd["bert.embeddings.position_ids"] = torch.arange(8).unsqueeze(0)
sd["bert.mask"] = torch.tensor([True, False])
torch.save(sd, out, _use_new_zipfile_serialization=False)
assert not __import__("zipfile").is_zipfile(out)
back = torch.load(out)
assert all(torch.equal(back[k], v) for k, v in sd.items())
print(f"wrote {out} ({out.stat().st_size} bytes)")
