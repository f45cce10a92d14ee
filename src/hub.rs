//! Finding model and data files: a local folder, or a Hugging Face hub repository
//! through hf-hub (its cache first, the network only when a file is not cached).
//!
//! Environment, as in Python's `huggingface_hub`: `HF_HOME` (cache at `$HF_HOME/hub`),
//! `HF_ENDPOINT` (another hub), `HF_TOKEN` (private repos), `HF_HUB_OFFLINE=1`
//! (never touch the network).
//!
//! The cache is shared with Python (same layout). A file already cached for the revision is
//! used without any network access, so a branch like `main` stays at the commit first
//! downloaded; pin `org/name@<commit>` for exact reproducibility.

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
                let (field, folder) = match kind {
                    RepoKind::Model => ("model", "a folder (holding config.json and weights)"),
                    RepoKind::Dataset => ("data", "`hub`, a folder"),
                };
                return Err(Error::invalid(
                    spec,
                    field,
                    format!("expected {folder} or a hub id"),
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

    /// The hub commit the files come from; `None` for a local folder.
    pub fn commit(&self) -> Option<String> {
        match self {
            FileSource::Local(_) => None,
            FileSource::Hub(repo) => repo.commit(),
        }
    }
}

fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

fn http_status(e: &ApiError) -> Option<u16> {
    match e {
        ApiError::RequestError(inner) => match inner.as_ref() {
            ureq::Error::StatusCode(code) => Some(*code),
            _ => None,
        },
        _ => None,
    }
}

/// Writes one of the cache's small bookkeeping files (a ref, an absence marker), its
/// folders first; a cache it cannot write to only loses the shortcut.
fn write_marker(path: &Path, contents: &str) {
    let written = path
        .parent()
        .map(std::fs::create_dir_all)
        .unwrap_or(Ok(()))
        .and_then(|()| std::fs::write(path, contents));
    if let Err(e) = written {
        tracing::debug!("cannot write {}: {e}", path.display());
    }
}

/// The files under `dir`, as paths relative to `root` with `/` between folders.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            list_files(root, &path, out);
        } else if let Ok(relative) = path.strip_prefix(root) {
            let parts: Vec<_> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect();
            out.push(parts.join("/"));
        }
    }
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What the local cache knows about one file at one revision.
enum Cached {
    Present(PathBuf),
    /// Recorded as absent from this commit (`.no_exist/<commit>/<file>`, as Python writes).
    Absent,
    Unknown,
}

/// A hub repository at one revision, read through the hub's cache layout:
/// `<cache>/models--org--name/{refs/<revision>, snapshots/<commit>/<file>, blobs/, .no_exist/}`.
pub struct HubRepo {
    repo: Repo,
    repo_type: RepoType,
    id: String,
    revision: String,
    cache: Cache,
    api: Api,
    offline: bool,
    endpoint: String,
    /// File names and commit at this revision, fetched once when a file is not cached.
    listing: OnceCell<Result<Listing, ListingError>>,
}

struct ListingError {
    message: String,
    /// The hub could not be reached at all (as opposed to answering with an error).
    unreachable: bool,
    cause: String,
}

struct Listing {
    files: Vec<String>,
    commit: String,
}

impl HubRepo {
    pub fn new(id: &str, revision: &str, kind: RepoKind) -> Result<Self> {
        let repo_type = match kind {
            RepoKind::Model => RepoType::Model,
            RepoKind::Dataset => RepoType::Dataset,
        };
        let cache = Cache::from_env();
        // As Python's huggingface_hub: a trailing slash on HF_ENDPOINT is not part of URLs.
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty())
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .unwrap_or_else(|| "https://huggingface.co".into());
        let mut builder = ApiBuilder::from_env()
            .with_endpoint(endpoint.clone())
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
            repo_type,
            id: id.to_string(),
            revision: revision.to_string(),
            cache,
            api,
            offline: offline_from_env(),
            endpoint,
            listing: OnceCell::new(),
        })
    }

    fn describe(&self) -> String {
        format!("hub repo `{}` (revision {})", self.id, self.revision)
    }

    fn repo_dir(&self) -> PathBuf {
        self.cache.path().join(self.repo.folder_name())
    }

    /// The commit this revision points to in the cache: a commit hash names its snapshot
    /// directly; a branch or tag is looked up in `refs/`.
    fn cached_commit(&self) -> Option<String> {
        let dir = self.repo_dir();
        if is_commit_hash(&self.revision) && dir.join("snapshots").join(&self.revision).is_dir() {
            return Some(self.revision.clone());
        }
        let commit = std::fs::read_to_string(dir.join("refs").join(&self.revision)).ok()?;
        let commit = commit.trim();
        (!commit.is_empty()).then(|| commit.to_string())
    }

    /// The commit of the files resolved so far: from the cache, or from the hub's listing.
    pub fn commit(&self) -> Option<String> {
        match self.listing.get() {
            Some(Ok(listing)) => Some(listing.commit.clone()),
            _ => self.cached_commit(),
        }
    }

    fn cached(&self, name: &str) -> Cached {
        let Some(commit) = self.cached_commit() else {
            return Cached::Unknown;
        };
        let dir = self.repo_dir();
        let path = dir.join("snapshots").join(&commit).join(name);
        if path.is_file() {
            Cached::Present(path)
        } else if dir.join(".no_exist").join(&commit).join(name).exists() {
            Cached::Absent
        } else {
            Cached::Unknown
        }
    }

    /// The repo as asked of the hub: pinned to the cached commit when there is one, so that
    /// files fetched later come from the same snapshot as those already cached.
    fn remote(&self) -> Repo {
        match self.cached_commit() {
            Some(commit) => Repo::with_revision(self.id.clone(), self.repo_type, commit),
            None => self.repo.clone(),
        }
    }

    fn listing(&self) -> &Result<Listing, ListingError> {
        self.listing.get_or_init(|| {
            self.api
                .repo(self.remote())
                .info()
                .map(|info| Listing {
                    files: info.siblings.into_iter().map(|s| s.rfilename).collect(),
                    commit: info.sha,
                })
                .map_err(|e| ListingError {
                    message: self.explain(&e),
                    unreachable: http_status(&e).is_none(),
                    cause: e.to_string(),
                })
        })
    }

    /// Records that this revision points to `commit` (`refs/<revision>`, as Python
    /// writes), so that offline runs find the snapshot of files fetched by commit.
    fn remember_ref(&self, commit: &str) {
        if is_commit_hash(&self.revision) {
            return;
        }
        write_marker(&self.repo_dir().join("refs").join(&self.revision), commit);
    }

    /// Records that `name` is not in the repo at `commit`, so later offline runs know.
    fn remember_absent(&self, commit: &str, name: &str) {
        write_marker(
            &self.repo_dir().join(".no_exist").join(commit).join(name),
            "",
        );
    }

    fn explain(&self, e: &ApiError) -> String {
        let status = http_status(e);
        let token = std::env::var("HF_TOKEN").is_ok_and(|t| !t.is_empty());
        match status {
            Some(code @ (401 | 403 | 404)) if token => format!(
                "{}: not found at {} (HTTP {code}), or the token in HF_TOKEN has no access to it. \
                 Check the id and revision, and the token's permissions.",
                self.describe(),
                self.endpoint,
            ),
            Some(code @ (401 | 403 | 404)) => format!(
                "{}: not found at {} (HTTP {code}). Check the id and revision; \
                 for a private or gated repo set HF_TOKEN.",
                self.describe(),
                self.endpoint,
            ),
            Some(code) => format!(
                "{}: {} answered HTTP {code}. Try again later, or work offline: \
                 set HF_HUB_OFFLINE=1 to use the cache at {}, or pass a local folder.",
                self.describe(),
                self.endpoint,
                self.cache.path().display()
            ),
            None => format!(
                "{}: cannot reach {} ({e}). To work offline, download the files once with network access \
                 (they are kept in the cache at {}), then set HF_HUB_OFFLINE=1; or pass a local folder instead of a hub id.",
                self.describe(),
                self.endpoint,
                self.cache.path().display()
            ),
        }
    }

    fn missing(&self, list: &str) -> Error {
        if let Some(Err(e)) = self
            .listing
            .get()
            .filter(|l| l.as_ref().is_err_and(|e| e.unreachable))
        {
            return Error::ModelNotFound(format!(
                "{}: [{list}] not in the cache at {}, and {} cannot be reached ({}). \
                 To work offline, download the files once with network access, then set \
                 HF_HUB_OFFLINE=1; or pass a local folder instead of a hub id.",
                self.describe(),
                self.cache.path().display(),
                self.endpoint,
                e.cause
            ));
        }
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

    /// Every file of the repo at this revision, and the commit they are at: from the
    /// hub's listing, or (offline, or when the hub cannot be reached) from the cached
    /// snapshot, which may hold only some of them.
    pub fn files(&self) -> Result<(String, Vec<String>)> {
        if !self.offline {
            match self.listing() {
                Ok(listing) => {
                    self.remember_ref(&listing.commit);
                    return Ok((listing.commit.clone(), listing.files.clone()));
                }
                Err(e) if !e.unreachable => return Err(Error::ModelNotFound(e.message.clone())),
                Err(e) => tracing::debug!("{}", e.message),
            }
        }
        let commit = self
            .cached_commit()
            .ok_or_else(|| self.missing("its file list"))?;
        let snapshot = self.repo_dir().join("snapshots").join(&commit);
        let mut files = Vec::new();
        list_files(&snapshot, &snapshot, &mut files);
        files.sort();
        Ok((commit, files))
    }

    /// The first candidate in the cache; otherwise (unless offline, or every candidate is
    /// known to be absent) the first one the hub lists, downloaded into the cache.
    fn first_of(&self, candidates: &[&str]) -> Result<Option<(String, PathBuf)>> {
        let mut unknown = false;
        for name in candidates {
            match self.cached(name) {
                Cached::Present(path) => return Ok(Some((name.to_string(), path))),
                Cached::Absent => {}
                Cached::Unknown => unknown = true,
            }
        }
        if self.offline || !unknown {
            return Ok(None);
        }
        let listing = match self.listing() {
            Ok(listing) => listing,
            // Unreachable: files not cached are treated as absent; a required one reports
            // the connection error through `missing`.
            Err(e) if e.unreachable => {
                tracing::debug!("{}", e.message);
                return Ok(None);
            }
            Err(e) => return Err(Error::ModelNotFound(e.message.clone())),
        };
        for name in candidates {
            if listing.files.iter().any(|f| f == name) {
                tracing::info!("downloading {name} from {}", self.describe());
                let path =
                    self.api.repo(self.remote()).get(name).map_err(|e| {
                        Error::ModelNotFound(format!("{name}: {}", self.explain(&e)))
                    })?;
                return Ok(Some((name.to_string(), path)));
            }
            self.remember_absent(&listing.commit, name);
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
