"""The quick start in PyTorch: what `candle-distill run recipes/quickstart-cpu.toml` does,
with transformers, for the quickstart row of benches/distill.rs.

The same job, step for step (each setting is the recipe's or a stage default of
src/recipe.rs and src/distill/trainer.rs):
- data: the first 4,000 rows of SST-2 train.tsv; the whole dev.tsv; the MiniLM
  tokenizer, truncated to 64 tokens; each batch padded to its longest row;
- batches: shuffled, sorted by length within chunks of 50 batches, the batches shuffled
  (src/data/batch.rs `batch_order`), drawn from a port of candle-distill's generator
  (src/rng.rs, xoshiro256++) seeded as each stage seeds it, so both sides train on the
  same batches in the same order (`--order python`: Python's generator instead);
- optimiser: AdamW (betas 0.9/0.999, eps 1e-6, weight decay 0.01 except biases and
  LayerNorm), gradients clipped to norm 1; a 10% linear warm-up then linear decay where
  the stage has one, a constant rate otherwise;
- teacher: all-MiniLM-L6-v2 with a new 2-class head, fine-tuned on gold labels, 1 epoch,
  lr 1e-4, batch 32;
- student: the fine-tuned teacher with its layers 2, 4 and 6;
- intermediate stage, 3 epochs at 5e-5: attention-score MSE over real (query, key)
  pairs, hidden-state MSE over real tokens for layer pairs (1,2), (2,4), (3,6), and
  the embedding MSE; eager attention, since the losses need the pre-softmax scores;
- prediction stage, 3 epochs at 5e-5: soft cross-entropy at T = 1 against the teacher's
  logits, computed once;
- dev accuracy after every epoch of every stage (batches of 64 sorted by length); the
  best prediction-stage student is kept and saved with save_pretrained.

Timed from before `import torch` to the saved student. Elsewhere transformers' default
attention (sdpa), as users get it.

    python benches/pytorch_quickstart.py [--threads 2] [--seed 42]
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MINILM = ROOT / "target/test-assets/all-MiniLM-L6-v2"
GLUE = ROOT / "../shared/data/glue"
TRAIN_LIMIT = 4000
MAX_LEN = 64
BATCH = 32
EVAL_BATCH = 64
STUDENT_LAYERS = [2, 4, 6]
SEED = 42
# How often the parity fixture keeps a loss (candle-distill's default log_every).
LOG_EVERY = 10
# batch_order's sort chunk, in batches.
GROUP_CHUNK_BATCHES = 50


def read_sst2(path, limit=None):
    """(sentences, labels) of a GLUE SST-2 TSV (header `sentence<TAB>label`)."""
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:] if line.strip()]
    rows = rows[:limit] if limit else rows
    return [r[0] for r in rows], [int(r[1]) for r in rows]


def encode(tok, sentences):
    return [tok(s, truncation=True, max_length=MAX_LEN)["input_ids"] for s in sentences]


MASK64 = (1 << 64) - 1


def mix64(z):
    """src/rng.rs `mix64`, SplitMix64's finaliser."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & MASK64


class CandleRng:
    """src/rng.rs `Rng` (xoshiro256++ seeded by SplitMix64): the draws that order
    candle-distill's batches, so that PyTorch can train on the same ones."""

    def __init__(self, seed):
        self.s = []
        for _ in range(4):
            seed = (seed + 0x9E3779B97F4A7C15) & MASK64
            self.s.append(mix64(seed))

    @classmethod
    def for_stage(cls, recipe_seed, stage_index):
        """The batch-order generator of a run's stage (src/distill/trainer.rs
        `fresh_progress`: the stage's base generator, fork 1)."""
        base = cls(recipe_seed ^ ((stage_index * 0x9E3779B9) & MASK64))
        return base.fork(1)

    def fork(self, salt):
        return CandleRng(self.next_u64() ^ ((salt * 0xA0761D6478BD642F) & MASK64))

    def next_u64(self):
        s = self.s
        result = (rotl((s[0] + s[3]) & MASK64, 23) + s[0]) & MASK64
        t = (s[1] << 17) & MASK64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def shuffle(self, items):
        for i in range(len(items) - 1, 0, -1):
            j = (self.next_u64() * (i + 1)) >> 64
            items[i], items[j] = items[j], items[i]


# Each stage's index in its candle-distill run (the teacher's fine-tuning is stage 0 of
# its own run) and its Python seed offset (the script's earlier draws).
STAGES = {"teacher": (0, 0), "intermediate": (0, 1), "prediction": (1, 2)}


def order_rng(order, seed, stage):
    """The generator of a stage's batch order: candle-distill's draws, or Python's."""
    index, offset = STAGES[stage]
    if order == "candle":
        return CandleRng.for_stage(seed, index)
    return random.Random(seed + offset)


def batch_order(lengths, rng):
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = BATCH * GROUP_CHUNK_BATCHES
    for c in range(0, len(order), chunk):
        order[c : c + chunk] = sorted(order[c : c + chunk], key=lambda i: -lengths[i])
    batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    rng.shuffle(batches)
    return batches


def padded(ids, rows):
    import torch

    seq = max(len(ids[r]) for r in rows)
    x = torch.zeros((len(rows), seq), dtype=torch.long)
    m = torch.zeros((len(rows), seq), dtype=torch.long)
    for b, r in enumerate(rows):
        x[b, : len(ids[r])] = torch.tensor(ids[r])
        m[b, : len(ids[r])] = 1
    return {"input_ids": x, "attention_mask": m}


def lr_at(base, step, total, warmup, linear):
    """src/train/schedule.rs `lr_at`."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if not linear:
        return base
    return base * min(max((total - step) / max(total - warmup, 1), 0.0), 1.0)


def optimizer(model, lr):
    import torch

    def decays(name):
        return not (name.endswith(".bias") or "LayerNorm" in name)

    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if decays(n)], "weight_decay": 0.01},
        {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6)


def logits_of(model, ids, batch=EVAL_BATCH):
    """Logits of every row, in batches sorted by length (eval mode, no gradients)."""
    import torch

    model.eval()
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out = torch.zeros((len(ids), model.config.num_labels))
    with torch.no_grad():
        for i in range(0, len(order), batch):
            rows = order[i : i + batch]
            out[rows] = model(**padded(ids, rows)).logits
    return out


def accuracy(model, dev):
    ids, labels = dev
    import torch

    return (logits_of(model, ids).argmax(-1) == torch.tensor(labels)).float().mean().item()


def train_stage(model, train_ids, epochs, lr, warmup_ratio, linear, loss_of, dev, rng, history=None):
    """One stage: epochs of steps, batches drawn from `rng`, dev accuracy after each
    (appended to `history` when given); returns (best accuracy, its state)."""
    import torch

    total = epochs * ((len(train_ids) + BATCH - 1) // BATCH)
    warmup = round(warmup_ratio * total)
    opt = optimizer(model, lr)
    lengths = [len(i) for i in train_ids]
    best, best_state, step = -1.0, None, 0
    started = time.perf_counter()
    for _ in range(epochs):
        for rows in batch_order(lengths, rng):
            model.train()
            for g in opt.param_groups:
                g["lr"] = lr_at(lr, step, total, warmup, linear)
            loss = loss_of(rows)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
        acc = accuracy(model, dev)
        if history is not None:
            history.append(acc)
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
        print(f"step {step}: dev {acc:.4f} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return best, best_state


def keep_scores():
    """Makes eager attention record its pre-softmax scores (QK^T/sqrt(d) + mask) on the
    output, as TinyBERT's modified BERT returns them; costs nothing extra to compute."""
    import torch
    import transformers.models.bert.modeling_bert as mb

    original_softmax = torch.nn.functional.softmax
    store = []

    def eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        if scaling is None:
            scaling = query.size(-1) ** -0.5
        w = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            w = w + attention_mask[:, :, :, : key.shape[-2]]
        store.append(w)
        p = original_softmax(w, dim=-1)
        p = torch.nn.functional.dropout(p, p=dropout, training=module.training)
        out = torch.matmul(p, value).transpose(1, 2).contiguous()
        return out, None

    mb.eager_attention_forward = eager
    return store


def states(model, batch, store):
    store.clear()
    out = model(**batch, output_hidden_states=True)
    scores = list(store)
    store.clear()
    return out.hidden_states, scores


def intermediate_loss(student, teacher, train_ids, store):
    """TinyBERT's intermediate losses, averaged over real tokens (normalise = tokens)."""
    import torch

    pairs = [(j + 1, t) for j, t in enumerate(STUDENT_LAYERS)]

    def loss_of(rows):
        batch = padded(train_ids, rows)
        with torch.no_grad():
            t_hidden, t_scores = states(teacher, batch, store)
        s_hidden, s_scores = states(student, batch, store)
        mf = batch["attention_mask"].float()
        tokens = mf[:, :, None]
        pair_mask = (mf[:, :, None] * mf[:, None, :])[:, None]
        heads = s_scores[0].shape[1]
        width = s_hidden[0].shape[-1]

        def hidden(s, t):
            return ((s - t) ** 2 * tokens).sum() / (tokens.sum() * width)

        loss = hidden(s_hidden[0], t_hidden[0])
        for s, t in pairs:
            a = ((s_scores[s - 1] - t_scores[t - 1]) ** 2 * pair_mask).sum()
            loss = loss + a / (pair_mask.sum() * heads)
            loss = loss + hidden(s_hidden[s], t_hidden[t])
        return loss

    return loss_of


def student_of(teacher):
    from transformers import BertForSequenceClassification

    config = teacher.config.__class__.from_dict(teacher.config.to_dict())
    config.num_hidden_layers = len(STUDENT_LAYERS)
    student = BertForSequenceClassification(config)
    source = teacher.state_dict()
    state = {}
    for name in student.state_dict():
        parts = name.split(".")
        if parts[:3] == ["bert", "encoder", "layer"]:
            parts[3] = str(STUDENT_LAYERS[int(parts[3])] - 1)
        state[name] = source[".".join(parts)]
    student.load_state_dict(state, strict=True)
    return student


def traced(loss_of, trace, stage):
    """`loss_of`, and the list for the stage's dev accuracies: with a `trace` (a dict),
    every LOG_EVERY-th step's loss and each epoch's accuracy are kept in trace[stage]."""
    if trace is None:
        return loss_of, None
    kept = trace.setdefault(stage, {"losses": {}, "dev_accuracy": []})
    step = [0]

    def f(rows):
        loss = loss_of(rows)
        step[0] += 1
        if step[0] % LOG_EVERY == 0:
            kept["losses"][str(step[0])] = loss.item()
        return loss

    return f, kept["dev_accuracy"]


def distill(teacher, train_ids, dev, seed, order, trace=None):
    """The intermediate and prediction stages from the fine-tuned `teacher` (in eval
    mode); returns the student and the prediction stage's best accuracy and its state."""
    import torch.nn.functional as F

    student = student_of(teacher)
    store = keep_scores()
    for m in (teacher, student):
        m.set_attn_implementation("eager")
    loss, history = traced(intermediate_loss(student, teacher, train_ids, store), trace, "intermediate")
    rng = order_rng(order, seed, "intermediate")
    train_stage(student, train_ids, 3, 5e-5, 0.0, False, loss, dev, rng, history)
    for m in (teacher, student):
        m.set_attn_implementation("sdpa")

    soft = logits_of(teacher, train_ids).softmax(-1)

    def soft_ce(rows):
        logits = student(**padded(train_ids, rows)).logits
        return -(soft[rows] * F.log_softmax(logits, -1)).sum(-1).mean()

    loss, history = traced(soft_ce, trace, "prediction")
    rng = order_rng(order, seed, "prediction")
    return (student, *train_stage(student, train_ids, 3, 5e-5, 0.1, True, loss, dev, rng, history))


def run(threads, out_dir, seed=SEED, order="candle"):
    started = time.perf_counter()
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(MINILM))
    sentences, labels = read_sst2(GLUE / "SST-2/train.tsv", TRAIN_LIMIT)
    dev_sentences, dev_labels = read_sst2(GLUE / "SST-2/dev.tsv")
    train_ids, dev = encode(tok, sentences), (encode(tok, dev_sentences), dev_labels)
    gold = torch.tensor(labels)

    teacher = BertForSequenceClassification.from_pretrained(str(MINILM), num_labels=2)
    ce = lambda rows: F.cross_entropy(teacher(**padded(train_ids, rows)).logits, gold[rows])
    teacher_rng = order_rng(order, seed, "teacher")
    teacher_acc, state = train_stage(teacher, train_ids, 1, 1e-4, 0.1, True, ce, dev, teacher_rng)
    teacher.load_state_dict(state)
    teacher.eval()

    student, student_acc, state = distill(teacher, train_ids, dev, seed, order)
    student.load_state_dict(state)
    student.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {
        "seconds": time.perf_counter() - started,
        "teacher_accuracy": teacher_acc,
        "student_accuracy": student_acc,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=SEED, help="the recipe's is 42")
    ap.add_argument(
        "--order",
        choices=["candle", "python"],
        default="candle",
        help="whose generator orders the batches: candle-distill's (the same batches) or Python's",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(run(args.threads, d, args.seed, args.order)))


if __name__ == "__main__":
    main()
