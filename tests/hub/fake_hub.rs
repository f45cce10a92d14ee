//! A stand-in for the Hugging Face hub on 127.0.0.1, serving exactly what hf-hub 0.5's sync
//! client asks (hf-hub-0.5.0/src/api/sync.rs):
//!
//! - `GET /api/models/{repo}/revision/{rev}` (`/api/datasets/...` for a dataset): JSON
//!   `{"sha": commit, "siblings": [{"rfilename"}]}`;
//! - `GET /{repo}/resolve/{rev}/{file}` (`/datasets/{repo}/resolve/...`) with `Range: bytes=0-0` (metadata: `etag` or
//!   `x-linked-etag`, `x-repo-commit`, `content-range: bytes 0-0/<size>`), then with
//!   `Range: bytes=<start>-` (the download).
//!
//! Every response closes its connection. The server stops when dropped, after `MAX_REQUESTS`
//! requests, or after `LIFETIME`, whichever comes first, so a failing test cannot hang on it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::Digest;

const MAX_REQUESTS: usize = 200;
const LIFETIME: Duration = Duration::from_secs(60);

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub authorization: Option<String>,
    pub range: Option<String>,
}

pub struct FakeHub {
    pub endpoint: String,
    pub commit: String,
    log: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Repo {
    id: String,
    /// `models` or `datasets`: the listing is at `/api/<kind>/<id>/...`, files at
    /// `/<id>/resolve/...` for a model and `/datasets/<id>/resolve/...` for a dataset.
    kind: &'static str,
    commit: String,
    files: BTreeMap<String, Vec<u8>>,
    /// When set, every request must carry `Authorization: Bearer <token>`.
    token: Option<String>,
}

impl FakeHub {
    /// Serves `files` as the model repo `id` at revision `main` (and at its commit).
    pub fn serve(id: &str, files: BTreeMap<String, Vec<u8>>, token: Option<&str>) -> FakeHub {
        FakeHub::serve_repo(id, "models", files, token)
    }

    /// Serves `files` as the dataset repo `id`, as [`FakeHub::serve`] a model.
    pub fn serve_dataset(id: &str, files: BTreeMap<String, Vec<u8>>) -> FakeHub {
        FakeHub::serve_repo(id, "datasets", files, None)
    }

    fn serve_repo(
        id: &str,
        kind: &'static str,
        files: BTreeMap<String, Vec<u8>>,
        token: Option<&str>,
    ) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let commit = format!("{:x}", sha2::Sha256::digest(id.as_bytes()))[..40].to_string();
        let repo = Repo {
            id: id.to_string(),
            kind,
            commit: commit.clone(),
            files,
            token: token.map(str::to_string),
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut served = 0;
                while !stop.load(Ordering::Relaxed)
                    && started.elapsed() < LIFETIME
                    && served < MAX_REQUESTS
                {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            served += 1;
                            if let Some(request) = handle(stream, &repo) {
                                log.lock().unwrap().push(request);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        FakeHub {
            endpoint,
            commit,
            log,
            stop,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(stream: TcpStream, repo: &Repo) -> Option<Request> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut request = Request {
        path,
        authorization: None,
        range: None,
    };
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "authorization" => request.authorization = Some(value.trim().to_string()),
                "range" => request.range = Some(value.trim().to_string()),
                _ => {}
            }
        }
    }
    respond(stream, repo, &request);
    Some(request)
}

fn respond(mut stream: TcpStream, repo: &Repo, request: &Request) {
    let mut send = |status: &str, headers: &[(&str, String)], body: &[u8]| {
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
        let _ = stream.flush();
    };
    if let Some(token) = &repo.token {
        if request.authorization.as_deref() != Some(&format!("Bearer {token}")) {
            let body = br#"{"error":"Invalid username or password."}"#;
            return send("401 Unauthorized", &[], body);
        }
    }
    let revision_ok = |rev: &str| rev == "main" || rev == repo.commit;
    let not_found = |code: &str| {
        (
            "404 Not Found",
            vec![("X-Error-Code", code.to_string())],
            br#"{"error":"not found"}"#.to_vec(),
        )
    };
    let info_prefix = format!("/api/{}/{}/revision/", repo.kind, repo.id);
    let resolve_prefix = match repo.kind {
        "models" => format!("/{}/resolve/", repo.id),
        kind => format!("/{kind}/{}/resolve/", repo.id),
    };
    let (status, headers, body) = if let Some(rev) = request.path.strip_prefix(&info_prefix) {
        if revision_ok(rev) {
            let siblings: Vec<_> = repo
                .files
                .keys()
                .map(|f| serde_json::json!({ "rfilename": f }))
                .collect();
            let body = serde_json::json!({"id": repo.id, "sha": repo.commit, "siblings": siblings});
            ("200 OK", vec![], body.to_string().into_bytes())
        } else {
            not_found("RevisionNotFound")
        }
    } else if let Some(rest) = request.path.strip_prefix(&resolve_prefix) {
        match rest.split_once('/') {
            Some((rev, file)) if revision_ok(rev) => match repo.files.get(file) {
                Some(bytes) => ranged(bytes, request.range.as_deref(), &repo.commit),
                None => not_found("EntryNotFound"),
            },
            _ => not_found("RevisionNotFound"),
        }
    } else {
        not_found("RepoNotFound")
    };
    send(status, &headers, &body);
}

/// A `206 Partial Content` answer for `bytes=<start>-[<end>]`, with the hub's metadata headers.
fn ranged(
    bytes: &[u8],
    range: Option<&str>,
    commit: &str,
) -> (&'static str, Vec<(&'static str, String)>, Vec<u8>) {
    let len = bytes.len();
    let (start, end) = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| {
            let start: usize = a.parse().unwrap_or(0);
            let end: usize = b.parse().unwrap_or(len.saturating_sub(1));
            (start.min(len), end.min(len.saturating_sub(1)))
        })
        .unwrap_or((0, len.saturating_sub(1)));
    let body = bytes.get(start..=end).unwrap_or_default().to_vec();
    // Large files are LFS objects on the real hub: their sha256 comes as x-linked-etag.
    let sha = format!("{:x}", sha2::Sha256::digest(bytes));
    let etag_header = if len > 1 << 20 {
        "x-linked-etag"
    } else {
        "etag"
    };
    let headers = vec![
        (etag_header, format!("\"{sha}\"")),
        ("x-repo-commit", commit.to_string()),
        ("content-range", format!("bytes {start}-{end}/{len}")),
    ];
    ("206 Partial Content", headers, body)
}
