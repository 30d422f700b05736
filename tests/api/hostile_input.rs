//! Text PostgreSQL refuses (a NUL character) is refused by validation, with
//! `invalid_text`, wherever text is accepted — so it never reaches a group
//! commit, where it would fail every send batched with it.

use crate::helpers::realtime::connected;
use crate::helpers::*;
use futures_util::SinkExt;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_nul_character_is_invalid_text_wherever_text_is_accepted() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    let sent = app.send_message(&alice, chat, "hello").await;
    let message = sent["id"].as_i64().unwrap();
    let nul = "a\u{0}b";
    let me = format!("/api/v1/users/{}", alice.id);
    let cases: Vec<(Method, String, Option<&str>, Value)> = vec![
        (
            Method::POST,
            "/api/v1/auth/register".into(),
            None,
            json!({"username": nul, "password": PASSWORD}),
        ),
        (
            Method::POST,
            "/api/v1/auth/register".into(),
            None,
            json!({"username": unique_name("n"), "password": format!("{PASSWORD}{nul}")}),
        ),
        (
            Method::POST,
            "/api/v1/auth/register".into(),
            None,
            json!({"username": unique_name("n"), "password": PASSWORD, "display_name": nul}),
        ),
        (
            Method::POST,
            "/api/v1/auth/login".into(),
            None,
            json!({"username": nul, "password": PASSWORD}),
        ),
        (
            Method::POST,
            "/api/v1/auth/login".into(),
            None,
            json!({"username": alice.username, "password": nul}),
        ),
        (
            Method::PUT,
            me.clone(),
            Some(&alice.token),
            json!({"display_name": nul}),
        ),
        (
            Method::PUT,
            me.clone(),
            Some(&alice.token),
            json!({"password": format!("{PASSWORD}{nul}"), "current_password": PASSWORD}),
        ),
        (
            Method::POST,
            "/api/v1/chats".into(),
            Some(&alice.token),
            json!({"name": nul, "is_group": true, "member_ids": []}),
        ),
        (
            Method::PUT,
            format!("/api/v1/chats/{chat}"),
            Some(&alice.token),
            json!({"name": nul}),
        ),
        (
            Method::POST,
            "/api/v1/messages".into(),
            Some(&alice.token),
            json!({"chat_id": chat, "content": nul}),
        ),
        (
            Method::POST,
            "/api/v1/messages".into(),
            Some(&alice.token),
            json!({"chat_id": chat, "content": "ok", "client_id": nul}),
        ),
        (
            Method::PUT,
            format!("/api/v1/messages/{message}"),
            Some(&alice.token),
            json!({"content": nul}),
        ),
    ];
    for (method, path, token, body) in cases {
        // Act
        let (status, resp) = app
            .request(method.clone(), &path, token, Some(body.clone()))
            .await;

        // Assert
        assert_eq!(
            resp["code"], "invalid_text",
            "{method} {path} {body}: {status} {resp}"
        );
        assert_error(status, &resp, 400, "invalid_text");
    }
    for path in ["/api/v1/users?q=a%00b", "/api/v1/users?q=%00"] {
        let (status, resp) = app.get(path, &alice.token).await;
        assert_error(status, &resp, 400, "invalid_text");
    }
    let form = app
        .http
        .post(app.url("/api/v1/auth/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("username=a%00b&password=x");
    let (status, resp) = app.send(form).await;
    assert_error(status, &resp, 400, "invalid_text");
}

#[tokio::test]
async fn an_escaped_backslash_before_u0000_is_ordinary_text() {
    // Arrange: the JSON text `\\u0000` is a backslash and "u0000", not a NUL.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;

    // Act
    let (status, body) = app
        .post(
            "/api/v1/messages",
            &alice.token,
            json!({"chat_id": chat, "content": "path\\u0000"}),
        )
        .await;

    // Assert
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["content"], "path\\u0000");
}

#[tokio::test]
async fn a_nul_in_pipelined_frames_is_refused_and_the_others_commit_together() {
    // Arrange: every send held at its commit, so the frames queue behind it.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    let (mut ws, _) = connected(&app, &alice, None).await;
    let bad = 4;
    let blocker = pg::connect(&app.database_url).await;
    blocker
        .batch_execute("begin; lock table messages in share mode")
        .await
        .unwrap();

    // Act: ten frames in one write, the fifth with a NUL.
    for i in 0..10 {
        let content = if i == bad {
            "nul \u{0} inside".to_string()
        } else {
            format!("m{i}")
        };
        let frame =
            json!({"type": "message", "payload": {"chat_id": chat, "content": content}, "ref": i});
        ws.stream
            .feed(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }
    ws.stream.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    blocker.batch_execute("commit").await.unwrap();
    let mut replies = Vec::new();
    while replies.len() < 10 {
        let frame = ws.next_json().await;
        if frame["type"] == "ack" || frame["type"] == "error" {
            replies.push(frame);
        }
    }

    // Assert: the NUL frame alone is refused, the nine others are stored in one commit.
    assert_eq!(replies[bad]["type"], "error", "{replies:?}");
    assert_eq!(replies[bad]["payload"]["code"], "invalid_text");
    assert_eq!(
        replies.iter().filter(|r| r["type"] == "ack").count(),
        9,
        "{replies:?}"
    );
    let db = pg::connect(&app.database_url).await;
    let commits: i64 = db
        .query_one(
            "select count(distinct xmin::text) from messages where chat_id = $1",
            &[&chat],
        )
        .await
        .unwrap()
        .get(0);
    // The first frame's send reached the lock alone; the rest queued behind it.
    assert!(
        commits <= 2,
        "{commits} commits: the batch failed and its sends went one by one"
    );
}
