//! The published contract: the documents and the rendered reference.

use crate::helpers::*;
use serde_json::{Value, json};

#[tokio::test]
async fn the_reference_page_loads_its_scripts_and_styles_from_this_server() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let page = app.http.get(app.url("/api/docs")).send().await.unwrap();

    // Assert: an HTML page that may load nothing from another origin...
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = page.text().await.unwrap();
    // ...and every file it names is served, with its type.
    let mut named = 0;
    for (attribute, kind) in [("src=\"", "text/javascript"), ("href=\"", "")] {
        for part in html.split(attribute).skip(1) {
            let path = &part[..part.find('"').unwrap()];
            if path.starts_with("data:") {
                continue;
            }
            assert!(path.starts_with('/'), "{path} is not from this origin");
            let file = app.http.get(app.url(path)).send().await.unwrap();
            assert_eq!(file.status(), 200, "{path}");
            let served = file.headers()["content-type"].to_str().unwrap().to_string();
            let expected = match path.rsplit('.').next().unwrap() {
                "css" => "text/css",
                "json" => "application/json",
                _ => kind,
            };
            assert!(served.starts_with(expected), "{path} served as {served}");
            named += 1;
        }
    }
    assert!(named >= 4, "the page names {named} files");
}

#[tokio::test]
async fn an_unknown_reference_file_is_a_json_404() {
    let app = spawn_app().await;

    let response = app
        .http
        .get(app.url("/api/docs/nothing.js"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert!(body["code"].is_string(), "{body}");
}

#[tokio::test]
async fn an_integer_written_with_a_zero_fraction_is_that_integer() {
    // Arrange: JSON Schema, and so the contract, counts 5.0 as an integer.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let chat = app.create_group(&alice, "floats", &[&bob]).await;
    let sent = app.send_message(&alice, chat, "first").await;
    let message = sent["id"].as_i64().unwrap();

    // Act & Assert: each integer field of a body, written as a float.
    let accepted = [
        (
            "/api/v1/messages",
            json!({"chat_id": chat as f64, "content": "x"}),
            201,
        ),
        (
            &*format!("/api/v1/chats/{chat}/members"),
            json!({"member_ids": [carol.id as f64]}),
            200,
        ),
        (
            &*format!("/api/v1/chats/{chat}/read"),
            json!({"message_id": message as f64}),
            200,
        ),
    ];
    for (path, body, status) in accepted {
        let (got, answer) = app.post(path, &alice.token, body.clone()).await;
        assert_eq!(got.as_u16(), status, "{path} {body}: {answer}");
    }

    // A fraction, or a float past i64, is still not an id.
    for chat_id in [json!(chat as f64 + 0.5), json!(1e19), json!(-1e19)] {
        let (status, body) = app
            .post(
                "/api/v1/messages",
                &alice.token,
                json!({"chat_id": chat_id, "content": "x"}),
            )
            .await;
        assert_error(status, &body, 400, "invalid_body");
    }
}

#[test]
#[should_panic(expected = "asyncapi.yaml does not describe")]
fn a_frame_of_an_undocumented_type_fails_the_test_that_receives_it() {
    crate::helpers::ws::server_frame(r#"{"type": "surprise", "payload": {}}"#);
}

#[test]
#[should_panic(expected = "asyncapi.yaml does not describe")]
fn a_frame_with_an_undocumented_field_fails_the_test_that_receives_it() {
    // `{"type": "pong", "payload": {}}` is documented; one more field is not.
    crate::helpers::ws::server_frame(r#"{"type": "pong", "payload": {"extra": 1}}"#);
}

#[test]
fn a_documented_frame_passes() {
    let frame = crate::helpers::ws::server_frame(r#"{"type": "pong", "payload": {}}"#);
    assert_eq!(frame["type"], "pong");
}

#[tokio::test]
async fn options_on_a_documented_path_answers_its_methods() {
    let app = spawn_app().await;

    // No Origin: not a CORS preflight, a question about the resource.
    let response = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/chats/1"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 204);
    assert_eq!(
        response.headers()["allow"],
        "DELETE, GET, HEAD, PUT, OPTIONS"
    );
}

#[tokio::test]
async fn head_answers_as_get_would_without_the_body() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    app.create_group(&alice, "heads", &[]).await;
    let get = |method| {
        app.http
            .request(method, app.url("/api/v1/chats"))
            .bearer_auth(&alice.token)
            .send()
    };

    // Act
    let full = get(reqwest::Method::GET).await.unwrap();
    let head = get(reqwest::Method::HEAD).await.unwrap();

    // Assert
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-type"],
        full.headers()["content-type"]
    );
    let length = full.text().await.unwrap().len();
    assert!(length > 0);
    assert_eq!(
        head.headers()["content-length"],
        length.to_string().as_str()
    );
    assert_eq!(head.bytes().await.unwrap().len(), 0);
}

#[tokio::test]
async fn a_path_that_is_not_documented_is_404_whatever_the_method() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;

    // A documented path with a trailing slash is another path.
    for (method, path) in [
        (reqwest::Method::GET, "/api/v1/chats/"),
        (reqwest::Method::PUT, "/api/v1/users/"),
        (reqwest::Method::POST, "/api/v1/messages/"),
        (reqwest::Method::PATCH, "/nowhere"),
        (reqwest::Method::DELETE, "/api/v1/chats/1/nothing"),
    ] {
        let response = app
            .http
            .request(method.clone(), app.url(path))
            .bearer_auth(&alice.token)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            (status.as_u16(), body["code"].as_str()),
            (404, Some("not_found")),
            "{method} {path}"
        );
    }
}
