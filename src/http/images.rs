//! The `/images/` tree. Every GET and HEAD passes the path jail ([`crate::jail`], the rules
//! TFTP uses: the `%`-decoded name, no `..`, no symlink resolving out of `boot-images/`,
//! regular files only) before anything reads a file: plain whole-file GETs come from the
//! RAM cache ([`ImageCache`], whose entries were read through the jail and whose hits
//! re-check the file's identity), everything else (HEAD, `Range`, `If-*`, cache misses)
//! is resolved by the jail first and then served by tower-http's `ServeDir`, which alone
//! would follow a symlink anywhere.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::image_cache::ImageCache;
use crate::jail::{self, JailError};

/// What the gate in front of `ServeDir` needs.
struct Images {
    /// `boot-images/` as configured. Canonicalized on each request, because `ServeDir`
    /// follows it live too (an operator may swap a `boot-images` symlink to a new tree).
    root: PathBuf,
    /// Plain whole-file GETs of files it holds are answered from memory.
    cache: ImageCache,
}

/// What `nest_service` needs of the `/images` service.
pub trait ImagesService:
    tower::Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> ImagesService for S where
    S: tower::Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// The service mounted at `/images`: the jail gate, the RAM cache of `cache_budget` bytes
/// (0: off), then `ServeDir` over `root`.
pub fn service(root: &Path, cache_budget: u64) -> impl ImagesService {
    // 1 MiB reads: each chunk is one trip through tokio's blocking pool, so fewer, larger
    // reads cut the per-GB CPU (64 KiB default → 256 KiB took a 256 MiB image from 0.49× to
    // 0.73× nginx; see docs/boot-perf.md for 1 MiB). At most one chunk per response is in
    // memory.
    let serve_dir = tower_http::services::ServeDir::new(root)
        .append_index_html_on_directories(false)
        .with_buf_chunk_size(1024 * 1024);
    let images = Arc::new(Images {
        root: root.to_path_buf(),
        cache: ImageCache::new(root, cache_budget),
    });
    tower::ServiceBuilder::new()
        .layer(axum::middleware::from_fn_with_state(images, gate))
        .service(serve_dir)
}

/// The jail decides before a file is touched; the cache or `ServeDir` answers what it admits.
async fn gate(State(images): State<Arc<Images>>, req: Request, next: Next) -> Response {
    // ServeDir answers any other method 405 without touching a file.
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return next.run(req).await;
    }
    let rel = match Images::name(req.uri().path()) {
        Ok(rel) => rel,
        Err(e) => return refusal(&e),
    };
    // A cache hit needs no second look: its entry was read through the jail, and the hit
    // re-checks the file's identity (a file swapped for a symlink out of the root is
    // another inode: a miss, which the jail then refuses below).
    if images.cache.wants(&req)
        && let Some(resp) = images.cache.serve(rel.clone()).await
    {
        return resp;
    }
    if let Err(e) = images.admit(rel).await {
        return refusal(&e);
    }
    next.run(req).await
}

impl Images {
    /// The jailed name `path` (the URI path below `/images`) asks for. Decoded exactly as
    /// `ServeDir` decodes it (leading `/` off, `%`-escapes, UTF-8 or not found), so the file
    /// checked is the file it serves. Pure: no `..`, nothing absolute.
    fn name(path: &str) -> Result<String, JailError> {
        let decoded = percent_encoding::percent_decode_str(path.trim_start_matches('/'))
            .decode_utf8()
            .map_err(|_| JailError::NotFound {
                path: path.to_string(),
            })?;
        jail::normalize(&decoded)
    }

    /// Whether `rel` is a regular file inside the root (symlinks resolved).
    async fn admit(&self, rel: String) -> Result<String, JailError> {
        let path = rel.clone();
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let root = std::fs::canonicalize(&root).map_err(|e| root_error(&rel, e))?;
            jail::resolve(&root, &rel).map(|_| rel)
        })
        .await
        .map_err(|e| JailError::Io {
            path: path.to_string(),
            source: std::io::Error::other(e),
        })?
    }
}

/// A root that cannot be resolved: not found as `ServeDir` would answer, or an I/O error.
fn root_error(rel: &str, e: std::io::Error) -> JailError {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::PermissionDenied => {
            JailError::NotFound {
                path: rel.to_string(),
            }
        }
        _ => JailError::Io {
            path: rel.to_string(),
            source: e,
        },
    }
}

/// The answer to a refused name: 404 for no such file (as `ServeDir` answers it), 403 for a
/// name the jail refuses, 500 for a local I/O error; an empty body, as `ServeDir`'s.
fn refusal(e: &JailError) -> Response {
    let status = match e {
        JailError::NotFound { .. } => StatusCode::NOT_FOUND,
        JailError::Refused { .. } => {
            // A symlink out of the root is an operator's mistake or a probe: say which.
            tracing::warn!(error = %e, "image request refused by the path jail");
            StatusCode::FORBIDDEN
        }
        JailError::Io { .. } => {
            tracing::error!(error = %e, "image request failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    status.into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::header;
    use tower::ServiceExt;

    use super::*;

    const SECRET: &[u8] = b"TOP-SECRET outside boot-images";

    /// `boot-images/` with a legal file `k`, a symlink `leak` to a file outside, and a
    /// symlink `inside` to `k`; the temp dirs live as long as the returned guards.
    fn tree() -> (tempfile::TempDir, tempfile::TempDir) {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), SECRET).unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("k"), b"kernel bytes").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("leak"))
            .unwrap();
        std::os::unix::fs::symlink("k", root.path().join("inside")).unwrap();
        (root, outside)
    }

    async fn call(root: &Path, method: Method, uri: &str, hdr: &[(&str, &str)]) -> Response {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in hdr {
            req = req.header(*k, *v);
        }
        service(root, 1 << 20)
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn body(resp: Response) -> Vec<u8> {
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec()
    }

    #[tokio::test]
    async fn a_symlink_out_of_the_root_is_refused_whatever_the_request() {
        let (root, _outside) = tree();
        let root = root.path();
        type Headers<'a> = &'a [(&'a str, &'a str)];
        let cases: [(Method, &str, Headers); 9] = [
            (Method::GET, "/leak", &[]),
            (Method::GET, "/leak", &[("range", "bytes=0-3")]),
            (Method::GET, "/leak", &[("if-none-match", "\"x\"")]),
            (
                Method::GET,
                "/leak",
                &[("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT")],
            ),
            (Method::HEAD, "/leak", &[]),
            (Method::GET, "/%6ceak", &[]),
            (Method::GET, "/x%2F%2e%2e%2Fleak", &[]),
            (Method::GET, "/%2e%2e/k", &[]),
            (Method::GET, "/.%2Fleak", &[("range", "bytes=0-3")]),
        ];
        for (method, uri, hdr) in cases {
            let what = format!("{method} {uri} {hdr:?}");
            let resp = call(root, method, uri, hdr).await;
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{what}");
            assert!(!resp.headers().contains_key(header::ETAG), "{what}");
            assert!(body(resp).await.is_empty(), "{what}");
        }
        assert_eq!(
            call(root, Method::GET, "/missing", &[]).await.status(),
            StatusCode::NOT_FOUND
        );
        // Not a file request: ServeDir's own answer.
        assert_eq!(
            call(root, Method::POST, "/leak", &[]).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn legal_files_keep_servedir_answers() {
        let (root, _outside) = tree();
        let root = root.path();
        for uri in ["/k", "/inside", "/%6b", "/./k"] {
            let resp = call(root, Method::GET, uri, &[]).await;
            assert_eq!(resp.status(), StatusCode::OK, "{uri}");
            assert_eq!(body(resp).await, b"kernel bytes", "{uri}");
        }
        let resp = call(root, Method::GET, "/k", &[("range", "bytes=0-3")]).await;
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(body(resp).await, b"kern");
        let head = call(root, Method::HEAD, "/k", &[]).await;
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(head.headers()[header::CONTENT_LENGTH], "12");
        let etag = head.headers()[header::ETAG].to_str().unwrap().to_string();
        let resp = call(root, Method::GET, "/k", &[("if-none-match", &etag)]).await;
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    }
}
