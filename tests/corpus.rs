//! General distillation streamed from a sharded corpus (`data = { source = "corpus" }`):
//! text, JSONL and compressed shards through `candle-distill run`, `plan` naming them,
//! and a run killed with SIGKILL mid-corpus resuming to the same student.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::common;
use candle_distill::testing::{tiny_config, write_random_classifier};
use common::tiny_run::{cli, free_port, kill_after_a_checkpoint, node, recipe, setup, weights};
use common::{read_json, succeed};

/// Writes the synthetic SST-2 sentences as three shards: plain text, gzip text (a
/// blank line between documents of five sentences), and zstd JSONL.
fn write_corpus(root: &Path) -> PathBuf {
    let train = std::fs::read_to_string(root.join("glue/SST-2/train.tsv")).unwrap();
    let sentences: Vec<&str> = train
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .collect();
    let dir = root.join("corpus");
    std::fs::create_dir_all(&dir).unwrap();
    let third = sentences.len() / 3;
    std::fs::write(dir.join("a.txt"), sentences[..third].join("\n")).unwrap();
    let mut text = String::new();
    for chunk in sentences[third..2 * third].chunks(5) {
        text += &(chunk.join("\n") + "\n\n");
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(text.as_bytes()).unwrap();
    std::fs::write(dir.join("b.txt.gz"), gz.finish().unwrap()).unwrap();
    let jsonl: String = sentences[2 * third..]
        .iter()
        .map(|s| serde_json::json!({ "id": 1, "body": s }).to_string() + "\n")
        .collect();
    let zst = zstd::stream::encode_all(jsonl.as_bytes(), 1).unwrap();
    std::fs::write(dir.join("c.jsonl.zst"), zst).unwrap();
    dir
}

/// The tiny run's recipe with its stages replaced: a general stage streaming the
/// corpus, then a short prediction stage.
fn corpus_recipe(root: &Path, corpus: &Path, max_steps: usize) -> PathBuf {
    let tiny = std::fs::read_to_string(recipe(root)).unwrap();
    let head = &tiny[..tiny.find("[[stages]]").unwrap()];
    let stages = format!(
        r#"[[stages]]
name = "general"
kind = "general"
data = {{ source = "corpus", files = ["{corpus}/*.txt*", "{corpus}/c.jsonl.zst"], text_field = "body", shuffle_buffer = 64 }}
epochs = 1000
max_steps = {max_steps}
learning_rate = 1e-3
batch_size = 2
checkpoint_every = 60
[[stages]]
name = "prediction"
kind = "prediction"
epochs = 1
learning_rate = 3e-3
batch_size = 16
"#,
        corpus = corpus.display(),
    );
    let path = root.join("general.toml");
    std::fs::write(&path, format!("{head}{stages}")).unwrap();
    path
}

fn general_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["stage"] == "general" && v.get("loss").is_some())
        .collect()
}

#[test]
fn a_general_stage_streams_shards_and_resumes_after_sigkill_to_the_same_student() {
    let dir = setup();
    let corpus = write_corpus(dir.path());
    // Batches of 2: 100-row chunks when grouping by length (50 batches), so the kill
    // after the first checkpoint (step 60) lands in the second chunk of an epoch.
    let recipe = corpus_recipe(dir.path(), &corpus, 400);

    let plan = succeed(cli().arg("plan").arg(&recipe), "plan");
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.contains("c.jsonl.zst, streamed in segments of up to 24 tokens"),
        "{plan}"
    );

    let straight = dir.path().join("straight");
    succeed(
        cli().arg("run").arg(&recipe).arg("--out").arg(&straight),
        "run",
    );
    let lines = general_lines(&straight);
    assert_eq!(lines.last().unwrap()["step"], 400);
    // The corpus (about 135 steps of 2 segments) was read over several epochs.
    let epochs = lines.last().unwrap()["epoch"].as_u64().unwrap();
    assert!(epochs >= 2, "{epochs} epochs");
    let mean = |l: &[serde_json::Value]| {
        l.iter().map(|v| v["loss"].as_f64().unwrap()).sum::<f64>() / l.len() as f64
    };
    let (first, last) = (mean(&lines[..20]), mean(&lines[lines.len() - 20..]));
    assert!(last < 0.7 * first, "general loss {first} -> {last}");
    let report = read_json(&straight.join("report.json"));
    assert_eq!(report["stages"][0]["steps"], 400);
    // The report says how long the streamed stage waited for its rows; the
    // prediction stage's rows were in memory.
    let seconds = |stage: usize, field: &str| report["stages"][stage][field].as_f64().unwrap();
    let reading = seconds(0, "data_seconds");
    assert!(
        reading > 0.0 && reading < seconds(0, "seconds"),
        "{reading} s reading"
    );
    assert_eq!(seconds(1, "data_seconds"), 0.0);
    let md = std::fs::read_to_string(straight.join("report.md")).unwrap();
    let share = format!("{:.1}%", 100.0 * reading / seconds(0, "seconds"));
    assert!(md.contains("| reading data |"), "{md}");
    assert!(
        md.lines()
            .any(|l| l.starts_with("| general | 400 |") && l.contains(&share)),
        "{md}"
    );
    assert!(
        md.lines()
            .any(|l| l.starts_with("| prediction |") && l.contains("| - |")),
        "{md}"
    );

    let killed = dir.path().join("killed");
    let mut child = cli();
    child.arg("run").arg(&recipe).arg("--out").arg(&killed);
    kill_after_a_checkpoint(child, &killed);
    let progress = read_json(&killed.join("checkpoints/last/progress.json"));
    assert_eq!(progress["stage"], 0, "killed after the general stage");
    eprintln!("killed at general step {}", progress["step"]);
    succeed(
        cli().arg("run").arg(&recipe).arg("--out").arg(&killed),
        "resume",
    );
    let a = weights(&straight.join("checkpoints/best/model.safetensors"));
    let b = weights(&killed.join("checkpoints/best/model.safetensors"));
    assert_eq!(a.len(), b.len());
    for (name, values) in &a {
        assert_eq!(values, &b[name], "{name} differs after resuming");
    }
    // The resumed stage logged the same losses from where it had stopped.
    assert_eq!(general_lines(&killed), lines);
}

#[test]
fn corpus_stages_without_max_steps_or_shards_are_refused_with_the_field() {
    let dir = setup();
    let corpus = write_corpus(dir.path());
    let recipe = corpus_recipe(dir.path(), &corpus, 10);
    let o = cli()
        .arg("plan")
        .arg(&recipe)
        .args(["--set", "stages.0.data.files=[\"nowhere/*.txt\"]"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("nowhere/*.txt: files: matches no file"),
        "{err}"
    );
    // 13 replicas: more than the 12 lanes an epoch is read in, refused before any work.
    let devices = vec!["cpu"; 13].join(",");
    for command in ["plan", "run"] {
        let o = cli()
            .arg(command)
            .arg(&recipe)
            .args(["--set", &format!("device=\"{devices}\"")])
            .output()
            .unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(
                "device: 13 data-parallel replicas: a streamed stage's data is read in 12 lanes"
            ),
            "{command}: {err}"
        );
    }
    let err = plan_without_max_steps(&recipe, 10);
    assert!(
        err.contains("stages[0].max_steps: is needed with a corpus"),
        "{err}"
    );
}

/// `plan`'s error for the recipe with its `max_steps = steps` line taken out.
fn plan_without_max_steps(recipe: &Path, steps: usize) -> String {
    let text = std::fs::read_to_string(recipe).unwrap();
    let line = format!("max_steps = {steps}\n");
    assert!(text.contains(&line));
    std::fs::write(recipe, text.replace(&line, "")).unwrap();
    let o = cli().arg("plan").arg(recipe).output().unwrap();
    assert!(!o.status.success());
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A pre-trained encoder without a task head (as bert-base or MiniLM are), made from
/// the tiny teacher by dropping its classifier.
fn write_headless_teacher(root: &Path) -> PathBuf {
    let (from, to) = (root.join("teacher"), root.join("encoder"));
    std::fs::create_dir_all(&to).unwrap();
    let tensors: std::collections::HashMap<String, candle_core::Tensor> =
        candle_core::safetensors::load(from.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap()
            .into_iter()
            .filter(|(name, _)| !name.starts_with("classifier."))
            .collect();
    candle_core::safetensors::save(&tensors, to.join("model.safetensors")).unwrap();
    let mut config = read_json(&from.join("config.json"));
    config["architectures"] = serde_json::json!(["BertModel"]);
    for key in ["id2label", "label2id"] {
        config.as_object_mut().unwrap().remove(key);
    }
    std::fs::write(to.join("config.json"), config.to_string()).unwrap();
    for f in ["vocab.txt", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    to
}

#[test]
fn a_general_only_run_uses_a_headless_teacher_as_it_is() {
    let dir = setup();
    let corpus = write_corpus(dir.path());
    let encoder = write_headless_teacher(dir.path());
    let recipe = corpus_recipe(dir.path(), &corpus, 30);
    let text = std::fs::read_to_string(&recipe).unwrap();
    // The general stage alone, from the encoder.
    let general_only = text[..text.rfind("[[stages]]").unwrap()].replace(
        &format!("model = \"{}\"", dir.path().join("teacher").display()),
        &format!("model = \"{}\"", encoder.display()),
    );
    assert!(general_only.contains("encoder"));
    std::fs::write(&recipe, &general_only).unwrap();
    let out = dir.path().join("run");
    succeed(cli().arg("run").arg(&recipe).arg("--out").arg(&out), "run");
    assert!(
        !out.join("teacher-finetune").exists(),
        "the teacher was fine-tuned"
    );
    let report = read_json(&out.join("report.json"));
    assert_eq!(report["teacher_head_used"], false);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("both heads are untrained"), "{md}");

    // A stage that takes the teacher's logits needs a trained head: with fine-tuning
    // off, the run stops before training and names the missing head.
    let model_line = format!("model = \"{}\"", encoder.display());
    let never = general_only.replace(&model_line, &format!("{model_line}\nfinetune = \"never\""));
    std::fs::write(
        &recipe,
        never + "[[stages]]\nkind = \"prediction\"\nepochs = 1\n",
    )
    .unwrap();
    let o = cli()
        .arg("run")
        .arg(&recipe)
        .arg("--out")
        .arg(dir.path().join("run2"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no sequence-classification head"), "{err}");
}

/// The general stage alone, 60 steps of batch 4 (a chunk is 200 rows), for a student
/// without dropout (so that replicas and one replica see the same network).
fn replica_recipe(root: &Path, corpus: &Path) -> PathBuf {
    let recipe = corpus_recipe(root, corpus, 60);
    let text = std::fs::read_to_string(&recipe).unwrap();
    let student = root.join("student");
    let mut config = tiny_config(16, 2, 4, 32);
    config.hidden_dropout_prob = 0.0;
    config.attention_probs_dropout_prob = 0.0;
    write_random_classifier(&student, &config, 11).unwrap();
    let from = format!("from = \"checkpoint\"\nmodel = \"{}\"\n", student.display());
    let text = text[..text.rfind("[[stages]]").unwrap()]
        .replace(
            "from = \"random\"\nlayers = 2\nhidden = 16\nheads = 4\nintermediate = 32\n",
            &from,
        )
        .replace("batch_size = 2\n", "batch_size = 4\n");
    assert!(text.contains("from = \"checkpoint\"") && text.contains("batch_size = 4"));
    std::fs::write(&recipe, text).unwrap();
    recipe
}

fn last_student(run: &Path) -> HashMap<String, Vec<f32>> {
    weights(&run.join("checkpoints/last/student.safetensors"))
}

#[test]
fn a_streamed_stage_on_replicas_or_nodes_trains_one_replicas_student() {
    let dir = setup();
    let corpus = write_corpus(dir.path());
    let recipe = replica_recipe(dir.path(), &corpus);
    let run = |devices: &str| {
        let out = dir.path().join(format!("on-{devices}"));
        let mut command = cli();
        command.arg("run").arg(&recipe).args(["--device", devices]);
        succeed(command.arg("--out").arg(&out), devices);
        assert_eq!(general_lines(&out).last().unwrap()["step"], 60);
        last_student(&out)
    };
    let alone = run("cpu");
    let two = run("cpu,cpu");
    for (students, what) in [(&two, "2 replicas"), (&run("cpu,cpu,cpu"), "3 replicas")] {
        let (diff, name) = max_abs_diff(&alone, students);
        assert!(
            diff < 1e-4,
            "{what}: `{name}` differs by {diff} from one replica"
        );
    }

    // Two nodes over TCP, each reading its own lanes: two local replicas' student.
    let nodes = dir.path().join("nodes");
    let port = free_port();
    let follower = node(&recipe, &nodes, 1, port, 120)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    succeed(&mut node(&recipe, &nodes, 0, port, 120), "node 0");
    let follower = follower.wait_with_output().unwrap();
    assert!(
        follower.status.success(),
        "node 1: {}",
        String::from_utf8_lossy(&follower.stderr)
    );
    assert!(
        last_student(&nodes) == two,
        "two nodes differ from two local replicas"
    );
}

fn max_abs_diff(a: &HashMap<String, Vec<f32>>, b: &HashMap<String, Vec<f32>>) -> (f32, String) {
    assert_eq!(a.len(), b.len());
    let mut worst = (0f32, String::new());
    for (name, x) in a {
        for (p, q) in x.iter().zip(&b[name]) {
            if (p - q).abs() > worst.0 {
                worst = ((p - q).abs(), name.clone());
            }
        }
    }
    worst
}

#[test]
fn a_prediction_stage_streams_an_unlabeled_transfer_set_with_the_teachers_logits() {
    let dir = setup();
    let train = std::fs::read_to_string(dir.path().join("glue/SST-2/train.tsv")).unwrap();
    let unlabeled = dir.path().join("transfer.txt.zst");
    let sentences: String = train
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .map(|s| format!("{s}\n"))
        .collect();
    std::fs::write(
        &unlabeled,
        zstd::stream::encode_all(sentences.as_bytes(), 1).unwrap(),
    )
    .unwrap();
    let tiny = std::fs::read_to_string(recipe(dir.path())).unwrap();
    let head = &tiny[..tiny.find("[[stages]]").unwrap()];
    let recipe = dir.path().join("transfer.toml");
    let stage = format!(
        "[[stages]]\nname = \"transfer\"\nkind = \"prediction\"\nepochs = 100\nmax_steps = 90\n\
         learning_rate = 3e-3\nbatch_size = 16\n\
         data = {{ source = \"unlabeled\", path = \"{}\", stream = true }}\n",
        unlabeled.display()
    );
    std::fs::write(&recipe, format!("{head}{stage}")).unwrap();

    let plan = succeed(cli().arg("plan").arg(&recipe), "plan");
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.contains("transfer.txt.zst, streamed"), "{plan}");
    let out = dir.path().join("run");
    succeed(cli().arg("run").arg(&recipe).arg("--out").arg(&out), "run");
    let losses: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["stage"] == "transfer" && v.get("loss").is_some())
        .map(|v| v["loss"].as_f64().unwrap())
        .collect();
    // 480 sentences at 16 a step: three epochs, logged every 10 steps, the soft loss
    // learnt from the teacher.
    assert_eq!(losses.len(), 9);
    let (first, last) = (losses[0] + losses[1], losses[7] + losses[8]);
    assert!(last < 0.8 * first, "soft loss {losses:?}");

    let err = plan_without_max_steps(&recipe, 90);
    assert!(
        err.contains("stages[0].max_steps: is needed with a corpus or a streamed file"),
        "{err}"
    );
}

/// `hf://datasets/...` shards through a stand-in hub: listed, matched, downloaded into
/// the hub's cache by the lanes that read them; then the same run offline from the
/// cache trains the same student.
#[test]
fn corpus_shards_from_a_hub_dataset_repo_are_cached_then_read_offline() {
    let dir = setup();
    let corpus = write_corpus(dir.path());
    let mut files = std::collections::BTreeMap::new();
    for (local, remote) in [
        ("a.txt", "data/a.txt"),
        ("b.txt.gz", "data/b.txt.gz"),
        ("c.jsonl.zst", "data/c.jsonl.zst"),
        ("a.txt", "other/a.txt"),
    ] {
        files.insert(
            remote.to_string(),
            std::fs::read(corpus.join(local)).unwrap(),
        );
    }
    let hub = crate::hub::fake_hub::FakeHub::serve_dataset("org/corpus", files);
    // A shard is downloaded when a lane first reads it: in 150 steps of 2 every lane
    // reaches every shard (in 30, the last shard of the epoch's order was not reached).
    let recipe = corpus_recipe(dir.path(), &corpus, 150);
    let home = dir.path().join("hf-home");
    let run = |out: &str, hub_files: &str, offline: bool| {
        let mut command = cli();
        command
            .arg("run")
            .arg(&recipe)
            .arg("--out")
            .arg(dir.path().join(out));
        command.args(["--set", &format!("stages.0.data.files={hub_files}")]);
        command.env("HF_HOME", &home).env_remove("HF_TOKEN");
        if offline {
            command
                .env("HF_HUB_OFFLINE", "1")
                .env("HF_ENDPOINT", "http://127.0.0.1:9");
        } else {
            command
                .env_remove("HF_HUB_OFFLINE")
                .env("HF_ENDPOINT", &hub.endpoint);
        }
        command.output().unwrap()
    };
    let shards = r#"["hf://datasets/org/corpus/data/*.txt*", "hf://datasets/org/corpus@main/data/c.jsonl.zst"]"#;
    let online = run("online", shards, false);
    assert!(
        online.status.success(),
        "{}",
        String::from_utf8_lossy(&online.stderr)
    );
    let snapshot = home.join(format!(
        "hub/datasets--org--corpus/snapshots/{}",
        hub.commit
    ));
    for name in ["data/a.txt", "data/b.txt.gz", "data/c.jsonl.zst"] {
        assert!(snapshot.join(name).is_file(), "{name} not cached");
    }
    assert!(
        !snapshot.join("other/a.txt").exists(),
        "a shard the globs do not name"
    );
    let downloads = hub
        .requests()
        .iter()
        .filter(|r| r.path.contains("/resolve/"))
        .count();
    assert!(downloads >= 3, "{downloads} file requests");

    let offline = run("offline", shards, true);
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    let a = last_student(&dir.path().join("online"));
    assert!(
        a == last_student(&dir.path().join("offline")),
        "offline trained another student"
    );

    let none = run(
        "none",
        r#"["hf://datasets/org/corpus/data/*.parquet"]"#,
        false,
    );
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(
        err.contains("hf://datasets/org/corpus/data/*.parquet: files: matches no file"),
        "{err}"
    );
}

/// A general stage with a token cache: the first run tokenises and fills it, a second
/// run reads it, and both train the student a run without it trains.
#[test]
fn a_token_cache_filled_by_one_run_serves_the_next_to_the_same_student() {
    let dir = setup();
    let corpus = write_corpus(dir.path());
    let recipe = replica_recipe(dir.path(), &corpus);
    let cache = dir.path().join("tokens");
    let set_cache = format!("stages.0.data.token_cache=\"{}\"", cache.display());
    let plan = succeed(
        cli().arg("plan").arg(&recipe).args(["--set", &set_cache]),
        "plan",
    );
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.contains(&format!("token cache {}", cache.display())),
        "{plan}"
    );
    let run = |out: &str, cached: bool| {
        let out = dir.path().join(out);
        let mut command = cli();
        command.arg("run").arg(&recipe).arg("--out").arg(&out);
        if cached {
            command.args(["--set", &set_cache]);
        }
        succeed(&mut command, "run");
        last_student(&out)
    };
    let plain = run("plain", false);
    assert!(
        run("first", true) == plain,
        "the run filling the cache trained another student"
    );
    let written: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(written.len(), 1, "one folder for the corpus's rows");
    // Three shards, each in 12 lane parts.
    assert_eq!(std::fs::read_dir(&written[0]).unwrap().count(), 3 * 12);
    assert!(
        run("second", true) == plain,
        "the run reading the cache trained another student"
    );
}
