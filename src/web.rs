//! The browser client: static files under `web/`, embedded in the binary and
//! served at `GET /` (the page), `GET /web/<asset>` (its stylesheet and icon)
//! and `GET /web/js/<module>` (its JavaScript modules), with a strong ETag,
//! `If-None-Match` → 304, and a strict Content-Security-Policy (same origin
//! only, no inline script or style). Every file name is listed in
//! openapi.yaml: HEAD, 405 and OPTIONS come from there, like the API's.
//!
//! A new module of the client is a file under `web/js/`, a line in
//! [`ASSETS`] and a name in the `/web/js/{module}` enum of openapi.yaml (a
//! test compares the two).

use std::sync::LazyLock;
use warp::http::StatusCode;
use warp::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, HeaderValue, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS,
};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// The policy every file is served with. `connect-src 'self'` covers the
/// same-origin WebSocket (`ws(s)://<host>/ws`) in current browsers.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// One embedded file.
pub struct Asset {
    /// Its path under `web/`, which is also its URL under `/web/`.
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
    /// A strong validator: the content's hash, quoted.
    pub etag: String,
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml; charset=utf-8";

/// The page, served at `/` only.
const INDEX: &str = "index.html";
/// Where the modules live, under `web/` and under `/web/`.
const MODULES: &str = "js/";

macro_rules! asset {
    ($path:literal, $type:expr) => {
        (
            $path,
            $type,
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $path)).as_slice(),
        )
    };
}

/// Every file of the client, hashed once.
pub static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    [
        asset!("index.html", HTML),
        asset!("styles.css", CSS),
        asset!("favicon.svg", SVG),
        asset!("js/main.js", JS),
        asset!("js/api.js", JS),
        asset!("js/socket.js", JS),
        asset!("js/store.js", JS),
        asset!("js/signin.js", JS),
        asset!("js/ui.js", JS),
        asset!("js/messages.js", JS),
        asset!("js/details.js", JS),
        asset!("js/newchat.js", JS),
        asset!("js/search.js", JS),
        asset!("js/dom.js", JS),
    ]
    .into_iter()
    .map(|(path, content_type, body)| Asset {
        path,
        content_type,
        body,
        etag: format!("\"{:016x}\"", fnv1a64(body)),
    })
    .collect()
});

/// FNV-1a, 64 bits: enough to tell versions of a file apart.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn find(path: &str) -> Result<&'static Asset, Rejection> {
    ASSETS
        .iter()
        .find(|a| a.path == path)
        .ok_or_else(warp::reject::not_found)
}

/// The page and its files.
pub fn routes() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    index().or(asset()).unify().or(module()).unify()
}

/// GET /
fn index() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path::end()
        .and(warp::get())
        .and(if_none_match())
        .and_then(|tags: Option<String>| async move {
            find(INDEX).map(|asset| serve(asset, tags.as_deref()))
        })
}

/// GET /web/:asset
fn asset() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("web" / String)
        .and(warp::get())
        .and(if_none_match())
        .and_then(|name: String, tags: Option<String>| async move {
            if name == INDEX {
                return Err(warp::reject::not_found());
            }
            find(&name).map(|asset| serve(asset, tags.as_deref()))
        })
}

/// GET /web/js/:module
fn module() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("web" / "js" / String)
        .and(warp::get())
        .and(if_none_match())
        .and_then(|name: String, tags: Option<String>| async move {
            find(&format!("{MODULES}{name}")).map(|asset| serve(asset, tags.as_deref()))
        })
}

fn if_none_match() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("if-none-match")
}

fn serve(asset: &'static Asset, if_none_match: Option<&str>) -> Response {
    let fresh = if_none_match.is_some_and(|v| matches_etag(v, &asset.etag));
    let mut res = if fresh {
        let mut res = Response::default();
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        res
    } else {
        let mut res = asset.body.into_response();
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        res
    };
    let headers = res.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        headers.insert(ETAG, etag);
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    res
}

/// `If-None-Match` uses the weak comparison (RFC 9110 13.1.2): `*`, or any
/// listed tag equal to ours once a `W/` prefix is dropped.
fn matches_etag(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_file_is_embedded_with_a_distinct_etag() {
        let mut tags: Vec<&str> = ASSETS.iter().map(|a| a.etag.as_str()).collect();
        assert!(ASSETS.iter().all(|a| !a.body.is_empty()));
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), ASSETS.len());
    }

    #[test]
    fn if_none_match_uses_the_weak_comparison() {
        let tag = "\"00ff\"";
        assert!(matches_etag("\"00ff\"", tag));
        assert!(matches_etag("W/\"00ff\"", tag));
        assert!(matches_etag("\"1\", \"00ff\"", tag));
        assert!(matches_etag("*", tag));
        assert!(!matches_etag("\"00fe\"", tag));
        assert!(!matches_etag("00ff", tag));
    }

    #[test]
    fn fnv1a64_matches_the_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
