"""PyTorch reference for benches/distill.rs: the same measurements, same shapes.

transformers BertForSequenceClassification, random weights: eager attention where the
distillation needs the pre-softmax scores, the default (sdpa) for inference rows.
Each measurement runs in its own subprocess (peak RSS from /proc/self/status VmHWM)
and prints one JSON line {"name", "seconds", "peak_mb", "user_s", "sys_s", "minflt"}
(CPU seconds and minor page faults per timed run); with onnxruntime installed,
the student inference rows are also measured through an ONNX export (ort_b1, ort_b32).
The quickstart row is benches/pytorch_quickstart.py (the quick-start recipe's whole job)
and adds both dev accuracies to its line.

    python benches/pytorch_reference.py [--only step,teacher,...] [--threads 2]
        [--device cpu|cuda:0] [--batch 16]

--batch sets the batch of the step, teacher and student rows; on a GPU, timings wait
for the device (torch.cuda.synchronize) and the onnxruntime rows are left out.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The epoch rows use the quick start's data and shapes (this folder is on sys.path).
import pytorch_quickstart
from pytorch_quickstart import BATCH as EPOCH_BATCH
from pytorch_quickstart import GLUE, MINILM
from pytorch_quickstart import MAX_LEN as EPOCH_MAX_LEN
from pytorch_quickstart import keep_scores
from pytorch_quickstart import TRAIN_LIMIT as SST2_SENTENCES

SST2 = GLUE / "SST-2/train.tsv"
VOCAB = 30522
DEVICE = "cpu"
STEP_BATCH = 16
ALL = [
    "step", "teacher", "student", "epoch_pad64", "epoch_grouped", "infer_b1", "infer_b32",
    "quickstart",
]


def config(hidden, layers, heads, ffn, labels=2, attention="eager"):
    """Eager attention where the pre-softmax scores are kept (distillation rows);
    inference rows pass transformers' default, sdpa, as users get it."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        num_labels=labels,
        attn_implementation=attention,
    )


def model(cfg, seed):
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(cfg).to(DEVICE)


def random_input(batch, seq, seed=1):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, VOCAB, (batch, seq), generator=g).to(DEVICE)
    return ids, torch.ones_like(ids)


class Student:
    def __init__(self, cfg, teacher_hidden):
        import torch

        self.model = model(cfg, 7).train()
        self.proj = torch.nn.Linear(cfg.hidden_size, teacher_hidden).to(DEVICE)
        params = list(self.model.named_parameters()) + [
            ("fit_dense." + n, p) for n, p in self.proj.named_parameters()
        ]
        no_decay = lambda n: n.endswith(".bias") or "LayerNorm" in n
        groups = [
            {"params": [p for n, p in params if not no_decay(n)], "weight_decay": 0.01},
            {"params": [p for n, p in params if no_decay(n)], "weight_decay": 0.0},
        ]
        self.params = [p for _, p in params]
        self.opt = torch.optim.AdamW(groups, lr=5e-5, eps=1e-6)


def zero_masked(a):
    import torch

    return torch.where(a <= -100, torch.zeros_like(a), a)


def distill_loss(s, t, proj, logits):
    """TinyBERT's losses on pre-softmax scores (transformers returns probabilities, so
    the hook below keeps the scores); hidden MSE through the projection; soft CE at T=1."""
    import torch.nn.functional as F

    every = len(t.scores) // len(s.scores)
    loss = 0.0
    for i, sa in enumerate(s.scores):
        loss = loss + F.mse_loss(zero_masked(sa), zero_masked(t.scores[(i + 1) * every - 1]))
    for i, sh in enumerate(s.hidden_states):
        loss = loss + F.mse_loss(proj(sh), t.hidden_states[i * every])
    if logits:
        loss = loss + (-F.softmax(t.logits, -1) * F.log_softmax(s.logits, -1)).sum(-1).mean()
    return loss


def run_model(m, ids, mask, store):
    store.clear()
    out = m(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    out.scores = list(store)
    store.clear()
    return out


def sync():
    if DEVICE.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class Usage:
    """CPU seconds and minor page faults used since creation, per run (as the Rust side)."""

    def __init__(self):
        import resource

        self.start = resource.getrusage(resource.RUSAGE_SELF)

    def per_run(self, runs):
        import resource

        end = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "user_s": (end.ru_utime - self.start.ru_utime) / runs,
            "sys_s": (end.ru_stime - self.start.ru_stime) / runs,
            "minflt": (end.ru_minflt - self.start.ru_minflt) / runs,
        }


def timed(runs, f):
    """(median seconds, per-run usage) of `runs` calls after one warm-up call."""
    f()
    sync()
    times = []
    usage = Usage()
    for _ in range(runs):
        start = time.perf_counter()
        f()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), usage.per_run(runs)


def measure_step(which):
    import torch

    store = keep_scores()
    ids, mask = random_input(STEP_BATCH, 128)
    teacher = model(config(768, 12, 12, 3072), 3).eval()

    def teach():
        with torch.no_grad():
            return run_model(teacher, ids, mask, store)

    if which == "teacher":
        return timed(3, teach)
    student = Student(config(312, 4, 12, 1200), 768)

    def student_step(t):
        s = run_model(student.model, ids, mask, store)
        loss = distill_loss(s, t, student.proj, True)
        student.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.params, 1.0)
        student.opt.step()

    if which == "student":
        t = teach()
        del teacher
        return timed(3, lambda: student_step(t))
    return timed(3, lambda: student_step(teach()))


def sst2_ids():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(MINILM))
    sentences, _ = pytorch_quickstart.read_sst2(SST2, SST2_SENTENCES)
    return pytorch_quickstart.encode(tok, sentences)


def batches(lengths, grouped):
    order = list(range(len(lengths)))
    if grouped:
        order.sort(key=lambda i: (lengths[i], i))
    return [order[i : i + EPOCH_BATCH] for i in range(0, len(order), EPOCH_BATCH)]


def batch_input(ids, rows, pad_to):
    import torch

    seq = pad_to or max(len(ids[r]) for r in rows)
    x = torch.zeros((len(rows), seq), dtype=torch.long)
    m = torch.zeros((len(rows), seq), dtype=torch.long)
    for b, r in enumerate(rows):
        x[b, : len(ids[r])] = torch.tensor(ids[r])
        m[b, : len(ids[r])] = 1
    return x.to(DEVICE), m.to(DEVICE)


def measure_epoch(grouped):
    import torch

    store = keep_scores()
    ids = sst2_ids()
    plan = batches([len(i) for i in ids], grouped)
    teacher = model(config(384, 6, 12, 1536), 3).eval()
    student = Student(config(312, 3, 12, 1200), 384)
    usage = Usage()
    start = time.perf_counter()
    for rows in plan:
        x, m = batch_input(ids, rows, None if grouped else EPOCH_MAX_LEN)
        with torch.no_grad():
            t = run_model(teacher, x, m, store)
        s = run_model(student.model, x, m, store)
        loss = distill_loss(s, t, student.proj, False)
        student.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.params, 1.0)
        student.opt.step()
    sync()
    return time.perf_counter() - start, usage.per_run(1)


def measure_inference(batch):
    import torch

    m = model(config(312, 4, 12, 1200, attention="sdpa"), 5).eval()
    ids, mask = random_input(batch, 64, 2)
    runs = 50 if batch == 1 else 10

    def f():
        with torch.no_grad():
            m(input_ids=ids, attention_mask=mask).logits

    return timed(runs, f)


def measure_ort(batch, threads):
    import numpy as np
    import onnxruntime as ort
    import torch

    m = model(config(312, 4, 12, 1200), 5).eval()
    ids, mask = random_input(batch, 64, 2)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "student.onnx")
        torch.onnx.export(
            m,
            (ids, mask),
            path,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}},
            dynamo=False,
        )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        feed = {"input_ids": ids.numpy().astype(np.int64), "attention_mask": mask.numpy().astype(np.int64)}
        runs = 50 if batch == 1 else 10
        return timed(runs, lambda: sess.run(None, feed))


def peak_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def measure_quickstart(threads):
    """benches/pytorch_quickstart.py's whole job, into a scratch folder."""
    usage = Usage()
    with tempfile.TemporaryDirectory() as d:
        result = pytorch_quickstart.run(threads, d)
    return result.pop("seconds"), {**usage.per_run(1), **result}


def run_one(name, threads):
    if name == "quickstart":
        # Timed from before torch's import, as the job a user starts.
        seconds, usage = measure_quickstart(threads)
        print(json.dumps({"name": name, "seconds": round(seconds, 2), "peak_mb": round(peak_mb()), **usage}))
        return
    import torch

    torch.set_num_threads(threads)
    if name in ("step", "teacher", "student"):
        seconds, usage = measure_step(name)
    elif name.startswith("epoch_"):
        seconds, usage = measure_epoch(name == "epoch_grouped")
    elif name.startswith("infer_b"):
        seconds, usage = measure_inference(int(name[len("infer_b") :]))
    elif name.startswith("ort_b"):
        seconds, usage = measure_ort(int(name[len("ort_b") :]), threads)
    else:
        raise SystemExit(f"unknown measurement {name}")
    print(json.dumps({"name": name, "seconds": round(seconds, 4), "peak_mb": round(peak_mb()), **usage}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(ALL))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    global DEVICE, STEP_BATCH
    DEVICE, STEP_BATCH = args.device, args.batch
    if args.run:
        run_one(args.run, args.threads)
        return
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        print(f"pytorch reference skipped: {e}", file=sys.stderr)
        return
    names = [n for n in args.only.split(",") if n]
    try:
        import onnxruntime  # noqa: F401

        if DEVICE != "cpu":
            raise ImportError("onnxruntime rows are CPU only")
        names += [n.replace("infer_", "ort_") for n in names if n.startswith("infer_")]
    except ImportError:
        print("onnxruntime not installed: no onnxruntime rows", file=sys.stderr)
    if "quickstart" in names and DEVICE != "cpu":
        print("quickstart row skipped: it runs on the CPU", file=sys.stderr)
        names.remove("quickstart")
    if any(n.startswith("epoch_") or n == "quickstart" for n in names) and not (
        MINILM.exists() and SST2.exists()
    ):
        print(f"epoch rows skipped: need {MINILM} and {SST2}", file=sys.stderr)
        names = [n for n in names if not (n.startswith("epoch_") or n == "quickstart")]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    for name in names:
        print(f"pytorch: {name} ...", file=sys.stderr)
        out = subprocess.run(
            [
                sys.executable, __file__, "--run", name, "--threads", str(args.threads),
                "--device", DEVICE, "--batch", str(STEP_BATCH),
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        if out.returncode != 0:
            print(f"pytorch: {name} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        sys.stdout.write(out.stdout)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
