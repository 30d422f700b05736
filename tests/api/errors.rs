//! The one error envelope `{"error", "code", "fields"?}` for every status, and
//! hostile input that must never cause a 500 or a panic.

use crate::helpers::*;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JSON: &str = "application/json";
const LIMIT: usize = 64 * 1024;

/// POSTs raw bytes with a content type (and optionally a token).
async fn post_raw(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let mut req = app.http.post(app.url(path)).body(body);
    if let Some(ct) = content_type {
        req = req.header(CONTENT_TYPE, ct);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    app.send(req).await
}

/// A JSON register body of exactly `n` bytes (padding goes into display_name).
fn register_body_of(n: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"username":"{}","password":"{PASSWORD}","display_name":""#,
        unique_name("big")
    );
    let tail = r#""}"#;
    let pad = n - head.len() - tail.len();
    format!("{head}{}{tail}", "x".repeat(pad)).into_bytes()
}

// ---- 400 ----

#[tokio::test]
async fn malformed_json_is_400_invalid_body() {
    let app = spawn_app().await;
    let user = app.register("badjson").await;
    let bodies: &[&[u8]] = &[
        b"{",
        b"not json",
        b"{\"username\": }",
        b"{\"username\":\"a\",}",
        b"",
        b"   ",
        b"null",
        b"[]",
        b"\"a string\"",
        // A lone UTF-16 surrogate cannot become a Rust string.
        b"{\"username\":\"\\ud800\",\"name\":\"\\ud800\"}",
    ];
    for body in bodies {
        let shown = String::from_utf8_lossy(body);
        let (status, resp) = post_raw(
            &app,
            "/api/v1/auth/register",
            None,
            Some(JSON),
            body.to_vec(),
        )
        .await;
        assert_eq!(status, 400, "register {shown:?}: {resp}");
        assert_error(status, &resp, 400, "invalid_body");
        let (status, resp) = post_raw(
            &app,
            "/api/v1/chats",
            Some(&user.token),
            Some(JSON),
            body.to_vec(),
        )
        .await;
        assert_eq!(status, 400, "create chat {shown:?}: {resp}");
        assert_error(status, &resp, 400, "invalid_body");
    }
}

#[tokio::test]
async fn wrong_json_types_are_400() {
    let app = spawn_app().await;
    let user = app.register("types").await;
    let cases = [
        (
            "/api/v1/auth/register",
            r#"{"username": 5, "password": "12345678"}"#,
        ),
        (
            "/api/v1/auth/register",
            r#"{"username": "typed", "password": true}"#,
        ),
        (
            "/api/v1/auth/register",
            r#"{"username": ["a"], "password": "12345678"}"#,
        ),
        (
            "/api/v1/auth/register",
            r#"{"username": "typed", "password": "12345678", "display_name": 7}"#,
        ),
        (
            "/api/v1/auth/login",
            r#"{"username": {}, "password": "12345678"}"#,
        ),
        (
            "/api/v1/chats",
            r#"{"name": "g", "is_group": "yes", "member_ids": []}"#,
        ),
        (
            "/api/v1/chats",
            r#"{"name": "g", "is_group": true, "member_ids": "1,2"}"#,
        ),
        (
            "/api/v1/chats",
            r#"{"name": "g", "is_group": true, "member_ids": [99999999999999999999]}"#,
        ),
        (
            "/api/v1/chats",
            r#"{"name": "g", "is_group": true, "member_ids": [1.5]}"#,
        ),
        (
            "/api/v1/chats",
            r#"{"name": 1e400, "is_group": true, "member_ids": []}"#,
        ),
        ("/api/v1/messages", r#"{"chat_id": "one", "content": "hi"}"#),
        (
            "/api/v1/messages",
            r#"{"chat_id": 99999999999999999999, "content": "hi"}"#,
        ),
        (
            "/api/v1/messages",
            r#"{"chat_id": -99999999999999999999, "content": "hi"}"#,
        ),
        ("/api/v1/messages", r#"{"chat_id": 1, "content": 42}"#),
    ];
    for (path, body) in cases {
        let token = (!path.contains("/auth/")).then_some(user.token.as_str());
        let (status, resp) = post_raw(&app, path, token, Some(JSON), body).await;
        assert_eq!(status, 400, "POST {path} {body}: {resp}");
        assert_error(status, &resp, 400, "invalid_body");
    }
}

#[tokio::test]
async fn invalid_utf8_bodies_are_400() {
    let app = spawn_app().await;
    let invalid: &[u8] = b"{\"username\":\"\xff\xfe\",\"password\":\"12345678\"}";
    for content_type in [JSON, "application/x-www-form-urlencoded"] {
        let (status, resp) = post_raw(
            &app,
            "/api/v1/auth/register",
            None,
            Some(content_type),
            invalid.to_vec(),
        )
        .await;
        assert_error(status, &resp, 400, "invalid_body");
    }
    // Percent-encoded bytes that are not UTF-8, in a form body and in a query string.
    let (status, resp) = post_raw(
        &app,
        "/api/v1/auth/register",
        None,
        Some("application/x-www-form-urlencoded"),
        "username=%ff%fe&password=12345678",
    )
    .await;
    assert_error(status, &resp, 400, "invalid_body");
    let user = app.register("utf8").await;
    let (status, resp) = app.get("/api/v1/users?q=%ff", &user.token).await;
    assert_eq!(status, 400, "{resp}");
    assert!(
        resp["code"].is_string() && resp.get("fields").is_none(),
        "{resp}"
    );
}

#[tokio::test]
async fn validation_errors_list_every_bad_field() {
    let app = spawn_app().await;
    let (status, body) = app
        .request(
            Method::POST,
            "/api/v1/auth/register",
            None,
            Some(json!({ "username": "a", "password": "short", "display_name": "d".repeat(101) })),
        )
        .await;
    assert_error(status, &body, 400, "validation_failed");
    let mut fields: Vec<&str> = body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert!(f["message"].as_str().is_some_and(|m| !m.is_empty()), "{f}");
            f["field"].as_str().unwrap()
        })
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["display_name", "password", "username"]);
}

// ---- 401, 403, 404, 405, 409 ----

#[tokio::test]
async fn missing_token_is_401_on_every_protected_endpoint() {
    let app = spawn_app().await;
    let cases = [
        (Method::GET, "/api/v1/auth/me"),
        (Method::GET, "/api/v1/users"),
        (Method::GET, "/api/v1/users/1"),
        (Method::PUT, "/api/v1/users/1"),
        (Method::DELETE, "/api/v1/users/1"),
        (Method::POST, "/api/v1/users/last-seen"),
        (Method::GET, "/api/v1/chats"),
        (Method::POST, "/api/v1/chats"),
        (Method::GET, "/api/v1/chats/1"),
        (Method::PUT, "/api/v1/chats/1"),
        (Method::DELETE, "/api/v1/chats/1"),
        (Method::POST, "/api/v1/chats/1/members"),
        (Method::DELETE, "/api/v1/chats/1/members/2"),
        (Method::PUT, "/api/v1/chats/1/members/2"),
        (Method::POST, "/api/v1/messages"),
        (Method::GET, "/api/v1/messages/1"),
        (Method::PUT, "/api/v1/messages/1"),
        (Method::DELETE, "/api/v1/messages/1"),
        (Method::GET, "/api/v1/messages/chat/1"),
    ];
    for (method, path) in cases {
        let (status, body) = app
            .request(method.clone(), path, None, Some(json!({})))
            .await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert_error(status, &body, 401, "unauthorized");
    }
}

#[tokio::test]
async fn forbidden_and_conflict_use_the_envelope() {
    let app = spawn_app().await;
    let a = app.register("alpha").await;
    let b = app.register("beta").await;
    let (status, body) = app
        .put(&format!("/api/v1/users/{}", b.id), &a.token, json!({}))
        .await;
    assert_error(status, &body, 403, "not_your_account");
    let (status, body) = app
        .request(
            Method::POST,
            "/api/v1/auth/register",
            None,
            Some(json!({ "username": a.username, "password": PASSWORD })),
        )
        .await;
    assert_error(status, &body, 409, "username_taken");
}

#[tokio::test]
async fn unknown_routes_are_404_in_the_envelope() {
    let app = spawn_app().await;
    let user = app.register("nf").await;
    // `/` is the web client's page (tests/api/web.rs).
    for path in [
        "/index.html",
        "/web",
        "/nope",
        "/api",
        "/api/v1",
        "/api/v1/nope",
        "/api/v2/users",
        "/api/v1/users/1/extra",
        "/health/extra",
    ] {
        let (status, body) = app.get(path, &user.token).await;
        assert_eq!(status, 404, "GET {path}: {body}");
        assert_error(status, &body, 404, "not_found");
    }
}

#[tokio::test]
async fn wrong_methods_are_405_in_the_envelope() {
    let app = spawn_app().await;
    let user = app.register("meth").await;
    let cases = [
        (Method::PATCH, "/api/v1/chats"),
        (Method::DELETE, "/api/v1/chats"),
        (Method::PATCH, "/api/v1/users/1"),
        (Method::POST, "/health"),
        (Method::DELETE, "/health"),
        (Method::GET, "/api/v1/auth/login"),
        (Method::PUT, "/api/v1/auth/register"),
        (Method::POST, "/api/v1/auth/me"),
        // A path that is a route, not an id, with the wrong method.
        (Method::GET, "/api/v1/users/last-seen"),
        (Method::POST, "/api/v1/messages/chat/1"),
    ];
    for (method, path) in cases {
        let (status, body) = app
            .request(method.clone(), path, Some(&user.token), None)
            .await;
        assert_eq!(status, 405, "{method} {path}: {body}");
        assert_error(status, &body, 405, "method_not_allowed");
    }
}

// ---- 413 ----

#[tokio::test]
async fn body_at_the_limit_is_read_and_one_byte_over_is_413() {
    let app = spawn_app().await;

    let at_limit = register_body_of(LIMIT);
    assert_eq!(at_limit.len(), LIMIT);
    let (status, body) = post_raw(&app, "/api/v1/auth/register", None, Some(JSON), at_limit).await;
    // Parsed (display_name is too long), not refused for size.
    assert_error(status, &body, 400, "validation_failed");

    let over = register_body_of(LIMIT + 1);
    let (status, body) = post_raw(&app, "/api/v1/auth/register", None, Some(JSON), over).await;
    assert_error(status, &body, 413, "payload_too_large");
}

#[tokio::test]
async fn body_limit_follows_the_configuration() {
    let app = spawn_app_with(|cfg| cfg.limits.body_bytes = 2048).await;
    let (status, body) = post_raw(
        &app,
        "/api/v1/auth/register",
        None,
        Some(JSON),
        register_body_of(2049),
    )
    .await;
    assert_error(status, &body, 413, "payload_too_large");
}

#[tokio::test]
async fn ten_megabyte_body_with_content_length_is_413() {
    let app = spawn_app().await;
    let user = app.register("huge").await;
    let huge = vec![b'a'; 10 * 1024 * 1024];
    for (path, token) in [
        ("/api/v1/auth/register", None),
        ("/api/v1/auth/login", None),
        ("/api/v1/chats", Some(user.token.as_str())),
        ("/api/v1/messages", Some(user.token.as_str())),
    ] {
        let (status, body) = post_raw(&app, path, token, Some(JSON), huge.clone()).await;
        assert_eq!(status, 413, "POST {path}: {body}");
        assert_error(status, &body, 413, "payload_too_large");
    }
    let (status, _) = app.get("/api/v1/auth/me", &user.token).await;
    assert_eq!(status, 200, "the server still works");
}

/// Sends a request with a chunked body (no Content-Length) of `total` bytes
/// over a raw socket, writing concurrently with reading, and returns the
/// response's status code and body.
async fn chunked_post(app: &TestApp, path: &str, total: usize) -> (u16, Value) {
    let stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {JSON}\r\nTransfer-Encoding: chunked\r\n\r\n",
        app.addr
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'a'; 16 * 1024];
        let mut sent = 0;
        while sent < total {
            wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            wr.write_all(&chunk).await?;
            wr.write_all(b"\r\n").await?;
            sent += chunk.len();
        }
        wr.write_all(b"0\r\n\r\n").await?;
        wr.flush().await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    response.extend_from_slice(&buf[..n]);
                    if complete_response(&response) {
                        break;
                    }
                }
                Err(e) => {
                    assert!(
                        !response.is_empty(),
                        "connection failed before any response: {e}"
                    );
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("response within 30s");
    writer.abort();
    parse_response(&response)
}

fn complete_response(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    len.is_some_and(|n| body.len() >= n)
}

fn parse_response(raw: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("incomplete response: {text}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    let value = serde_json::from_str(body).unwrap_or_else(|_| panic!("non-JSON body: {text}"));
    (status, value)
}

#[tokio::test]
async fn ten_megabyte_chunked_body_without_content_length_is_413() {
    let app = spawn_app().await;
    let user = app.register("chunk").await;

    let (status, body) = chunked_post(&app, "/api/v1/auth/register", 10 * 1024 * 1024).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "payload_too_large", "{body}");

    let (status, body) = chunked_post(&app, "/api/v1/auth/login", LIMIT + 16 * 1024).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "payload_too_large", "{body}");

    let (status, _) = app.get("/api/v1/auth/me", &user.token).await;
    assert_eq!(status, 200, "the server still works");
}

#[tokio::test]
async fn small_chunked_body_is_accepted() {
    // The chunked path must still read bodies under the limit.
    let app = spawn_app().await;
    let stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let body = format!(
        r#"{{"username":"{}","password":"{PASSWORD}"}}"#,
        unique_name("chunky")
    );
    let (a, b) = body.split_at(10);
    let req = format!(
        "POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: {JSON}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    wr.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut raw))
        .await
        .expect("response within 30s")
        .unwrap();
    let (status, body) = parse_response(&raw);
    assert_eq!(status, 201, "{body}");
}

// ---- 415 ----

#[tokio::test]
async fn unsupported_content_types_are_415() {
    let app = spawn_app().await;
    let user = app.register("ct").await;
    let login = json!({ "username": user.username, "password": PASSWORD }).to_string();
    let cases = [
        ("/api/v1/auth/login", None, "text/plain"),
        ("/api/v1/auth/register", None, "text/plain; charset=utf-8"),
        ("/api/v1/auth/login", None, "application/xml"),
        (
            "/api/v1/auth/login",
            None,
            "multipart/form-data; boundary=x",
        ),
        ("/api/v1/chats", Some(user.token.as_str()), "text/plain"),
        // Forms are only for register and login.
        (
            "/api/v1/chats",
            Some(user.token.as_str()),
            "application/x-www-form-urlencoded",
        ),
        ("/api/v1/messages", Some(user.token.as_str()), "text/plain"),
    ];
    for (path, token, content_type) in cases {
        let (status, body) = post_raw(&app, path, token, Some(content_type), login.clone()).await;
        assert_eq!(status, 415, "POST {path} as {content_type}: {body}");
        assert_error(status, &body, 415, "unsupported_media_type");
    }
    // The same body as JSON is fine, and a charset parameter is allowed.
    let (status, body) = post_raw(
        &app,
        "/api/v1/auth/login",
        None,
        Some("Application/JSON; charset=utf-8"),
        login,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

// ---- never a 500 ----

#[tokio::test]
async fn hostile_input_never_causes_a_500() {
    let app = spawn_app().await;
    let user = app.register("hostile").await;
    let chat = app.create_group(&user, "g", &[]).await;
    let t = Some(user.token.as_str());
    let big = "9".repeat(40);
    let cases: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/api/v1/users/{big}"), None),
        (Method::GET, "/api/v1/users/-1".into(), None),
        (Method::GET, format!("/api/v1/chats/{big}"), None),
        (
            Method::GET,
            "/api/v1/chats/-9223372036854775808".into(),
            None,
        ),
        (Method::GET, format!("/api/v1/messages/{big}"), None),
        (
            Method::GET,
            format!("/api/v1/messages/chat/{chat}?before_id={big}"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/messages/chat/{chat}?after_id=-1"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/messages/chat/{chat}?limit={big}"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/chats?limit={big}&offset={big}"),
            None,
        ),
        (Method::GET, "/api/v1/users?q=%00".into(), None),
        (Method::GET, "/api/v1/users?q=%".into(), None),
        (Method::GET, "/api/v1/users?limit=%ff".into(), None),
        (
            Method::GET,
            "/api/v1/users?offset=9223372036854775807".into(),
            None,
        ),
        (Method::GET, "/api/v1/users/%F0%9F%98%80".into(), None),
        (
            Method::POST,
            "/api/v1/messages".into(),
            Some(json!({ "chat_id": -1, "content": "x" })),
        ),
        (
            Method::POST,
            "/api/v1/messages".into(),
            Some(json!({ "chat_id": chat, "content": "\u{0}" })),
        ),
        (
            Method::POST,
            "/api/v1/messages".into(),
            Some(json!({ "chat_id": chat, "content": "x".repeat(50_000) })),
        ),
        (
            Method::POST,
            "/api/v1/chats".into(),
            Some(json!({ "name": "ü".repeat(101), "is_group": true, "member_ids": [] })),
        ),
        (
            Method::POST,
            "/api/v1/chats".into(),
            Some(json!({ "name": "g", "is_group": true, "member_ids": [-1, 0, i64::MAX] })),
        ),
        (
            Method::PUT,
            format!("/api/v1/users/{}", user.id),
            Some(json!({ "display_name": "\u{0}" })),
        ),
        (
            Method::PUT,
            format!("/api/v1/users/{}", user.id),
            Some(json!({ "password": "x".repeat(100), "current_password": "y".repeat(100) })),
        ),
        (
            Method::POST,
            "/api/v1/auth/register".into(),
            Some(json!({ "username": "nul\u{0}l", "password": PASSWORD })),
        ),
        (
            Method::POST,
            "/api/v1/auth/login".into(),
            Some(json!({ "username": "nul\u{0}l", "password": PASSWORD })),
        ),
        (
            Method::POST,
            "/api/v1/auth/login".into(),
            Some(json!({ "username": "x".repeat(10_000), "password": "p" })),
        ),
        (
            Method::POST,
            "/api/v1/auth/register".into(),
            Some(
                json!({ "username": "deep", "password": PASSWORD, "display_name": deep_json(64) }),
            ),
        ),
    ];
    for (method, path, body) in cases {
        let (status, resp) = app.request(method.clone(), &path, t, body).await;
        assert!(
            status.is_client_error() || status.is_success(),
            "{method} {path}: {status} {resp}"
        );
        if status.is_client_error() {
            assert_error(
                status,
                &resp,
                status.as_u16(),
                resp["code"].as_str().unwrap_or("<none>"),
            );
        }
    }
    // A deeply nested document (beyond serde_json's recursion limit) is a 400, not a crash.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let (status, resp) = post_raw(&app, "/api/v1/auth/login", None, Some(JSON), deep).await;
    assert_error(status, &resp, 400, "invalid_body");
    // Non-UTF-8 bytes in the Authorization header.
    let (status, resp) = app
        .send(app.http.get(app.url("/api/v1/auth/me")).header(
            AUTHORIZATION,
            reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        ))
        .await;
    assert!(status.is_client_error(), "{status} {resp}");
    let (status, _) = app.get("/api/v1/auth/me", &user.token).await;
    assert_eq!(status, 200, "the server is still healthy");
}

fn deep_json(depth: usize) -> Value {
    (0..depth).fold(json!("x"), |acc, _| json!([acc]))
}

#[tokio::test]
async fn error_responses_are_json() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::GET, "/nope"),
        (Method::PATCH, "/api/v1/chats"),
        (Method::GET, "/api/v1/auth/me"),
    ] {
        let resp = app
            .http
            .request(method, app.url(path))
            .send()
            .await
            .unwrap();
        let ct = resp.headers()[CONTENT_TYPE].to_str().unwrap().to_string();
        assert!(ct.starts_with("application/json"), "{path}: {ct}");
    }
}
