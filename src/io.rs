//! Atomic file writes: write to a temporary sibling, then rename over the target,
//! so a killed process never leaves a half-written checkpoint or output.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A temporary path next to `path` (same directory, so the rename is atomic).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Renames a finished temporary file into place.
pub fn commit(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path).map_err(|e| Error::io(path, e))
}

/// Writes `bytes` to `path` atomically, creating parent directories.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let tmp = temp_path(path);
    let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    commit(&tmp, path)
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        cause: e,
    })?;
    write_atomic(path, text.as_bytes())
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        cause: e,
    })
}

/// Refuses to write into an existing non-empty directory unless `force` is set (its
/// [`DirLock`] file does not count).
pub fn ensure_fresh_dir(dir: &Path, force: bool) -> Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut entries = entries.flatten().filter(|e| e.file_name() != DirLock::FILE);
        if entries.next().is_some() && !force {
            return Err(Error::msg(format!(
                "{} exists and is not empty; choose another folder or pass --force to overwrite",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// One process at a time in a folder (a run, a fine-tuning, an augmentation): an OS
/// advisory lock (flock) on `<dir>/.lock`, held while this value lives. The OS drops
/// it when the process ends, however it ends, so a killed run never blocks the next.
/// (std's `File::try_lock` does this since Rust 1.89, so no crate is needed.)
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    pub const FILE: &'static str = ".lock";

    /// Creates `dir` if needed and locks it, or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(Self::FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {
                // The holder's PID, for the error another process gets.
                file.set_len(0).map_err(|e| Error::io(&path, e))?;
                write!(file, "{}", std::process::id()).map_err(|e| Error::io(&path, e))?;
                Ok(DirLock { _file: file })
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                Err(Error::msg(format!(
                    "{} is in use by another candle-distill process (pid {}); wait for it \
                     to finish or stop it",
                    dir.display(),
                    holder.trim()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/a.json");
        write_json(&path, &vec![1, 2]).unwrap();
        write_json(&path, &vec![3]).unwrap();
        let back: Vec<i32> = read_json(&path).unwrap();
        assert_eq!(back, vec![3]);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn refuses_non_empty_dir_without_force() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x"), "1").unwrap();
        let err = ensure_fresh_dir(dir.path(), false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        ensure_fresh_dir(dir.path(), true).unwrap();
        ensure_fresh_dir(&dir.path().join("new"), false).unwrap();
    }
}
