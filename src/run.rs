//! The run folder: everything one run writes, and what a killed run resumes from.
//!
//! ```text
//! <run>/recipe.toml          the resolved recipe (overrides applied)
//! <run>/manifest.json        versions, seed, device, inputs and their hashes
//! <run>/metrics.jsonl        one JSON object per logged step or evaluation
//! <run>/loss.png             loss and dev-metric curves
//! <run>/checkpoints/last/    student, optimizer moments, progress (for resume)
//! <run>/checkpoints/best/    best dev student of the final stage (HF layout)
//! <run>/cache/               teacher outputs reused across epochs and runs
//! <run>/student/             the exported student
//! <run>/report.json, report.md
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::io::{read_json, write_atomic, write_json, DirLock};
use crate::{Error, Result};

pub const RECIPE_FILE: &str = "recipe.toml";
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The teacher's fine-tuning inside a run: a run folder of its own.
pub const TEACHER_FINETUNE_DIR: &str = "teacher-finetune";

pub struct RunDir {
    root: PathBuf,
    /// Held by the process that opened the folder; `None` for a node attached to node
    /// 0's folder (node 0 holds it).
    _lock: Option<DirLock>,
}

/// What opening a run folder found.
pub enum Opened {
    Fresh(RunDir),
    /// Same recipe, with a checkpoint to continue from (or none yet).
    Resume(RunDir),
}

impl RunDir {
    /// Creates `root` for `recipe_text`, or reopens it when it holds the same recipe.
    /// A folder holding another recipe, or other files, is refused unless `force`.
    /// Another process working in the folder is an error naming it.
    pub fn open(root: &Path, recipe_text: &str, force: bool) -> Result<Opened> {
        let recipe_path = root.join(RECIPE_FILE);
        let lock = DirLock::acquire(root)?;
        if force {
            clear_except_lock(root)?;
        }
        let run = RunDir {
            root: root.to_path_buf(),
            _lock: Some(lock),
        };
        if recipe_path.is_file() {
            let existing =
                std::fs::read_to_string(&recipe_path).map_err(|e| Error::io(&recipe_path, e))?;
            if existing == recipe_text {
                return Ok(Opened::Resume(run));
            }
            if holds_work(root)? {
                return Err(Error::msg(format!(
                    "{} holds a run of a different recipe; resume it with that recipe, \
                     choose another output folder, or pass --force to start over",
                    root.display()
                )));
            }
            // A start that failed before any work (no hub access, a typo in the recipe)
            // must not lock its folder against the corrected recipe.
            tracing::info!(
                "{}: holds another recipe but no work of it (no checkpoint, metrics or \
                 outputs); starting this recipe there",
                root.display()
            );
            write_atomic(&recipe_path, recipe_text.as_bytes())?;
            return Ok(Opened::Fresh(run));
        }
        crate::io::ensure_fresh_dir(root, false)?;
        write_atomic(&recipe_path, recipe_text.as_bytes())?;
        Ok(Opened::Fresh(run))
    }

    /// The run folder another process (node 0 of a multi-node run) opened for
    /// `recipe_text`, to read from: nothing is created or changed.
    pub fn attach(root: &Path, recipe_text: &str) -> Result<RunDir> {
        let recipe_path = root.join(RECIPE_FILE);
        let existing = std::fs::read_to_string(&recipe_path).map_err(|e| {
            Error::msg(format!(
                "{}: {e}; every node must see node 0's run folder (shared storage, same path)",
                recipe_path.display()
            ))
        })?;
        if existing != recipe_text {
            return Err(Error::msg(format!(
                "{} holds another recipe than this node's",
                recipe_path.display()
            )));
        }
        Ok(RunDir {
            root: root.to_path_buf(),
            _lock: None,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Appends one JSON line to metrics.jsonl.
    pub fn log(&self, value: &serde_json::Value) -> Result<()> {
        let path = self.path(METRICS_FILE);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        writeln!(file, "{value}").map_err(|e| Error::io(&path, e))
    }

    pub fn metrics_len(&self) -> u64 {
        std::fs::metadata(self.path(METRICS_FILE))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Drops metric lines written after the checkpoint being resumed.
    pub fn truncate_metrics(&self, len: u64) -> Result<()> {
        let path = self.path(METRICS_FILE);
        if let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) {
            file.set_len(len).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    /// Writes a checkpoint folder atomically: build it beside, then swap it in.
    pub fn write_checkpoint(&self, name: &str, files: &[(&str, CheckpointFile)]) -> Result<()> {
        let dir = self.root.join("checkpoints");
        let target = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let old = dir.join(format!(".{name}.old"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        for (file, content) in files {
            let path = tmp.join(file);
            match content {
                CheckpointFile::Tensors(t) => candle_core::safetensors::save(t, &path)?,
                CheckpointFile::Json(v) => write_json(&path, v)?,
                CheckpointFile::Bytes(b) => write_atomic(&path, b)?,
            }
        }
        if target.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
            }
            std::fs::rename(&target, &old).map_err(|e| Error::io(&target, e))?;
        }
        std::fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        Ok(())
    }

    /// The checkpoint folder `name`, or its previous version when a swap was interrupted.
    pub fn checkpoint_dir(&self, name: &str) -> Option<PathBuf> {
        let dir = self.root.join("checkpoints");
        [dir.join(name), dir.join(format!(".{name}.old"))]
            .into_iter()
            .find(|p| p.is_dir())
    }

    pub fn read_checkpoint_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        file: &str,
    ) -> Result<Option<T>> {
        match self.checkpoint_dir(name) {
            Some(dir) if dir.join(file).is_file() => Ok(Some(read_json(&dir.join(file))?)),
            _ => Ok(None),
        }
    }

    pub fn read_checkpoint_tensors(
        &self,
        name: &str,
        file: &str,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>> {
        let dir = self.checkpoint_dir(name).ok_or_else(|| {
            Error::msg(format!("{}: no checkpoint `{name}`", self.root.display()))
        })?;
        let path = dir.join(file);
        candle_core::safetensors::load(&path, device).map_err(|e| Error::Weights {
            path: path.display().to_string(),
            name: "*".into(),
            message: e.to_string(),
        })
    }
}

pub enum CheckpointFile {
    Tensors(HashMap<String, Tensor>),
    Json(serde_json::Value),
    Bytes(Vec<u8>),
}

impl RunDir {
    /// Redraws `loss.png` from `metrics.jsonl`, with the teacher's fine-tuning (its
    /// own run folder, `teacher-finetune/`) in panels of its own when the run did it.
    /// Nothing to draw yet is not an error.
    pub fn write_plot(&self) -> Result<()> {
        let has_lines = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) > 0;
        let metrics = self.path(METRICS_FILE);
        if !has_lines(&metrics) {
            return Ok(());
        }
        let teacher = self.path(TEACHER_FINETUNE_DIR).join(METRICS_FILE);
        let teacher = has_lines(&teacher).then_some(teacher.as_path());
        crate::plot::plot_run_metrics(&metrics, teacher, &self.path("loss.png"))
    }
}

/// `--force`: everything in `root` goes, except the lock this process holds on it.
fn clear_except_lock(root: &Path) -> Result<()> {
    for entry in std::fs::read_dir(root).map_err(|e| Error::io(root, e))? {
        let path = entry.map_err(|e| Error::io(root, e))?.path();
        if path.file_name().is_some_and(|n| n == DirLock::FILE) {
            continue;
        }
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// Whether a run folder holds anything of its run beyond the files that describe it:
/// a checkpoint, metrics, a cache, outputs, a sub-run with any of those.
fn holds_work(dir: &Path) -> Result<bool> {
    const DESCRIPTIONS: [&str; 3] = [RECIPE_FILE, "manifest.json", DirLock::FILE];
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let work = if path.is_dir() {
            holds_work(&path)?
        } else if name == METRICS_FILE {
            entry.metadata().map_or(true, |m| m.len() > 0)
        } else {
            !DESCRIPTIONS.iter().any(|d| name == *d)
        };
        if work {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("run");
        let first = RunDir::open(&root, "a = 1\n", false).unwrap();
        // flock locks belong to an open file: a second open, even in this process,
        // is refused while the first RunDir lives.
        let err = RunDir::open(&root, "a = 1\n", false)
            .err()
            .expect("a second opener must be refused")
            .to_string();
        assert!(
            err.contains("in use by another candle-distill process"),
            "{err}"
        );
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        // Released with its holder (tests/cli_eval.rs: also when the holder is killed).
        drop(RunDir::open(&root, "a = 1\n", false).unwrap());
        RunDir::open(&root, "a = 1\n", true).expect("--force once the holder is gone");
    }

    #[test]
    fn a_folder_without_work_is_taken_over_by_another_recipe() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("run");
        RunDir::open(&root, "a = 1\n", false).unwrap();
        // What a first start that failed early leaves: the recipe, an empty metrics file,
        // a sub-run's folder holding only its own description.
        std::fs::write(root.join(METRICS_FILE), "").unwrap();
        RunDir::open(&root.join("teacher-finetune"), "{}", false).unwrap();
        assert!(matches!(
            RunDir::open(&root, "a = 2\n", false).unwrap(),
            Opened::Fresh(_)
        ));
        assert_eq!(
            std::fs::read_to_string(root.join(RECIPE_FILE)).unwrap(),
            "a = 2\n"
        );
        // Once the sub-run has a checkpoint, the folder is protected.
        let sub = RunDir::attach(&root.join("teacher-finetune"), "{}").unwrap();
        sub.write_checkpoint(
            "last",
            &[("progress.json", CheckpointFile::Json(serde_json::json!({})))],
        )
        .unwrap();
        let err = RunDir::open(&root, "a = 3\n", false)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("different recipe"), "{err}");
    }

    #[test]
    fn reopening_with_the_same_recipe_resumes_and_another_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("run");
        assert!(matches!(
            RunDir::open(&root, "a = 1\n", false).unwrap(),
            Opened::Fresh(_)
        ));
        let run = match RunDir::open(&root, "a = 1\n", false).unwrap() {
            Opened::Resume(run) => run,
            Opened::Fresh(_) => panic!("the same recipe resumes"),
        };
        run.log(&serde_json::json!({"step": 1})).unwrap();
        drop(run);
        let err = RunDir::open(&root, "a = 2\n", false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("different recipe") && err.contains("--force"),
            "{err}"
        );
        assert!(matches!(
            RunDir::open(&root, "a = 2\n", true).unwrap(),
            Opened::Fresh(_)
        ));
        let other = dir.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("x"), "1").unwrap();
        assert!(RunDir::open(&other, "a = 1\n", false).is_err());
    }

    #[test]
    fn checkpoints_swap_atomically_and_metrics_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let Opened::Fresh(run) = RunDir::open(&dir.path().join("r"), "x", false).unwrap() else {
            panic!()
        };
        for step in [1, 2] {
            run.write_checkpoint(
                "last",
                &[(
                    "progress.json",
                    CheckpointFile::Json(serde_json::json!({"step": step})),
                )],
            )
            .unwrap();
        }
        let v: serde_json::Value = run
            .read_checkpoint_json("last", "progress.json")
            .unwrap()
            .unwrap();
        assert_eq!(v["step"], 2);
        // An interrupted swap leaves only the old copy: it is still found.
        let ck = dir.path().join("r/checkpoints");
        std::fs::rename(ck.join("last"), ck.join(".last.old")).unwrap();
        let v: serde_json::Value = run
            .read_checkpoint_json("last", "progress.json")
            .unwrap()
            .unwrap();
        assert_eq!(v["step"], 2);

        run.log(&serde_json::json!({"step": 1})).unwrap();
        let len = run.metrics_len();
        run.log(&serde_json::json!({"step": 2})).unwrap();
        run.truncate_metrics(len).unwrap();
        let text = std::fs::read_to_string(run.path(METRICS_FILE)).unwrap();
        assert_eq!(text, "{\"step\":1}\n");
    }
}
