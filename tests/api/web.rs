//! The web client's files (`src/web.rs`): content types, security headers,
//! ETag and 304, and their place in the route table (openapi.yaml), which
//! gives them HEAD, OPTIONS, 405 and metrics labels like any endpoint.

use crate::helpers::*;
use crate::ops::{scrape, value};
use reqwest::Method;
use serde_json::Value;
use std::collections::BTreeSet;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

async fn get(app: &TestApp, path: &str, if_none_match: Option<&str>) -> reqwest::Response {
    let mut req = app.http.get(app.url(path));
    if let Some(tag) = if_none_match {
        req = req.header("if-none-match", tag);
    }
    req.send().await.expect("request sent")
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn the_client_is_served_with_its_content_types_and_security_headers() {
    let app = spawn_app().await;
    let cases = [
        ("/", "text/html; charset=utf-8"),
        ("/web/styles.css", "text/css; charset=utf-8"),
        ("/web/js/main.js", "text/javascript; charset=utf-8"),
        ("/web/js/socket.js", "text/javascript; charset=utf-8"),
        ("/web/favicon.svg", "image/svg+xml; charset=utf-8"),
    ];
    for (path, content_type) in cases {
        let res = get(&app, path, None).await;
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(header(&res, "content-type"), content_type, "{path}");
        assert_eq!(header(&res, "content-security-policy"), CSP, "{path}");
        assert_eq!(header(&res, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header(&res, "referrer-policy"), "no-referrer", "{path}");
        assert_eq!(header(&res, "cache-control"), "no-cache", "{path}");
        let etag = header(&res, "etag").to_string();
        assert!(
            etag.starts_with('"') && etag.ends_with('"'),
            "{path}: a strong ETag, got {etag}"
        );
        assert!(!res.bytes().await.unwrap().is_empty(), "{path}");
    }
    let page = get(&app, "/", None).await.text().await.unwrap();
    assert!(page.contains(r#"<script type="module" src="/web/js/main.js">"#));
    assert_eq!(
        page.matches("<script").count(),
        page.matches("<script type=\"module\" src=").count(),
        "no inline script under the CSP"
    );
    assert!(
        !page.contains("style=") && !page.contains("<style"),
        "no inline style under the CSP"
    );
}

#[tokio::test]
async fn a_matching_if_none_match_gets_304_and_another_gets_the_file() {
    let app = spawn_app().await;
    let first = get(&app, "/web/js/main.js", None).await;
    let etag = header(&first, "etag").to_string();
    assert_eq!(
        get(&app, "/web/js/main.js", None).await.headers()["etag"],
        etag.as_str(),
        "stable"
    );

    let cached = get(&app, "/web/js/main.js", Some(&etag)).await;
    assert_eq!(cached.status(), 304);
    assert_eq!(header(&cached, "etag"), etag);
    assert_eq!(header(&cached, "content-security-policy"), CSP);
    assert!(cached.bytes().await.unwrap().is_empty());

    let listed = get(&app, "/web/js/main.js", Some(&format!("\"0\", W/{etag}"))).await;
    assert_eq!(listed.status(), 304, "weak comparison, any tag of a list");

    let stale = get(&app, "/web/js/main.js", Some("\"0000000000000000\"")).await;
    assert_eq!(stale.status(), 200);

    let other = get(&app, "/", None).await;
    assert_ne!(header(&other, "etag"), etag, "one tag per file");
}

/// The names openapi.yaml lists for a path's one parameter.
fn documented_names(doc: &Value, path: &str) -> BTreeSet<String> {
    let parameters = doc["paths"][path]["get"]["parameters"]
        .as_array()
        .unwrap_or_else(|| panic!("{path} has no parameters"));
    let names = parameters
        .iter()
        .find(|p| p["in"] == "path")
        .and_then(|p| p["schema"]["enum"].as_array())
        .unwrap_or_else(|| panic!("{path}: no enum of names"));
    names
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn every_embedded_file_is_documented_and_every_documented_file_is_served() {
    let app = spawn_app().await;
    let (status, doc) = app
        .request(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
    let mut documented: BTreeSet<String> = ["/".to_string()].into();
    for name in documented_names(&doc, "/web/{asset}") {
        documented.insert(format!("/web/{name}"));
    }
    for name in documented_names(&doc, "/web/js/{module}") {
        documented.insert(format!("/web/js/{name}"));
    }
    let embedded: BTreeSet<String> = chatapp::web::ASSETS
        .iter()
        .map(|a| match a.path {
            "index.html" => "/".to_string(),
            path => format!("/web/{path}"),
        })
        .collect();
    assert_eq!(documented, embedded);
    let page = get(&app, "/", None).await.text().await.unwrap();
    for module in documented.iter().filter(|p| p.starts_with("/web/js/")) {
        assert!(
            page.contains(&format!(r#"src="{module}""#))
                || page.contains(&format!(r#"<link rel="modulepreload" href="{module}">"#)),
            "the page neither loads nor preloads {module}"
        );
    }
    for path in &documented {
        let res = get(&app, path, None).await;
        assert_eq!(res.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn the_route_table_gives_the_files_head_options_405_and_404() {
    let app = spawn_app().await;

    let head = app.http.head(app.url("/")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&head, "content-security-policy"), CSP);
    assert!(head.bytes().await.unwrap().is_empty());

    for path in ["/", "/web/styles.css", "/web/js/main.js"] {
        let options = app
            .http
            .request(Method::OPTIONS, app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(options.status(), 204, "{path}");
        assert_eq!(header(&options, "allow"), "GET, HEAD, OPTIONS", "{path}");

        let (status, body) = app.request(Method::POST, path, None, None).await;
        assert_error(status, &body, 405, "method_not_allowed");
    }
    let post = app.http.post(app.url("/")).send().await.unwrap();
    assert_eq!(header(&post, "allow"), "GET, HEAD, OPTIONS");

    // The page has one URL; a module is not an asset, nor the reverse.
    for path in [
        "/web/nope.js",
        "/web/index.html",
        "/web/main.js",
        "/web/js/styles.css",
        "/web/js",
        "/web/",
        "/index.html",
    ] {
        let (status, body) = app.request(Method::GET, path, None, None).await;
        assert_error(status, &body, 404, "not_found");
    }
    let (status, body) = app.request(Method::GET, "/health", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    let (status, body) = app.request(Method::GET, "/api/v1/nope", None, None).await;
    assert_error(status, &body, 404, "not_found");
}

#[tokio::test]
async fn the_files_are_counted_by_their_documented_path() {
    let app = spawn_app().await;
    for path in ["/", "/web/js/main.js", "/web/js/ui.js", "/web/styles.css"] {
        assert_eq!(get(&app, path, None).await.status(), 200, "{path}");
    }
    assert_eq!(get(&app, "/web/js/nope.js", None).await.status(), 404);

    let metrics = scrape(&app).await;
    let series = |route: &str, status: u16| {
        format!(
            "chatapp_http_requests_total{{method=\"GET\",route=\"{route}\",status=\"{status}\"}}"
        )
    };
    assert_eq!(value(&metrics, &series("/", 200)), 1.0, "{metrics:?}");
    assert_eq!(value(&metrics, &series("/web/js/{module}", 200)), 2.0);
    assert_eq!(value(&metrics, &series("/web/js/{module}", 404)), 1.0);
    assert_eq!(value(&metrics, &series("/web/{asset}", 200)), 1.0);
    assert!(
        !metrics.keys().any(|k| k.contains("main.js")),
        "a file's name is never a label"
    );
}
