//! A RAM cache of the boot files every machine of a rack fetches (kernels, initrds, images)
//! for the one request that matters for throughput: a plain whole-file `GET`.
//!
//! tower-http's `ServeDir` copies each file twice on its way out (page cache → a buffer
//! through tokio's blocking pool → the socket); nginx copies it zero times (`sendfile`).
//! A cached file leaves straight from memory (one copy, into the socket): when a rack of
//! 32 nodes boots, the initrd is read from disk once and served 32 times. Every other
//! request (HEAD, `Range`, conditional `If-*`, a file too big for the cache, a name with
//! `%`-escapes) goes to `ServeDir` as before, and a cached response carries exactly
//! `ServeDir`'s headers (type, `Last-Modified`, `ETag`, `Accept-Ranges`), so clients can't
//! tell the two apart. Every request has passed the path jail before it gets here
//! ([`super::images`]).
//!
//! Freshness: every hit `stat`s the file (following symlinks, as `ServeDir` does) and is
//! served only if device, inode, size and mtime are those of the cached copy; anything
//! else is a miss, and a miss is read through the path jail again (`crate::jail::open`: no
//! `..`, no symlink out of the root, regular files only, the last component opened
//! without following a symlink). A file changed while it was being read is not cached.
//! Replacing a file (`cp`, `mv`, `rsync`) is thus seen by the next request. Memory is
//! bounded (`[http] image_cache_mb`): the least recently used files are dropped first.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, Request, header};
use axum::response::Response;

/// Identity of one version of a file: a replaced or rewritten file differs in one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl FileId {
    fn of(m: &std::fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }
}

struct Entry {
    id: FileId,
    body: Bytes,
    headers: HeaderMap,
    last_used: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    used: u64,
    tick: u64,
}

/// The cache; one per HTTP listener.
pub struct ImageCache {
    /// The canonical `boot-images/` root; `None` disables the cache.
    root: Option<PathBuf>,
    budget: u64,
    inner: Mutex<Inner>,
    /// One load at a time: concurrent first requests for a file read it once.
    loading: tokio::sync::Mutex<()>,
}

impl ImageCache {
    /// A cache of at most `budget` bytes of files under `root` (0 disables it).
    pub fn new(root: &Path, budget: u64) -> ImageCache {
        let root = if budget == 0 {
            None
        } else {
            std::fs::canonicalize(root).ok()
        };
        ImageCache {
            root,
            budget,
            inner: Mutex::new(Inner::default()),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `req` is a request the cache may answer: a plain whole-file GET while the
    /// cache is on.
    pub fn wants<B>(&self, req: &Request<B>) -> bool {
        self.root.is_some() && eligible(req)
    }

    /// The response for `rel` (the jailed name of a request the cache [wants](Self::wants))
    /// when the cache can answer it; `None` sends the request on to `ServeDir`.
    pub async fn serve(&self, rel: String) -> Option<Response> {
        let root = self.root.as_ref()?;
        let meta = std::fs::metadata(root.join(&rel)).ok()?;
        if !meta.is_file() || meta.len() == 0 || meta.len() > self.budget {
            return None;
        }
        let id = FileId::of(&meta);
        if let Some(resp) = self.hit(&rel, id) {
            metrics::counter!("bootgate_image_cache_total", "result" => "hit").increment(1);
            return Some(resp);
        }
        let _one = self.loading.lock().await;
        if let Some(resp) = self.hit(&rel, id) {
            metrics::counter!("bootgate_image_cache_total", "result" => "hit").increment(1);
            return Some(resp);
        }
        metrics::counter!("bootgate_image_cache_total", "result" => "miss").increment(1);
        let entry = match load(root, &rel).await {
            Ok(e) => e,
            Err(reason) => {
                tracing::debug!(file = %rel, %reason, "not cached; ServeDir answers");
                return None;
            }
        };
        let resp = response(&entry.body, &entry.headers);
        self.insert(rel, entry);
        Some(resp)
    }

    fn hit(&self, rel: &str, id: FileId) -> Option<Response> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let e = inner.entries.get_mut(rel).filter(|e| e.id == id)?;
        e.last_used = tick;
        Some(response(&e.body, &e.headers))
    }

    fn insert(&self, rel: String, mut entry: Entry) {
        let mut inner = self.lock();
        inner.tick += 1;
        entry.last_used = inner.tick;
        let size = entry.body.len() as u64;
        if let Some(old) = inner.entries.remove(&rel) {
            inner.used -= old.body.len() as u64;
        }
        while inner.used + size > self.budget {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(old) = inner.entries.remove(&oldest) {
                inner.used -= old.body.len() as u64;
            }
        }
        inner.used += size;
        inner.entries.insert(rel, entry);
        metrics::gauge!("bootgate_image_cache_bytes").set(inner.used as f64);
    }
}

/// A plain whole-file GET: no range, no precondition, no escapes in the path.
fn eligible<B>(req: &Request<B>) -> bool {
    const PASS_ON: [header::HeaderName; 6] = [
        header::RANGE,
        header::IF_RANGE,
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
    ];
    req.method() == Method::GET
        && !req.uri().path().contains('%')
        && !req.uri().path().ends_with('/')
        && PASS_ON.iter().all(|h| !req.headers().contains_key(h))
}

fn response(body: &Bytes, headers: &HeaderMap) -> Response {
    let mut resp = Response::new(Body::from(body.clone()));
    *resp.headers_mut() = headers.clone();
    resp
}

/// Reads `rel` through the path jail; refuses a file that changed while it was read.
async fn load(root: &Path, rel: &str) -> Result<Entry, String> {
    let (file, len) = crate::jail::open(root, rel)
        .await
        .map_err(|e| e.to_string())?;
    let file = file.into_std().await;
    let path = root.join(rel);
    tokio::task::spawn_blocking(move || -> Result<Entry, String> {
        let before = file.metadata().map_err(|e| e.to_string())?;
        let mut body = Vec::with_capacity(len as usize);
        (&file)
            .take(len)
            .read_to_end(&mut body)
            .map_err(|e| e.to_string())?;
        let after = file.metadata().map_err(|e| e.to_string())?;
        if FileId::of(&before) != FileId::of(&after) || body.len() as u64 != after.len() {
            return Err("changed while being read".into());
        }
        Ok(Entry {
            id: FileId::of(&after),
            headers: headers_for(&path, &after),
            body: Bytes::from(body),
            last_used: 0,
        })
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The headers `ServeDir` (tower-http 0.7) sends for a whole file: the same type guess,
/// `Last-Modified`, and its `ETag` format (`"<secs hex>.<nanos hex>-<size hex>"`).
fn headers_for(path: &Path, meta: &std::fs::Metadata) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    if let Ok(v) = HeaderValue::from_str(mime.as_ref()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(modified) = meta.modified() {
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
            h.insert(header::LAST_MODIFIED, v);
        }
        if let Some(v) = etag(meta.len(), modified) {
            h.insert(header::ETAG, v);
        }
    }
    h
}

fn etag(size: u64, modified: SystemTime) -> Option<HeaderValue> {
    let d: Duration = modified.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    HeaderValue::from_str(&format!(
        "\"{:x}.{:08x}-{:x}\"",
        d.as_secs(),
        d.subsec_nanos(),
        size
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).unwrap()
    }

    impl ImageCache {
        /// What the cache answers for `req` behind the lexical jail.
        async fn answer(&self, req: &Request<()>) -> Option<Response> {
            if !self.wants(req) {
                return None;
            }
            self.serve(crate::jail::normalize(req.uri().path()).ok()?)
                .await
        }
    }

    async fn body_of(resp: Response) -> Vec<u8> {
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec()
    }

    #[tokio::test]
    async fn serves_whole_files_and_sees_replacements() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), b"kernel v1").unwrap();
        let cache = ImageCache::new(dir.path(), 1 << 20);
        let resp = cache.answer(&get("/k")).await.expect("cached");
        assert_eq!(resp.headers()[header::ACCEPT_RANGES], "bytes");
        assert!(resp.headers().contains_key(header::ETAG));
        assert!(resp.headers().contains_key(header::LAST_MODIFIED));
        assert_eq!(body_of(resp).await, b"kernel v1");
        assert_eq!(cache.used(), 9);
        // Replaced (new inode, as cp to a temp name + mv does) and rewritten in place.
        std::fs::write(dir.path().join("k.new"), b"kernel v2!").unwrap();
        std::fs::rename(dir.path().join("k.new"), dir.path().join("k")).unwrap();
        let resp = cache.answer(&get("/k")).await.unwrap();
        assert_eq!(body_of(resp).await, b"kernel v2!");
        std::fs::write(dir.path().join("k"), b"kernel v3 longer").unwrap();
        let resp = cache.answer(&get("/k")).await.unwrap();
        assert_eq!(body_of(resp).await, b"kernel v3 longer");
        assert_eq!(cache.used(), 16);
    }

    #[tokio::test]
    async fn passes_on_what_servedir_must_answer() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), b"kernel").unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
        let cache = ImageCache::new(dir.path(), 1 << 20);
        let ranged = Request::builder()
            .uri("/k")
            .header(header::RANGE, "bytes=0-1")
            .body(())
            .unwrap();
        assert!(cache.answer(&ranged).await.is_none());
        let conditional = Request::builder()
            .uri("/k")
            .header(header::IF_NONE_MATCH, "\"x\"")
            .body(())
            .unwrap();
        assert!(cache.answer(&conditional).await.is_none());
        let head = Request::builder()
            .method(Method::HEAD)
            .uri("/k")
            .body(())
            .unwrap();
        assert!(cache.answer(&head).await.is_none());
        for path in ["/d", "/missing", "/../k", "/k%20", "/link"] {
            assert!(cache.answer(&get(path)).await.is_none(), "{path}");
        }
        assert_eq!(cache.used(), 0);
        // Disabled: nothing is cached.
        let off = ImageCache::new(dir.path(), 0);
        assert!(off.answer(&get("/k")).await.is_none());
    }

    #[tokio::test]
    async fn least_recently_used_files_leave_first() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b", "c"] {
            std::fs::write(dir.path().join(name), [0u8; 400]).unwrap();
        }
        let cache = ImageCache::new(dir.path(), 1000);
        for path in ["/a", "/b", "/a", "/c"] {
            assert!(cache.answer(&get(path)).await.is_some());
        }
        assert_eq!(cache.used(), 800);
        let inner = cache.lock();
        let mut names: Vec<&String> = inner.entries.keys().collect();
        names.sort();
        assert_eq!(names, ["a", "c"]);
    }
}
