//! Data-parallel runs from the command line: two replicas in one process
//! (`--device cpu,cpu`) and two processes joined over TCP as two nodes (`--nnodes 2`)
//! train the same student to the last bit (same ranks, same shares, sums in rank
//! order); only node 0 writes. The teacher is fine-tuned first by `finetune` on two
//! local replicas. A node started with another recipe is refused.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::tiny_run::{cli, free_port, node, recipe, setup, weights};

fn student(run: &Path) -> HashMap<String, Vec<f32>> {
    weights(&run.join("checkpoints/last/student.safetensors"))
}

fn check(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The tiny run's folder and recipe, and `teacher.model=` a teacher fine-tuned on two
/// local replicas (so every run below distils from the same teacher).
fn fixture() -> (tempfile::TempDir, PathBuf, String) {
    let dir = setup();
    let recipe = recipe(dir.path());
    let teacher = dir.path().join("teacher-sst2");
    let o = cli()
        .arg("finetune")
        .arg("--model")
        .arg(dir.path().join("teacher"))
        .args(["--task", "sst2", "--data"])
        .arg(dir.path().join("glue"))
        .args(["--epochs", "4", "--lr", "3e-3", "--batch-size", "16"])
        .args(["--max-seq-len", "24", "--device", "cpu,cpu", "--out"])
        .arg(&teacher)
        .output()
        .unwrap();
    check(&o, "finetune --device cpu,cpu");
    let set_teacher = format!("teacher.model={}", teacher.display());
    (dir, recipe, set_teacher)
}

/// Two replicas in one process.
fn run_local(recipe: &Path, set_teacher: &str, out: &Path) {
    let o = cli()
        .arg("run")
        .arg(recipe)
        .args(["--set", set_teacher, "--device", "cpu,cpu", "--out"])
        .arg(out)
        .output()
        .unwrap();
    check(&o, "run --device cpu,cpu");
}

/// Both nodes, node 1 started first: it waits for node 0.
fn run_nodes(recipe: &Path, set_teacher: &str, out: &Path) -> (Output, Output) {
    let port = free_port();
    let follower = node(recipe, out, 1, port, 120)
        .args(["--set", set_teacher])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let leader = node(recipe, out, 0, port, 120)
        .args(["--set", set_teacher])
        .output()
        .unwrap();
    (leader, follower.wait_with_output().unwrap())
}

fn assert_same_students(a: &Path, b: &Path) {
    let (a, b) = (student(a), student(b));
    assert_eq!(a.len(), b.len());
    for (name, x) in &a {
        assert_eq!(
            x, &b[name],
            "{name}: two nodes differ from two local replicas"
        );
    }
}

#[test]
fn two_nodes_over_tcp_train_what_two_local_replicas_train() {
    let (dir, recipe, set_teacher) = fixture();

    let local = dir.path().join("local");
    run_local(&recipe, &set_teacher, &local);
    let log = std::fs::read_to_string(local.join("metrics.jsonl")).unwrap();
    assert!(log.contains("\"stage\":\"prediction\""), "{log}");

    let nodes = dir.path().join("nodes");
    let (leader, follower) = run_nodes(&recipe, &set_teacher, &nodes);
    check(&leader, "node 0");
    check(&follower, "node 1");
    assert!(String::from_utf8_lossy(&leader.stdout).contains("run folder:"));
    assert!(String::from_utf8_lossy(&follower.stdout).contains("node 1 of 2: training finished"));
    assert!(nodes.join("report.json").is_file());

    assert_same_students(&local, &nodes);
    // The same metrics lines (losses of the same steps), logged once, by node 0.
    let strip_time = |s: &str| -> Vec<serde_json::Value> {
        s.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                if let Some(o) = v.as_object_mut() {
                    o.remove("seconds");
                }
                v
            })
            .collect()
    };
    let node_log = std::fs::read_to_string(nodes.join("metrics.jsonl")).unwrap();
    assert_eq!(strip_time(&log), strip_time(&node_log));
}

#[test]
fn a_node_with_another_recipe_is_refused() {
    let dir = setup();
    let recipe = recipe(dir.path());
    let out = dir.path().join("run");
    let port = free_port();
    let follower = node(&recipe, &out, 1, port, 60)
        .args(["--set", "seed=6"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let leader = node(&recipe, &out, 0, port, 3).output().unwrap();
    let follower = follower.wait_with_output().unwrap();
    assert!(!leader.status.success() && !follower.status.success());
    let err = String::from_utf8_lossy(&follower.stderr);
    assert!(
        err.contains("node 0 refused node 1") && err.contains("different recipe"),
        "{err}"
    );
    let err = String::from_utf8_lossy(&leader.stderr);
    assert!(err.contains("did not join"), "{err}");
}

/// A node killed mid-training stops node 0 with an error naming it (no hang); started
/// again, both nodes resume from node 0's checkpoint to the uninterrupted student.
#[test]
fn a_killed_node_stops_node_0_and_both_resume_to_the_same_student() {
    let (dir, recipe, set_teacher) = fixture();
    let local = dir.path().join("local");
    run_local(&recipe, &set_teacher, &local);

    let nodes = dir.path().join("nodes");
    let port = free_port();
    let mut follower = node(&recipe, &nodes, 1, port, 120)
        .args(["--set", &set_teacher])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut leader = node(&recipe, &nodes, 0, port, 120)
        .args(["--set", &set_teacher])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !nodes.join("checkpoints/last/progress.json").is_file()
        && follower.try_wait().unwrap().is_none()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        follower.try_wait().unwrap().is_none(),
        "node 1 finished before it could be killed; the test needs a longer run"
    );
    follower.kill().unwrap();
    follower.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while leader.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            leader.kill().unwrap();
            panic!("node 0 hung after node 1 was killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = leader.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "node 0 succeeded without node 1");
    assert!(
        err.contains("rank 1") && err.contains("connection lost"),
        "{err}"
    );

    let (leader, follower) = run_nodes(&recipe, &set_teacher, &nodes);
    check(&leader, "node 0, resumed");
    check(&follower, "node 1, resumed");
    assert_same_students(&local, &nodes);
}
