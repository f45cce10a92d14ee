//! Hub resolution, end to end through the CLI (`candle-distill inspect <hub id>`), each
//! scenario in its own process with its own environment (HF_HOME, HF_ENDPOINT, HF_TOKEN,
//! HF_HUB_OFFLINE): a cache seeded in the hub's layout, a local stand-in for the hub
//! (tests/hub/fake_hub.rs), and endpoints that refuse connections.

use crate::common;
pub mod fake_hub;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_distill::testing::{tiny_config, write_random_classifier};
use fake_hub::FakeHub;
use sha2::Digest;

const REPO: &str = "org/tiny-bert";

/// Runs `candle-distill inspect --json <spec>` with exactly the given HF_* variables.
fn inspect(spec: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_candle-distill"));
    cmd.args(["inspect", "--json", spec]);
    for var in ["HF_HOME", "HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE"] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "warn");
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn report(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn failure(out: &Output) -> String {
    assert!(!out.status.success(), "inspect unexpectedly succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An endpoint nothing listens on: any network access fails at once.
fn closed_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// A tiny random classifier; `labels` become its id2label.
fn tiny_model(dir: &Path, labels: &[&str]) {
    let mut config = tiny_config(16, 2, 2, 32);
    if !labels.is_empty() {
        config.id2label = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l.to_string()))
                .collect(),
        );
    }
    write_random_classifier(dir, &config, 7).unwrap();
}

fn read_files(dir: &Path, names: &[&str]) -> BTreeMap<String, Vec<u8>> {
    names
        .iter()
        .map(|n| (n.to_string(), std::fs::read(dir.join(n)).unwrap()))
        .collect()
}

/// Puts `files` into `<hf_home>/hub` as the hub does: content in `blobs/<sha256>`,
/// `snapshots/<commit>/<name>` linking to it (or a plain copy), `refs/<r>` = commit.
fn seed_cache(
    hf_home: &Path,
    repo: &str,
    commit: &str,
    refs: &[&str],
    files: &BTreeMap<String, Vec<u8>>,
    symlink: bool,
) -> PathBuf {
    let root = hf_home
        .join("hub")
        .join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = root.join("snapshots").join(commit);
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    for (name, bytes) in files {
        let blob = format!("{:x}", sha2::Sha256::digest(bytes));
        std::fs::write(root.join("blobs").join(&blob), bytes).unwrap();
        if symlink {
            std::os::unix::fs::symlink(Path::new("../../blobs").join(&blob), snapshot.join(name))
                .unwrap();
        } else {
            std::fs::write(snapshot.join(name), bytes).unwrap();
        }
    }
    for r in refs {
        std::fs::create_dir_all(root.join("refs")).unwrap();
        // Python writes no trailing newline; a hand-written ref may have one.
        std::fs::write(root.join("refs").join(r), format!("{commit}\n")).unwrap();
    }
    snapshot
}

const MODEL_FILES: [&str; 4] = [
    "config.json",
    "model.safetensors",
    "tokenizer_config.json",
    "vocab.txt",
];

#[test]
fn seeded_cache_resolves_revisions_without_network() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    tiny_model(&a, &[]);
    tiny_model(&b, &["negative", "positive"]);
    tiny_model(&c, &["x", "y", "z"]);
    let files = ["config.json", "model.safetensors", "tokenizer.json"];
    let (ca, cb, cc) = ("a".repeat(40), "b".repeat(40), "c".repeat(40));
    seed_cache(&home, REPO, &ca, &["main"], &read_files(&a, &files), true);
    seed_cache(&home, REPO, &cb, &["v2"], &read_files(&b, &files), false);
    // Reachable by its hash only, as Python leaves a `@<commit>` download.
    seed_cache(&home, REPO, &cc, &[], &read_files(&c, &files), true);

    let home = home.to_str().unwrap();
    let closed = closed_endpoint();
    for offline in [None, Some("1")] {
        let mut env = vec![("HF_HOME", home), ("HF_ENDPOINT", closed.as_str())];
        if let Some(v) = offline {
            env.push(("HF_HUB_OFFLINE", v));
        }
        let main = report(&inspect(REPO, &env));
        assert_eq!(main["commit"], ca.as_str());
        assert!(main["labels"].is_null());
        assert_eq!(main["layers"], 2);
        let v2 = report(&inspect(&format!("{REPO}@v2"), &env));
        assert_eq!(v2["commit"], cb.as_str());
        assert_eq!(v2["labels"], serde_json::json!(["negative", "positive"]));
        let pinned = report(&inspect(&format!("{REPO}@{cc}"), &env));
        assert_eq!(pinned["commit"], cc.as_str());
        assert_eq!(pinned["labels"], serde_json::json!(["x", "y", "z"]));
    }
}

#[test]
fn downloads_into_the_cache_then_loads_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model(&model, &["a", "b"]);
    // No tokenizer.json: the vocab.txt + tokenizer_config.json fallback, as old repos have.
    let hub = FakeHub::serve(
        REPO,
        read_files(&model, &MODEL_FILES),
        Some("hf_test_token"),
    );
    let home = tmp.path().join("hf");
    let home = home.to_str().unwrap();

    let online = report(&inspect(
        REPO,
        &[
            ("HF_HOME", home),
            ("HF_ENDPOINT", &hub.endpoint),
            ("HF_TOKEN", "hf_test_token"),
        ],
    ));
    let local = report(&inspect(model.to_str().unwrap(), &[]));
    assert_eq!(online["parameters"], local["parameters"]);
    assert_eq!(online["labels"], serde_json::json!(["a", "b"]));
    assert_eq!(online["tokenizer_source"], "vocab.txt");
    assert_eq!(online["vocab_sha256"], local["vocab_sha256"]);
    assert_eq!(online["commit"], hub.commit.as_str());

    let requests = hub.requests();
    assert!(requests
        .iter()
        .all(|r| r.authorization.as_deref() == Some("Bearer hf_test_token")));
    let downloads = requests
        .iter()
        .filter(|r| r.path.contains("/resolve/") && r.range.as_deref() != Some("bytes=0-0"))
        .count();
    assert_eq!(downloads, MODEL_FILES.len(), "{requests:?}");

    // Everything is cached in the hub's layout now, with absent files recorded.
    let root = Path::new(home).join("hub/models--org--tiny-bert");
    let commit = std::fs::read_to_string(root.join("refs/main")).unwrap();
    assert_eq!(commit.trim(), hub.commit);
    for name in MODEL_FILES {
        let path = root.join("snapshots").join(&hub.commit).join(name);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(model.join(name)).unwrap()
        );
    }
    assert!(root
        .join(".no_exist")
        .join(&hub.commit)
        .join("tokenizer.json")
        .exists());
    drop(hub);

    // A second run needs no network, whether or not HF_HUB_OFFLINE says so.
    let closed = closed_endpoint();
    for env in [
        vec![("HF_HOME", home), ("HF_ENDPOINT", closed.as_str())],
        vec![("HF_HOME", home), ("HF_HUB_OFFLINE", "1")],
    ] {
        let again = report(&inspect(REPO, &env));
        assert_eq!(again["parameters"], local["parameters"]);
        assert_eq!(again["tokenizer_source"], "vocab.txt");
    }
}

#[test]
fn the_token_is_sent_and_a_missing_one_is_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model(&model, &[]);
    let hub = FakeHub::serve(REPO, read_files(&model, &MODEL_FILES), Some("hf_right"));
    let home = tmp.path().join("hf");
    let home = home.to_str().unwrap();
    let base = [("HF_HOME", home), ("HF_ENDPOINT", hub.endpoint.as_str())];

    let err = failure(&inspect(REPO, &base));
    assert!(
        err.contains(REPO) && err.contains("HF_TOKEN") && err.contains("401"),
        "{err}"
    );
    let wrong = [base.as_slice(), &[("HF_TOKEN", "hf_wrong")]].concat();
    let err = failure(&inspect(REPO, &wrong));
    assert!(err.contains("token in HF_TOKEN"), "{err}");
    let right = [base.as_slice(), &[("HF_TOKEN", "hf_right")]].concat();
    report(&inspect(REPO, &right));
    let tokens: Vec<_> = hub
        .requests()
        .into_iter()
        .map(|r| r.authorization)
        .collect();
    assert_eq!(tokens[0], None);
    assert_eq!(tokens[1].as_deref(), Some("Bearer hf_wrong"));
    assert!(tokens[2..]
        .iter()
        .all(|t| t.as_deref() == Some("Bearer hf_right")));
}

#[test]
fn a_missing_repo_is_named_with_how_to_reach_a_private_one() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = FakeHub::serve(REPO, BTreeMap::new(), None);
    let home = tmp.path().to_str().unwrap();
    let err = failure(&inspect(
        "org/no-such-model",
        &[("HF_HOME", home), ("HF_ENDPOINT", &hub.endpoint)],
    ));
    assert!(err.contains("`org/no-such-model`"), "{err}");
    assert!(err.contains("404") && err.contains("HF_TOKEN"), "{err}");
    assert!(err.contains(&hub.endpoint), "{err}");
}

#[test]
fn a_repo_without_a_file_says_which() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model(&model, &[]);
    let hub = FakeHub::serve(
        REPO,
        read_files(&model, &["config.json", "vocab.txt"]),
        None,
    );
    let home = tmp.path().join("hf");
    let err = failure(&inspect(
        REPO,
        &[
            ("HF_HOME", home.to_str().unwrap()),
            ("HF_ENDPOINT", &hub.endpoint),
        ],
    ));
    assert!(
        err.contains(REPO)
            && err.contains("model.safetensors")
            && err.contains("pytorch_model.bin"),
        "{err}"
    );
}

#[test]
fn an_unreachable_hub_says_how_to_work_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().to_str().unwrap();
    let closed = closed_endpoint();
    let err = failure(&inspect(
        REPO,
        &[("HF_HOME", home), ("HF_ENDPOINT", &closed)],
    ));
    assert!(err.contains(REPO) && err.contains(&closed), "{err}");
    assert!(
        err.contains("HF_HUB_OFFLINE=1") && err.contains("local folder"),
        "{err}"
    );
    assert!(err.contains(&format!("{home}/hub")), "{err}");
}

#[test]
fn offline_with_nothing_cached_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().to_str().unwrap();
    let err = failure(&inspect(
        REPO,
        &[("HF_HOME", home), ("HF_HUB_OFFLINE", "1")],
    ));
    assert!(err.contains(REPO) && err.contains("config.json"), "{err}");
    assert!(
        err.contains("HF_HUB_OFFLINE is set") && err.contains(&format!("{home}/hub")),
        "{err}"
    );
}

/// `.ci/seed-hub-cache.sh` puts MiniLM in a hub cache that the CLI resolves offline.
#[test]
fn seed_script_makes_minilm_resolvable_offline() {
    let Some(_) = common::minilm_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let status = Command::new("bash")
        .arg(common::repo_root().join(".ci/seed-hub-cache.sh"))
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(status.success());
    let home = tmp.path().to_str().unwrap();
    let closed = closed_endpoint();
    let out = report(&inspect(
        "sentence-transformers/all-MiniLM-L6-v2",
        &[
            ("HF_HOME", home),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_ENDPOINT", &closed),
        ],
    ));
    assert_eq!(out["parameters"], 22_713_216);
    assert_eq!(out["layers"], 6);
    let root = tmp
        .path()
        .join("hub/models--sentence-transformers--all-MiniLM-L6-v2");
    let commit = std::fs::read_to_string(root.join("refs/main")).unwrap();
    assert_eq!(out["commit"], commit.trim());
    let weights = root
        .join("snapshots")
        .join(commit.trim())
        .join("model.safetensors");
    assert!(std::fs::symlink_metadata(&weights)
        .unwrap()
        .file_type()
        .is_symlink());
}
