//! `GET /api/docs`: the OpenAPI document rendered in a browser by Swagger UI,
//! vendored from npm into `docs/swagger-ui/` (licence alongside) and embedded
//! in the binary, so the page needs nothing from another origin.

use warp::http::HeaderValue;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// Scripts and styles from this origin only; Swagger UI sets inline styles,
/// and its schema icons are `data:` images.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The page's files: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "init.js",
        "text/javascript; charset=utf-8",
        include_bytes!("docs/init.js"),
    ),
    (
        "swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
        include_bytes!("docs/swagger-ui/swagger-ui-bundle.js"),
    ),
    (
        "swagger-ui.css",
        "text/css; charset=utf-8",
        include_bytes!("docs/swagger-ui/swagger-ui.css"),
    ),
];

/// GET /api/docs
pub fn page() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "docs").and(warp::get()).map(|| {
        let mut response = static_file(
            "text/html; charset=utf-8",
            include_bytes!("docs/index.html"),
        );
        response
            .headers_mut()
            .insert("content-security-policy", HeaderValue::from_static(CSP));
        response
    })
}

/// GET /api/docs/:asset
pub fn asset() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "docs" / String)
        .and(warp::get())
        .and_then(|name: String| async move {
            ASSETS
                .iter()
                .find(|(file, _, _)| *file == name)
                .map(|(_, content_type, bytes)| static_file(content_type, bytes))
                .ok_or_else(warp::reject::not_found)
        })
}

fn static_file(content_type: &'static str, bytes: &'static [u8]) -> Response {
    let mut response = Response::new(bytes.into());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The files change with the binary, not their names: an hour is as
    // stale as the page gets after an upgrade.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response.into_response()
}
