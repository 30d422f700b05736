mod helpers;

use helpers::*;

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

#[tokio::test]
async fn unknown_files_are_404_and_the_api_is_unchanged() {
    let app = spawn_app().await;
    let (status, body) = app
        .request(reqwest::Method::GET, "/web/nope.js", None, None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "not_found");
    let (status, body) = app.request(reqwest::Method::POST, "/", None, None).await;
    assert_eq!(status, 405, "{body}");
    let (status, body) = app
        .request(reqwest::Method::GET, "/health", None, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    let (status, body) = app
        .request(reqwest::Method::GET, "/api/v1/nope", None, None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "not_found");
}
