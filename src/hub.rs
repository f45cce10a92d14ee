//! Finding model and data files: a local folder, or a Hugging Face hub repository
//! through hf-hub (its cache first, the network only when a file is not cached).
//!
//! Environment, as in Python's `huggingface_hub`: `HF_HOME` (cache at `$HF_HOME/hub`),
//! `HF_ENDPOINT` (another hub), `HF_TOKEN` (private repos), `HF_HUB_OFFLINE=1`
//! (never touch the network).

use std::cell::OnceCell;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use crate::{Error, Result};

/// Where a model or dataset lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    Hub {
        repo: String,
        revision: String,
        kind: RepoKind,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

impl Location {
    /// An existing path is a local folder; `org/name` or `org/name@revision` is a hub repo.
    pub fn parse(spec: &str, kind: RepoKind) -> Result<Location> {
        let path = Path::new(spec);
        if path.exists() {
            if !path.is_dir() {
                return Err(Error::invalid(
                    spec,
                    "model",
                    "expected a folder (holding config.json and weights) or a hub id",
                ));
            }
            return Ok(Location::Local(path.to_path_buf()));
        }
        let (repo, revision) = match spec.split_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, rev.to_string()),
            _ => (spec, "main".to_string()),
        };
        let looks_like_id = !repo.is_empty()
            && repo.split('/').count() <= 2
            && repo.split('/').all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            })
            && !repo.starts_with('.');
        if !looks_like_id {
            return Err(Error::ModelNotFound(format!(
                "`{spec}` is neither an existing folder nor a hub id like `org/name` or `org/name@revision`"
            )));
        }
        Ok(Location::Hub {
            repo: repo.to_string(),
            revision,
            kind,
        })
    }

    /// Opens the location for file look-ups.
    pub fn open(&self) -> Result<FileSource> {
        Ok(match self {
            Location::Local(dir) => FileSource::Local(dir.clone()),
            Location::Hub {
                repo,
                revision,
                kind,
            } => FileSource::Hub(Box::new(HubRepo::new(repo, revision, *kind)?)),
        })
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Hub { repo, revision, .. } if revision == "main" => write!(f, "{repo}"),
            Location::Hub { repo, revision, .. } => write!(f, "{repo}@{revision}"),
        }
    }
}

/// Files of one model or dataset, wherever they live.
pub enum FileSource {
    Local(PathBuf),
    Hub(Box<HubRepo>),
}

impl FileSource {
    /// The first of `candidates` that exists, with its local path.
    pub fn first_of(&self, candidates: &[&str]) -> Result<Option<(String, PathBuf)>> {
        match self {
            FileSource::Local(dir) => Ok(candidates
                .iter()
                .map(|c| (c.to_string(), dir.join(c)))
                .find(|(_, p)| p.is_file())),
            FileSource::Hub(repo) => repo.first_of(candidates),
        }
    }

    /// A file that must exist.
    pub fn require(&self, name: &str) -> Result<PathBuf> {
        match self.first_of(&[name])? {
            Some((_, path)) => Ok(path),
            None => Err(self.missing(&[name])),
        }
    }

    /// The error for files that are in none of the places looked at.
    pub fn missing(&self, names: &[&str]) -> Error {
        let list = names.join(", ");
        match self {
            FileSource::Local(dir) => Error::ModelNotFound(format!(
                "{}: none of [{list}] is in this folder",
                dir.display()
            )),
            FileSource::Hub(repo) => repo.missing(&list),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            FileSource::Local(dir) => dir.display().to_string(),
            FileSource::Hub(repo) => repo.describe(),
        }
    }
}

fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// A hub repository at one revision, read through the hf-hub cache.
pub struct HubRepo {
    repo: Repo,
    id: String,
    revision: String,
    cache: Cache,
    api: Api,
    offline: bool,
    endpoint: String,
    /// File names at this revision, fetched once when a file is not cached.
    listing: OnceCell<Result<Vec<String>, String>>,
}

impl HubRepo {
    pub fn new(id: &str, revision: &str, kind: RepoKind) -> Result<Self> {
        let repo_type = match kind {
            RepoKind::Model => RepoType::Model,
            RepoKind::Dataset => RepoType::Dataset,
        };
        let cache = Cache::from_env();
        let mut builder = ApiBuilder::from_env()
            .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        // `from_env` reads the token file in HF_HOME; HF_TOKEN must be passed explicitly.
        if let Ok(token) = std::env::var("HF_TOKEN") {
            if !token.is_empty() {
                builder = builder.with_token(Some(token));
            }
        }
        let api = builder
            .build()
            .map_err(|e| Error::msg(format!("cannot set up the hub client: {e}")))?;
        Ok(HubRepo {
            repo: Repo::with_revision(id.to_string(), repo_type, revision.to_string()),
            id: id.to_string(),
            revision: revision.to_string(),
            cache,
            api,
            offline: offline_from_env(),
            endpoint: std::env::var("HF_ENDPOINT")
                .unwrap_or_else(|_| "https://huggingface.co".into()),
            listing: OnceCell::new(),
        })
    }

    fn describe(&self) -> String {
        format!("hub repo `{}` (revision {})", self.id, self.revision)
    }

    fn cached(&self, name: &str) -> Option<PathBuf> {
        self.cache.repo(self.repo.clone()).get(name)
    }

    fn listing(&self) -> Result<&Vec<String>> {
        let listing = self.listing.get_or_init(|| {
            self.api
                .repo(self.repo.clone())
                .info()
                .map(|info| info.siblings.into_iter().map(|s| s.rfilename).collect())
                .map_err(|e| self.explain(&e))
        });
        listing
            .as_ref()
            .map_err(|m| Error::ModelNotFound(m.clone()))
    }

    fn explain(&self, e: &ApiError) -> String {
        let status = match e {
            ApiError::RequestError(inner) => match inner.as_ref() {
                ureq::Error::StatusCode(code) => Some(*code),
                _ => None,
            },
            _ => None,
        };
        match status {
            Some(401) | Some(403) | Some(404) => format!(
                "{}: not found at {} (HTTP {}). Check the id and revision; for a private or gated repo set HF_TOKEN.",
                self.describe(),
                self.endpoint,
                status.unwrap_or_default()
            ),
            _ => format!(
                "{}: cannot reach {} ({e}). To work offline, download the files once with network access \
                 (they are kept in the cache at {}), set HF_HUB_OFFLINE=1, or pass a local folder instead of a hub id.",
                self.describe(),
                self.endpoint,
                self.cache.path().display()
            ),
        }
    }

    fn missing(&self, list: &str) -> Error {
        if self.offline {
            Error::ModelNotFound(format!(
                "{}: [{list}] not in the cache at {} and HF_HUB_OFFLINE is set. \
                 Download it once with network access, or pass a local folder.",
                self.describe(),
                self.cache.path().display()
            ))
        } else {
            Error::ModelNotFound(format!(
                "{}: the repository has none of [{list}]",
                self.describe()
            ))
        }
    }

    fn first_of(&self, candidates: &[&str]) -> Result<Option<(String, PathBuf)>> {
        for name in candidates {
            if let Some(path) = self.cached(name) {
                return Ok(Some((name.to_string(), path)));
            }
        }
        if self.offline {
            return Ok(None);
        }
        let listing = self.listing()?;
        for name in candidates {
            if listing.iter().any(|f| f == name) {
                tracing::info!("downloading {name} from {}", self.describe());
                let path =
                    self.api.repo(self.repo.clone()).get(name).map_err(|e| {
                        Error::ModelNotFound(format!("{name}: {}", self.explain(&e)))
                    })?;
                return Ok(Some((name.to_string(), path)));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_ids_with_revisions() {
        assert_eq!(
            Location::parse("bert-base-uncased", RepoKind::Model).unwrap(),
            Location::Hub {
                repo: "bert-base-uncased".into(),
                revision: "main".into(),
                kind: RepoKind::Model
            }
        );
        let loc =
            Location::parse("huawei-noah/TinyBERT_General_4L_312D@v2", RepoKind::Model).unwrap();
        assert_eq!(loc.to_string(), "huawei-noah/TinyBERT_General_4L_312D@v2");
        let err = Location::parse("./no/such/dir/", RepoKind::Model)
            .unwrap_err()
            .to_string();
        assert!(err.contains("neither an existing folder"), "{err}");
    }
}
