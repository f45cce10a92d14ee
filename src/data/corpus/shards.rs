//! A corpus's shards: which files a list of paths and globs names (on disk or in a hub
//! dataset repo), and what each holds from its name (plain text, JSONL, TSV, parquet;
//! `.gz` and `.zst` compressed or not). [`super::formats`] reads them.

use std::path::{Path, PathBuf};

use crate::hub::{HubRepo, Location, RepoKind};
use crate::{Error, Result};

/// What a shard holds, from its name (after any `.gz` or `.zst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardFormat {
    /// One sentence or paragraph per line; a blank line ends a document.
    Text,
    /// One JSON object per line; its text field is one document.
    Jsonl,
    /// Tab-separated with a header row (GLUE's files); the text column of each row is
    /// one document.
    Tsv,
    /// A text column; each row is one document.
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Where hub dataset shards are named: `hf://datasets/org/name[@revision]/glob`, as in
/// Python's `huggingface_hub` file system.
const HUB_PREFIX: &str = "hf://datasets/";

/// One shard: a local file, or a file of a hub dataset repo at a commit, downloaded
/// into the hub's cache when a reader first needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shard {
    Local(PathBuf),
    Hub {
        repo: String,
        commit: String,
        name: String,
    },
}

impl Shard {
    /// The shard's local path, downloading a hub file not cached yet.
    pub fn local(&self) -> Result<PathBuf> {
        // Lanes sharing a shard ask for it at once: one downloads, the others then
        // find it in the cache.
        static DOWNLOADS: std::sync::Mutex<()> = std::sync::Mutex::new(());
        match self {
            Shard::Local(path) => Ok(path.clone()),
            Shard::Hub { repo, commit, name } => {
                let _one_at_a_time = DOWNLOADS.lock().unwrap_or_else(|e| e.into_inner());
                let location = Location::Hub {
                    repo: repo.clone(),
                    revision: commit.clone(),
                    kind: RepoKind::Dataset,
                };
                location.open()?.require(name)
            }
        }
    }

    /// The name the shard's format is read from.
    fn name(&self) -> &Path {
        match self {
            Shard::Local(path) => path,
            Shard::Hub { name, .. } => Path::new(name),
        }
    }
}

/// The shards named by `patterns` (paths or globs such as `wiki/*.jsonl.zst`, or
/// `hf://datasets/org/name/glob` in a hub dataset repo), each glob's matches sorted by
/// name, in the order given. A pattern that names nothing is an error that names it.
pub fn resolve(patterns: &[String]) -> Result<Vec<Shard>> {
    if patterns.is_empty() {
        return Err(Error::invalid(
            "corpus",
            "files",
            "is empty: expected paths or globs of text, JSONL or parquet shards",
        ));
    }
    let mut shards = Vec::new();
    for pattern in patterns {
        let matched = match pattern.strip_prefix(HUB_PREFIX) {
            Some(rest) => hub_matches(pattern, rest)?,
            None => local_matches(pattern)?,
        };
        if matched.is_empty() {
            return Err(Error::invalid(
                pattern,
                "files",
                "matches no file (expected a path or glob of corpus shards)",
            ));
        }
        for shard in &matched {
            ShardFormat::of(shard.name())?;
        }
        shards.extend(matched);
    }
    Ok(shards)
}

fn local_matches(pattern: &str) -> Result<Vec<Shard>> {
    let mut matched: Vec<PathBuf> = glob::glob(pattern)
        .map_err(|e| Error::invalid(pattern, "glob", e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::invalid(pattern, "glob", e))?;
    matched.retain(|p| p.is_file());
    matched.sort();
    Ok(matched.into_iter().map(Shard::Local).collect())
}

/// The files of a hub dataset repo that `rest` (`org/name[@revision]/glob`) names, at
/// the commit its revision points to now.
fn hub_matches(pattern: &str, rest: &str) -> Result<Vec<Shard>> {
    let mut parts = rest.splitn(3, '/');
    let (org, name, glob) = match (parts.next(), parts.next(), parts.next()) {
        (Some(org), Some(name), Some(glob)) if !org.is_empty() && !glob.is_empty() => {
            (org, name, glob)
        }
        _ => {
            return Err(Error::invalid(
                pattern,
                "files",
                "expected hf://datasets/org/name[@revision]/glob",
            ))
        }
    };
    let (name, revision) = name.split_once('@').unwrap_or((name, "main"));
    let repo = format!("{org}/{name}");
    let glob = glob::Pattern::new(glob).map_err(|e| Error::invalid(pattern, "glob", e))?;
    let (commit, files) = HubRepo::new(&repo, revision, RepoKind::Dataset)?.files()?;
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..Default::default()
    };
    Ok(files
        .into_iter()
        .filter(|f| glob.matches_with(f, options))
        .map(|name| Shard::Hub {
            repo: repo.clone(),
            commit: commit.clone(),
            name,
        })
        .collect())
}

impl ShardFormat {
    /// The format of a shard from its extension, refusing names it cannot read.
    pub fn of(path: &Path) -> Result<Self> {
        let (stem, _) = split_compression(path);
        let ext = stem.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("txt" | "text") => Ok(ShardFormat::Text),
            Some("jsonl" | "ndjson") => Ok(ShardFormat::Jsonl),
            Some("tsv") => Ok(ShardFormat::Tsv),
            Some("parquet") if split_compression(path).1 == Compression::None => {
                Ok(ShardFormat::Parquet)
            }
            _ => Err(Error::invalid(
                path.display(),
                "format",
                "expected a .txt, .jsonl, .tsv or .parquet shard (all but parquet optionally .gz or .zst)",
            )),
        }
    }
}

pub(super) fn split_compression(path: &Path) -> (String, Compression) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".gz") {
        (name[..name.len() - 3].to_string(), Compression::Gzip)
    } else if lower.ends_with(".zst") {
        (name[..name.len() - 4].to_string(), Compression::Zstd)
    } else {
        (name, Compression::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_resolve_sorted_and_unmatched_or_unknown_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.txt", "a.txt", "c.jsonl.zst"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let d = dir.path().display();
        let files = resolve(&[format!("{d}/*.txt"), format!("{d}/c.jsonl.zst")]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.name().file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.txt", "b.txt", "c.jsonl.zst"]);
        let err = resolve(&[format!("{d}/*.parquet")]).unwrap_err();
        assert!(err.to_string().contains("matches no file"), "{err}");
        std::fs::write(dir.path().join("d.csv"), "").unwrap();
        let err = resolve(&[format!("{d}/d.csv")]).unwrap_err();
        assert!(
            err.to_string().contains("d.csv: format: expected a .txt"),
            "{err}"
        );
    }
}
