"""PyTorch's side of `real_distill::distillation_follows_pytorch_step_for_step`: writes
tests/fixtures/quickstart_trajectory.json.

The quick start, shortened to its first 320 SST-2 sentences, in two runs:
1. candle-distill fine-tunes the teacher (all-MiniLM-L6-v2 with a new head), as the
   test does, with the settings written into the fixture (`sets`);
2. PyTorch runs the two distillation stages of benches/pytorch_quickstart.py from that
   teacher, with dropout off and candle-distill's batch order: the fixture keeps each
   logged loss (every 10 steps, its LOG_EVERY) and each epoch's dev accuracy.
With no random draw left between the two sides, candle-distill's second run (the same
teacher, dropout off) must follow these numbers to float tolerance. The fixture also
keeps the teacher's dev accuracy, so that a teacher that changed is told apart from
distillation that changed.

    cargo build --release
    <venv with torch + transformers>/bin/python tests/scripts/quickstart_trajectory.py
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benches"))
import pytorch_quickstart as q  # noqa: E402

OUT = ROOT / "tests/fixtures/quickstart_trajectory.json"
TRAIN_LIMIT = 320
SETS = [
    f"task.train_limit={TRAIN_LIMIT}",
    "teacher.allow_weak_teacher=true",
    # Three epochs a stage, as benches/pytorch_quickstart.py `distill` runs them.
    "stages.0.epochs=3",
    "stages.1.epochs=3",
]


def finetuned_teacher(scratch):
    """candle-distill's fine-tuned teacher, as the test makes it."""
    out = scratch / "run"
    command = [
        str(ROOT / "target/release/candle-distill"),
        "run",
        str(ROOT / "recipes/quickstart-cpu.toml"),
        "--out",
        str(out),
        "--set",
        f"teacher.model={q.MINILM}",
        "--set",
        f"task.data={q.GLUE}",
    ]
    for s in SETS:
        command += ["--set", s]
    subprocess.run(command, check=True)
    return out / "teacher-finetune/checkpoints/best"


def main():
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(str(q.MINILM))
    sentences, _ = q.read_sst2(q.GLUE / "SST-2/train.tsv", TRAIN_LIMIT)
    dev_sentences, dev_labels = q.read_sst2(q.GLUE / "SST-2/dev.tsv")
    train_ids, dev = q.encode(tok, sentences), (q.encode(tok, dev_sentences), dev_labels)
    with tempfile.TemporaryDirectory() as scratch:
        teacher = BertForSequenceClassification.from_pretrained(
            str(finetuned_teacher(Path(scratch))),
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    teacher.eval()
    teacher_accuracy = q.accuracy(teacher, dev)
    stages = {}
    q.distill(teacher, train_ids, dev, q.SEED, "candle", stages)

    fixture = {
        "written_by": "tests/scripts/quickstart_trajectory.py",
        "torch": torch.__version__,
        "sets": SETS,
        "teacher_dev_accuracy": teacher_accuracy,
        "stages": stages,
    }
    OUT.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
