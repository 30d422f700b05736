//! Group commit: sends that queue while a commit runs are committed together
//! in one statement, yet each keeps its own outcome, its own event and its
//! place in the order every subscriber sees.

use crate::helpers::*;
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

/// Runs `sends` while another transaction holds the `event_seq` row lock
/// every send takes, so the first send to reach PostgreSQL waits and the
/// others queue behind it; the lock is released once one send waits on it
/// and the rest have had time to queue.
pub(crate) async fn behind_a_held_commit<T>(app: &TestApp, sends: impl Future<Output = T>) -> T {
    let blocker = pg::connect(&app.database_url).await;
    blocker
        .batch_execute("begin; select last_id from event_seq for update")
        .await
        .unwrap();
    let release = async {
        pg::until_a_statement_waits_for_a_lock(&app.database_url, 200).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        blocker.batch_execute("commit").await.unwrap();
    };
    let (out, ()) = tokio::join!(sends, release);
    out
}

async fn send(app: &TestApp, user: &TestUser, body: Value) -> (StatusCode, Value) {
    app.post("/api/v1/messages", &user.token, body).await
}

/// How many transactions committed the chat's messages.
async fn commits_of(app: &TestApp, chat: i64) -> i64 {
    let db = pg::connect(&app.database_url).await;
    db.query_one(
        "select count(distinct xmin::text) from messages where chat_id = $1",
        &[&chat],
    )
    .await
    .unwrap()
    .get(0)
}

/// The next `n` message frames: (event_id, message_id, content).
async fn message_frames(ws: &mut WsClient, n: usize) -> Vec<(i64, i64, String)> {
    let mut frames = Vec::new();
    for _ in 0..n {
        let f = ws.next_of_type("message").await;
        let p = &f["payload"];
        frames.push((
            p["event_id"].as_i64().unwrap(),
            p["message_id"].as_i64().unwrap(),
            p["content"].as_str().unwrap().to_string(),
        ));
    }
    frames
}

#[tokio::test]
async fn sends_queued_behind_a_commit_go_in_one_commit_each_with_its_own_outcome() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let mut ws = app.connect_ws(&alice, None).await;
    ws.next_of_type("ready").await;
    let plain: Vec<(TestUser, String)> = (0..10)
        .map(|i| {
            let who = if i % 2 == 0 { &alice } else { &bob };
            (who.clone(), format!("message {i}"))
        })
        .collect();

    // Act: plain sends, one client_id sent twice, and a non-member's send, all at once.
    let (plain_results, retried, outsider) = behind_a_held_commit(&app, async {
        tokio::join!(
            join_all(plain.iter().map(|(who, content)| {
                send(&app, who, json!({ "chat_id": chat, "content": content }))
            })),
            join_all((0..2).map(|_| {
                send(
                    &app,
                    &bob,
                    json!({ "chat_id": chat, "content": "once", "client_id": "retry-1" }),
                )
            })),
            send(
                &app,
                &carol,
                json!({ "chat_id": chat, "content": "let me in" })
            ),
        )
    })
    .await;

    // Assert: every send has its own answer...
    for ((who, content), (status, body)) in plain.iter().zip(&plain_results) {
        assert_eq!(*status, StatusCode::CREATED, "{body}");
        assert_eq!(body["content"], *content, "{body}");
        assert_eq!(body["sender_id"], who.id, "{body}");
    }
    let mut statuses: Vec<u16> = retried.iter().map(|(s, _)| s.as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 201], "{retried:?}");
    assert_eq!(retried[0].1["id"], retried[1].1["id"], "{retried:?}");
    assert_error(outsider.0, &outsider.1, 404, "not_found");
    // ...though they were committed together (the one that waited on the lock, and the rest).
    let stored = plain_results.len() + 1;
    let commits = commits_of(&app, chat).await;
    assert!(
        (1..=3).contains(&commits),
        "{stored} messages in {commits} commits"
    );
    // Subscribers get each stored message once, in the order of its event and message ids.
    let frames = message_frames(&mut ws, stored).await;
    let event_ids: Vec<i64> = frames.iter().map(|f| f.0).collect();
    assert!(
        event_ids.windows(2).all(|w| w[1] == w[0] + 1),
        "{event_ids:?}"
    );
    let message_ids: Vec<i64> = frames.iter().map(|f| f.1).collect();
    assert!(
        message_ids.windows(2).all(|w| w[1] > w[0]),
        "{message_ids:?}"
    );
    let sent: HashSet<i64> = plain_results
        .iter()
        .chain(&retried)
        .map(|(_, b)| b["id"].as_i64().unwrap())
        .collect();
    assert_eq!(sent, message_ids.iter().copied().collect(), "{frames:?}");
    for (_, body) in &plain_results {
        let frame = frames.iter().find(|f| body["id"] == f.1).unwrap();
        assert_eq!(body["content"], frame.2, "{frames:?}");
    }
    ws.expect_no("message", Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_send_that_fails_in_a_batch_fails_alone() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    let contents: Vec<String> = (0..6).map(|i| format!("fine {i}")).collect();

    // Act: text PostgreSQL cannot store fails the statement it is in.
    let (fine, bad) = behind_a_held_commit(&app, async {
        tokio::join!(
            join_all(contents.iter().map(|c| send(
                &app,
                &alice,
                json!({ "chat_id": chat, "content": c })
            ))),
            send(
                &app,
                &alice,
                json!({ "chat_id": chat, "content": "nul \u{0} inside" })
            ),
        )
    })
    .await;

    // Assert
    assert_error(bad.0, &bad.1, 400, "invalid_text");
    for (content, (status, body)) in contents.iter().zip(&fine) {
        assert_eq!(*status, StatusCode::CREATED, "{body}");
        assert_eq!(body["content"], *content, "{body}");
    }
    let (status, history) = app
        .get(&format!("/api/v1/messages/chat/{chat}"), &alice.token)
        .await;
    assert_eq!(status, 200);
    let mut stored: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    stored.sort();
    assert_eq!(stored, contents, "{history}");
}
