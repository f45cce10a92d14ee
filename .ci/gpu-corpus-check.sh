#!/usr/bin/env bash
# For a machine with an NVIDIA GPU (called by .ci/gpu-check.sh): a streamed general stage
# (a corpus of 20,000 lines, the tiny ELECTRA fixture as a headless teacher, 300 steps) on
# cuda:0, where one background thread reads the corpus's lanes ahead of the trainer, and
# on the CPU, where the trainer reads them itself (src/data/corpus/reader.rs). Both must
# finish, the reader thread must be seen only on the GPU, and the final losses must agree
# within 2%. Needs python3 with safetensors (to write the teacher without its head).
# BIN names the candle-distill binary (default: the carried target/gpu-bin one).
set -uo pipefail
cd "$(dirname "$0")/.."
bin="${BIN:-target/gpu-bin/candle-distill}"
W=/tmp/w; rm -rf $W; mkdir -p $W/glue/SST-2
python3 - <<'EOF'
import json, os, random, shutil
from safetensors.numpy import load_file, save_file
src, dst = 'tests/fixtures/families/electra', '/tmp/w/encoder'
os.makedirs(dst, exist_ok=True)
t = {k: v for k, v in load_file(src + '/model.safetensors').items() if not k.startswith('classifier.')}
save_file(t, dst + '/model.safetensors')
c = json.load(open(src + '/config.json'))
c['architectures'] = ['ElectraModel']; c.pop('id2label', None); c.pop('label2id', None)
json.dump(c, open(dst + '/config.json', 'w'))
for f in os.listdir(src):
    if f.startswith('tokeniz'): shutil.copy(src + '/' + f, dst + '/' + f)
words = "the movie was good bad a film great plot acting".split()
r = random.Random(1)
line = lambda lo, hi: " ".join(r.choice(words) for _ in range(r.randint(lo, hi)))
rows = ["sentence\tlabel"] + [line(3, 12) + "\t" + str(i % 2) for i in range(64)]
for s in ["train", "dev"]:
    open(f'/tmp/w/glue/SST-2/{s}.tsv', 'w').write("\n".join(rows) + "\n")
with open('/tmp/w/corpus.txt', 'w') as f:
    for i in range(20000): f.write(line(3, 20) + "\n\n")
EOF
cat > $W/recipe.toml <<EOF
version = 1
name = "corpus-on-gpu"
seed = 5
[teacher]
model = "$W/encoder"
[task]
name = "sst2"
data = "$W/glue"
max_seq_len = 24
[student]
from = "random"
layers = 2
hidden = 16
heads = 4
intermediate = 32
[[stages]]
name = "general"
kind = "general"
data = { source = "corpus", files = ["$W/corpus.txt"], shuffle_buffer = 64 }
epochs = 1000
max_steps = 300
learning_rate = 1e-3
batch_size = 16
EOF
declare -A last
for d in cpu cuda:0; do
  name="${d%%:*}"
  "$bin" run $W/recipe.toml --device "$d" --out "$W/run-$name" > "$W/log-$name" 2>&1 &
  pid=$!; seen=no
  while kill -0 $pid 2>/dev/null; do
    grep -qs corpus-reader /proc/$pid/task/*/comm && seen=yes
    sleep 0.02
  done
  wait $pid || { echo "$d: the run failed"; cat "$W/log-$name"; exit 1; }
  last[$name]="$(python3 -c "import json; L=[json.loads(l) for l in open('$W/run-$name/metrics.jsonl')]; print([l for l in L if l.get('stage')=='general' and 'loss' in l][-1]['loss'])")"
  echo "$d: 300 steps, final loss ${last[$name]}, a corpus-reader thread seen: $seen"
  want=no; [ "$name" = cuda ] && want=yes
  [ "$seen" = "$want" ] || { echo "$d: expected the reader thread seen: $want"; exit 1; }
done
python3 -c "a, b = ${last[cpu]}, ${last[cuda]}; d = abs(a - b) / abs(a); print(f'final losses {a:.5f} (cpu) and {b:.5f} (cuda): {d:.2%} apart'); assert d <= 0.02, 'more than 2% apart'"
