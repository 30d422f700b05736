//! Messages: send (validation, idempotency by client_id), fetch, history
//! paging, edit, delete — and the permission matrix of every chat and message
//! action for creator / admin / member / non-member.

use crate::helpers::*;
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

// ---------- local helpers ----------

fn id(v: &Value) -> i64 {
    v["id"].as_i64().unwrap_or_else(|| panic!("no id: {v}"))
}

async fn send(app: &TestApp, user: &TestUser, body: Value) -> (StatusCode, Value) {
    app.post("/api/v1/messages", &user.token, body).await
}

async fn history(app: &TestApp, user: &TestUser, chat: i64, query: &str) -> Vec<i64> {
    let (status, body) = app
        .get(&format!("/api/v1/messages/chat/{chat}{query}"), &user.token)
        .await;
    assert_eq!(status, 200, "{query}: {body}");
    body.as_array()
        .unwrap_or_else(|| panic!("not an array: {body}"))
        .iter()
        .map(id)
        .collect()
}

async fn stored_in_chat(app: &TestApp, chat: i64) -> i64 {
    app.db_count("select count(*) from messages where chat_id = $1", chat)
        .await
}

/// A chat of `owner` and `members`, with `n` messages from `owner`; returns the chat and
/// the message ids, oldest first.
async fn chat_with_messages(
    app: &TestApp,
    owner: &TestUser,
    members: &[&TestUser],
    n: usize,
) -> (i64, Vec<i64>) {
    let chat = app.create_group(owner, "g", members).await;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(id(&app.send_message(owner, chat, &format!("m{i}")).await));
    }
    (chat, ids)
}

fn newest_first(ids: &[i64]) -> Vec<i64> {
    ids.iter().rev().copied().collect()
}

// ---------- POST /messages ----------

#[tokio::test]
async fn sending_returns_201_with_the_full_message() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;

    let (status, msg) = send(&app, &alice, json!({ "chat_id": chat, "content": "hello" })).await;

    assert_eq!(status, 201, "{msg}");
    let mut keys: Vec<&str> = msg
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "chat_id",
            "client_id",
            "content",
            "created_at",
            "id",
            "is_edited",
            "mentions",
            "reactions",
            "reply_to",
            "sender",
            "sender_id",
            "updated_at"
        ]
    );
    assert!(msg["id"].as_i64().unwrap() > 0);
    assert_eq!(msg["chat_id"], chat);
    assert_eq!(msg["sender_id"], alice.id);
    assert_eq!(msg["content"], "hello");
    assert_eq!(msg["is_edited"], false);
    assert!(msg["client_id"].is_null());
    assert_eq!(ts(&msg["created_at"]), ts(&msg["updated_at"]));
    assert_eq!(
        msg["sender"],
        json!({ "id": alice.id, "username": alice.username, "display_name": null })
    );
    assert_eq!(stored_in_chat(&app, chat).await, 1);
}

#[tokio::test]
async fn content_is_trimmed() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;

    let (status, msg) = send(
        &app,
        &alice,
        json!({ "chat_id": chat, "content": " \n\t hi there \r\n " }),
    )
    .await;

    assert_eq!(status, 201, "{msg}");
    assert_eq!(msg["content"], "hi there");
    let (_, fetched) = app
        .get(&format!("/api/v1/messages/{}", id(&msg)), &alice.token)
        .await;
    assert_eq!(fetched["content"], "hi there");
}

#[tokio::test]
async fn content_must_be_1_to_4000_characters_counted_not_bytes() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    let cases: Vec<(&str, Value, u16)> = vec![
        ("empty", json!(""), 400),
        ("spaces only", json!("    "), 400),
        ("whitespace only", json!(" \n\t\r "), 400),
        ("missing", Value::Null, 400),
        ("one char", json!("x"), 201),
        ("4000 ascii", json!("a".repeat(4000)), 201),
        ("4000 two-byte", json!("é".repeat(4000)), 201),
        ("4000 four-byte", json!("🦀".repeat(4000)), 201),
        (
            "4000 plus padding",
            json!(format!("  {}  ", "b".repeat(4000))),
            201,
        ),
        ("4001 ascii", json!("a".repeat(4001)), 400),
        ("4001 multi-byte", json!("日".repeat(4001)), 400),
    ];

    let mut created = 0;
    for (label, content, expected) in cases {
        let mut body = json!({ "chat_id": chat });
        if !content.is_null() {
            body["content"] = content.clone();
        }
        let (status, resp) = send(&app, &alice, body).await;
        assert_eq!(status, expected, "{label}: {resp}");
        if expected == 400 {
            assert_error(status, &resp, 400, "validation_failed");
            assert_eq!(resp["fields"][0]["field"], "content", "{label}: {resp}");
        } else {
            created += 1;
            assert_eq!(resp["content"], content.as_str().unwrap().trim(), "{label}");
        }
    }
    assert_eq!(stored_in_chat(&app, chat).await, created);
}

#[tokio::test]
async fn the_message_length_limit_is_configurable() {
    let app = spawn_app_with(|cfg| cfg.limits.message_chars = 10).await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;

    let (status, ok) = send(
        &app,
        &alice,
        json!({ "chat_id": chat, "content": "ü".repeat(10) }),
    )
    .await;
    assert_eq!(status, 201, "{ok}");
    let (status, body) = send(
        &app,
        &alice,
        json!({ "chat_id": chat, "content": "a".repeat(11) }),
    )
    .await;
    assert_error(status, &body, 400, "validation_failed");
    assert!(
        body["fields"][0]["message"]
            .as_str()
            .unwrap()
            .contains("10"),
        "{body}"
    );
    // Edits obey the same limit.
    let (status, body) = app
        .put(
            &format!("/api/v1/messages/{}", id(&ok)),
            &alice.token,
            json!({ "content": "a".repeat(11) }),
        )
        .await;
    assert_error(status, &body, 400, "validation_failed");
}

#[tokio::test]
async fn send_rejects_bad_bodies() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    for body in [
        json!({ "content": "no chat" }),
        json!({ "chat_id": 0, "content": "x" }),
        json!({ "chat_id": -4, "content": "x" }),
        json!({ "chat_id": "abc", "content": "x" }),
        json!({ "chat_id": chat, "content": 5 }),
        json!({ "chat_id": chat, "content": "x", "client_id": 5 }),
        json!([chat, "x"]),
    ] {
        let (status, resp) = send(&app, &alice, body.clone()).await;
        assert_eq!(status, 400, "{body}: {resp}");
    }
    assert_eq!(stored_in_chat(&app, chat).await, 0);
}

#[tokio::test]
async fn client_id_must_be_1_to_64_characters() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    let cases: Vec<(&str, String, u16)> = vec![
        ("empty", String::new(), 400),
        ("one", "x".into(), 201),
        ("64 ascii", "c".repeat(64), 201),
        ("64 non-ascii", "ж".repeat(64), 201),
        ("65 ascii", "c".repeat(65), 400),
        ("65 non-ascii", "ж".repeat(65), 400),
    ];
    for (label, client_id, expected) in cases {
        let (status, resp) = send(
            &app,
            &alice,
            json!({ "chat_id": chat, "content": "x", "client_id": client_id }),
        )
        .await;
        assert_eq!(status, expected, "{label}: {resp}");
        if expected == 400 {
            assert_error(status, &resp, 400, "validation_failed");
            assert_eq!(resp["fields"][0]["field"], "client_id", "{label}");
        } else {
            assert_eq!(resp["client_id"], client_id.as_str(), "{label}");
        }
    }
}

#[tokio::test]
async fn sending_to_a_chat_you_are_not_in_is_404_not_403() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let eve = app.register("eve").await;
    let chat = app.create_group(&alice, "g", &[]).await;

    let (status, body) = send(
        &app,
        &eve,
        json!({ "chat_id": chat, "content": "let me in" }),
    )
    .await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = send(
        &app,
        &eve,
        json!({ "chat_id": chat, "content": "x", "client_id": "k" }),
    )
    .await;
    assert_error(status, &body, 404, "not_found");
    let (status, unknown) = send(&app, &eve, json!({ "chat_id": 987_654, "content": "x" })).await;
    assert_error(status, &unknown, 404, "not_found");
    assert_eq!(without_request_id(&body), without_request_id(&unknown));
    assert_eq!(stored_in_chat(&app, chat).await, 0);
}

#[tokio::test]
async fn retrying_with_the_same_client_id_returns_the_original_with_200() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;

    let (first_status, first) = send(
        &app,
        &alice,
        json!({ "chat_id": chat, "content": "once", "client_id": "abc-1" }),
    )
    .await;
    let (retry_status, retry) = send(
        &app,
        &alice,
        json!({ "chat_id": chat, "content": "once", "client_id": "abc-1" }),
    )
    .await;
    // Even with different content, the retry is the same send.
    let (changed_status, changed) = send(
        &app,
        &alice,
        json!({ "chat_id": chat, "content": "twice?", "client_id": "abc-1" }),
    )
    .await;

    assert_eq!(first_status, 201, "{first}");
    assert_eq!(first["client_id"], "abc-1");
    assert_eq!(retry_status, 200, "{retry}");
    assert_eq!(retry, first);
    assert_eq!(changed_status, 200, "{changed}");
    assert_eq!(changed, first);
    assert_eq!(stored_in_chat(&app, chat).await, 1);
    // A different client_id is a different message.
    let (status, other) = send(
        &app,
        &alice,
        json!({ "chat_id": chat, "content": "once", "client_id": "abc-2" }),
    )
    .await;
    assert_eq!(status, 201, "{other}");
    assert_ne!(other["id"], first["id"]);
    assert_eq!(stored_in_chat(&app, chat).await, 2);
}

#[tokio::test]
async fn ten_concurrent_sends_with_one_client_id_store_one_message() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    let body = json!({ "chat_id": chat, "content": "exactly once", "client_id": "burst-1" });

    let results = join_all((0..10).map(|_| send(&app, &alice, body.clone()))).await;

    let created = results.iter().filter(|(s, _)| *s == 201).count();
    let replayed = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!((created, replayed), (1, 9), "{results:?}");
    let first = &results[0].1["id"];
    assert!(first.is_i64(), "{results:?}");
    assert!(
        results.iter().all(|(_, b)| &b["id"] == first),
        "{results:?}"
    );
    assert_eq!(stored_in_chat(&app, chat).await, 1);
    assert_eq!(
        history(&app, &alice, chat, "").await,
        vec![first.as_i64().unwrap()]
    );
}

#[tokio::test]
async fn a_retry_after_a_restart_still_returns_the_original_with_200() {
    // Arrange: a send with a client_id, then the server restarts.
    let mut app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    let body = json!({ "chat_id": chat, "content": "survives", "client_id": "restart-1" });
    let (status, original) = send(&app, &alice, body.clone()).await;
    assert_eq!(status, 201, "{original}");
    app.stop().await;
    let restarted = spawn_node(&app.database_url, |_| {}).await;

    // Act
    let (status, retry) = send(&restarted, &alice, body).await;

    // Assert: the database, not process memory, remembers the client_id.
    assert_eq!(status, 200, "{retry}");
    assert_eq!(retry, original);
    assert_eq!(stored_in_chat(&restarted, chat).await, 1);
}

#[tokio::test]
async fn a_client_id_reused_in_another_chat_is_409() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let one = app.create_group(&alice, "one", &[]).await;
    let two = app.create_group(&alice, "two", &[]).await;
    let (status, _) = send(
        &app,
        &alice,
        json!({ "chat_id": one, "content": "x", "client_id": "k1" }),
    )
    .await;
    assert_eq!(status, 201);

    let (status, body) = send(
        &app,
        &alice,
        json!({ "chat_id": two, "content": "x", "client_id": "k1" }),
    )
    .await;

    assert_error(status, &body, 409, "client_id_reused");
    assert_eq!(stored_in_chat(&app, two).await, 0);
}

#[tokio::test]
async fn the_same_client_id_from_two_senders_is_two_messages() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let body = json!({ "chat_id": chat, "content": "hi", "client_id": "shared-key" });

    let (s1, from_alice) = send(&app, &alice, body.clone()).await;
    let (s2, from_bob) = send(&app, &bob, body).await;

    assert_eq!(
        (s1.as_u16(), s2.as_u16()),
        (201, 201),
        "{from_alice} {from_bob}"
    );
    assert_ne!(from_alice["id"], from_bob["id"]);
    assert_eq!(from_bob["sender_id"], bob.id);
    assert_eq!(stored_in_chat(&app, chat).await, 2);
}

#[tokio::test]
async fn a_message_moves_its_chat_to_the_top_of_the_list() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let old = app.create_group(&alice, "old", &[]).await;
    let new = app.create_group(&alice, "new", &[]).await;

    app.send_message(&alice, old, "ping").await;

    let (_, chats) = app.get("/api/v1/chats", &alice.token).await;
    assert_eq!(chats[0]["id"], old, "{chats}");
    assert_eq!(chats[1]["id"], new, "{chats}");
}

// ---------- GET /messages/:id ----------

#[tokio::test]
async fn a_member_fetches_a_message_others_get_404() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let eve = app.register("eve").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let sent = app.send_message(&alice, chat, "secret").await;
    let path = format!("/api/v1/messages/{}", id(&sent));

    let (status, fetched) = app.get(&path, &bob.token).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched, sent);

    let (status, hidden) = app.get(&path, &eve.token).await;
    assert_error(status, &hidden, 404, "not_found");
    let (status, unknown) = app.get("/api/v1/messages/987654", &bob.token).await;
    assert_error(status, &unknown, 404, "not_found");
    assert_eq!(without_request_id(&hidden), without_request_id(&unknown));
}

#[tokio::test]
async fn message_paths_reject_bad_ids_with_400() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    for bad in ["abc", "0", "-5", "1.5", "99999999999999999999", "1e3"] {
        for (method, path, body) in [
            (Method::GET, format!("/api/v1/messages/{bad}"), None),
            (
                Method::PUT,
                format!("/api/v1/messages/{bad}"),
                Some(json!({ "content": "x" })),
            ),
            (Method::DELETE, format!("/api/v1/messages/{bad}"), None),
            (Method::GET, format!("/api/v1/messages/chat/{bad}"), None),
        ] {
            let (status, resp) = app.request(method, &path, Some(&alice.token), body).await;
            assert_error(status, &resp, 400, "invalid_id");
        }
    }
}

// ---------- GET /messages/chat/:id ----------

#[tokio::test]
async fn history_is_newest_first_and_honours_limit() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (chat, ids) = chat_with_messages(&app, &alice, &[&bob], 6).await;
    let (other, _) = chat_with_messages(&app, &alice, &[], 2).await;

    assert_eq!(history(&app, &bob, chat, "").await, newest_first(&ids));
    assert_eq!(
        history(&app, &bob, chat, "?limit=2").await,
        newest_first(&ids[4..])
    );
    assert_eq!(history(&app, &bob, chat, "?limit=100").await.len(), 6);
    assert_eq!(history(&app, &alice, other, "").await.len(), 2);
    let (_, page) = app
        .get(&format!("/api/v1/messages/chat/{chat}?limit=1"), &bob.token)
        .await;
    assert_eq!(page[0]["content"], "m5");
    assert_eq!(page[0]["sender"]["id"], alice.id);
}

#[tokio::test]
async fn history_defaults_to_50_messages() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let (chat, ids) = chat_with_messages(&app, &alice, &[], 55).await;

    let page = history(&app, &alice, chat, "").await;

    assert_eq!(page, newest_first(&ids[5..]));
}

/// `n` messages written straight to the database; their ids, oldest first.
async fn insert_messages(db: &tokio_postgres::Client, chat: i64, sender: i64, n: i64) -> Vec<i64> {
    db.query(
        "insert into messages (chat_id, sender_id, content)
         select $1, $2, 'm' || g from generate_series(1, $3::bigint) g returning id",
        &[&chat, &sender, &n],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn history_pages_read_only_the_rows_they_return_not_the_whole_chat() {
    // Arrange: one chat with a long history, written straight to the database.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "long", &[]).await;
    let db = pg::connect(&app.database_url).await;
    let ids = insert_messages(&db, chat, alice.id, 5000).await;
    db.batch_execute("analyze messages").await.unwrap();
    let middle = ids[2500];
    let before = pg::rows_read(&db, "messages").await;

    // Act: the newest page and a page in the middle of the history.
    assert_eq!(history(&app, &alice, chat, "?limit=10").await.len(), 10);
    let page = history(&app, &alice, chat, &format!("?limit=10&before_id={middle}")).await;
    assert_eq!(page.first(), Some(&(middle - 1)));

    // Assert: the pages came from the (chat_id, id) index in order rather
    // than from reading and sorting all 5000 messages.
    let read = pg::rows_read_since(&db, "messages", before, 20).await;
    assert!(
        (20..=200).contains(&read),
        "two 10-message pages read {read} message rows"
    );
}

#[tokio::test]
async fn a_page_deep_in_a_small_chat_reads_one_page_even_when_a_big_chat_came_after_it() {
    // Arrange: a small chat, then a big one, so the small chat's ids all lie
    // below the big chat's (as for any chat quiet since). PostgreSQL then
    // expects fewer of its rows below a cursor than a page holds.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let small = app.create_group(&alice, "small", &[]).await;
    let big = app.create_group(&alice, "big", &[]).await;
    let db = pg::connect(&app.database_url).await;
    let ids = insert_messages(&db, small, alice.id, 1000).await;
    insert_messages(&db, big, alice.id, 50_000).await;
    db.batch_execute("analyze messages").await.unwrap();
    let middle = ids[500];
    let before = pg::rows_read(&db, "messages").await;

    // Act
    let page = history(
        &app,
        &alice,
        small,
        &format!("?limit=50&before_id={middle}"),
    )
    .await;

    // Assert: one page read, not the 500 older messages joined and sorted.
    assert_eq!(page.len(), 50);
    assert_eq!(page.first(), Some(&(middle - 1)));
    let read = pg::rows_read_since(&db, "messages", before, 50).await;
    assert!(
        (50..=150).contains(&read),
        "a 50-message page read {read} message rows"
    );
}

#[tokio::test]
async fn before_id_returns_the_limit_messages_just_before_it() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let (chat, ids) = chat_with_messages(&app, &alice, &[], 10).await;

    let q = |before: i64, limit: i64| format!("?before_id={before}&limit={limit}");
    assert_eq!(
        history(&app, &alice, chat, &q(ids[6], 3)).await,
        vec![ids[5], ids[4], ids[3]]
    );
    assert_eq!(
        history(&app, &alice, chat, &q(ids[2], 5)).await,
        vec![ids[1], ids[0]]
    );
    assert!(history(&app, &alice, chat, &q(ids[0], 5)).await.is_empty());
    // Paging backwards from the newest page reaches everything exactly once.
    let mut seen: Vec<i64> = Vec::new();
    let mut page = history(&app, &alice, chat, "?limit=4").await;
    while !page.is_empty() {
        seen.extend(page.iter().copied());
        page = history(&app, &alice, chat, &q(*page.last().unwrap(), 4)).await;
    }
    assert_eq!(seen, newest_first(&ids));
}

#[tokio::test]
async fn after_id_returns_the_limit_messages_just_after_it_newest_first() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let (chat, ids) = chat_with_messages(&app, &alice, &[], 10).await;

    let q = |after: i64, limit: i64| format!("?after_id={after}&limit={limit}");
    assert_eq!(
        history(&app, &alice, chat, &q(ids[2], 3)).await,
        vec![ids[5], ids[4], ids[3]]
    );
    assert_eq!(
        history(&app, &alice, chat, &q(ids[7], 5)).await,
        vec![ids[9], ids[8]]
    );
    assert!(history(&app, &alice, chat, &q(ids[9], 5)).await.is_empty());
}

#[tokio::test]
async fn offset_is_still_accepted() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let (chat, ids) = chat_with_messages(&app, &alice, &[], 8).await;

    assert_eq!(
        history(&app, &alice, chat, "?limit=3&offset=2").await,
        vec![ids[5], ids[4], ids[3]]
    );
    assert_eq!(
        history(
            &app,
            &alice,
            chat,
            &format!("?before_id={}&limit=2&offset=1", ids[6])
        )
        .await,
        vec![ids[4], ids[3]]
    );
    assert!(history(&app, &alice, chat, "?offset=8").await.is_empty());
}

#[tokio::test]
async fn history_rejects_bad_query_values() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let (chat, ids) = chat_with_messages(&app, &alice, &[], 3).await;
    let both = format!("before_id={}&after_id={}", ids[2], ids[0]);
    for (query, field) in [
        (both.as_str(), "after_id"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("offset=-1", "offset"),
        ("before_id=0", "before_id"),
        ("before_id=-3", "before_id"),
        ("before_id=abc", "before_id"),
        ("after_id=-1", "after_id"),
        ("after_id=99999999999999999999", "after_id"),
    ] {
        let (status, body) = app
            .get(
                &format!("/api/v1/messages/chat/{chat}?{query}"),
                &alice.token,
            )
            .await;
        assert_error(status, &body, 400, "validation_failed");
        assert_eq!(body["fields"][0]["field"], field, "{query}: {body}");
    }
}

#[tokio::test]
async fn history_is_404_for_non_members_and_unknown_chats() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let eve = app.register("eve").await;
    let (chat, ids) = chat_with_messages(&app, &alice, &[], 3).await;
    let empty = app.create_group(&alice, "empty", &[]).await;

    for query in [
        String::new(),
        format!("?before_id={}", ids[2]),
        format!("?after_id={}", ids[0]),
    ] {
        let (status, body) = app
            .get(&format!("/api/v1/messages/chat/{chat}{query}"), &eve.token)
            .await;
        assert_error(status, &body, 404, "not_found");
    }
    let (status, body) = app
        .get(&format!("/api/v1/messages/chat/{empty}"), &eve.token)
        .await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = app.get("/api/v1/messages/chat/987654", &alice.token).await;
    assert_error(status, &body, 404, "not_found");
}

#[tokio::test]
async fn history_of_an_empty_chat_is_an_empty_list_for_a_member() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "empty", &[&bob]).await;

    let (status, body) = app
        .get(&format!("/api/v1/messages/chat/{chat}"), &bob.token)
        .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!([]));
}

// ---------- PUT /messages/:id ----------

#[tokio::test]
async fn the_sender_edits_a_message() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let sent = app.send_message(&bob, chat, "typo").await;
    let path = format!("/api/v1/messages/{}", id(&sent));

    let (status, edited) = app
        .put(&path, &bob.token, json!({ "content": "  fixed  " }))
        .await;

    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["id"], sent["id"]);
    assert_eq!(edited["content"], "fixed");
    assert_eq!(edited["is_edited"], true);
    assert_eq!(edited["created_at"], sent["created_at"]);
    assert!(
        ts(&edited["updated_at"]) > ts(&sent["updated_at"]),
        "{edited}"
    );
    assert_eq!(edited["sender"]["id"], bob.id);
    let (_, fetched) = app.get(&path, &alice.token).await;
    assert_eq!(fetched, edited);
}

#[tokio::test]
async fn only_the_sender_may_edit() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let eve = app.register("eve").await;
    let chat = app.create_group(&alice, "g", &[&bob, &carol]).await;
    let sent = app.send_message(&bob, chat, "bob's words").await;
    let path = format!("/api/v1/messages/{}", id(&sent));
    let body = json!({ "content": "not bob's words" });

    let (status, resp) = app.put(&path, &carol.token, body.clone()).await;
    assert_error(status, &resp, 403, "not_message_sender");
    // The chat's creator and admin is not the sender either.
    let (status, resp) = app.put(&path, &alice.token, body.clone()).await;
    assert_error(status, &resp, 403, "not_message_sender");
    let (status, resp) = app.put(&path, &eve.token, body.clone()).await;
    assert_error(status, &resp, 404, "not_found");
    let (status, resp) = app.put("/api/v1/messages/987654", &bob.token, body).await;
    assert_error(status, &resp, 404, "not_found");

    let (_, fetched) = app.get(&path, &bob.token).await;
    assert_eq!(fetched, sent);
}

#[tokio::test]
async fn edits_are_validated_like_sends() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    let sent = app.send_message(&alice, chat, "original").await;
    let path = format!("/api/v1/messages/{}", id(&sent));

    for body in [
        json!({}),
        json!({ "content": "" }),
        json!({ "content": " \n " }),
        json!({ "content": "a".repeat(4001) }),
        json!({ "content": 12 }),
    ] {
        let (status, resp) = app.put(&path, &alice.token, body.clone()).await;
        assert_eq!(status, 400, "{body}: {resp}");
    }
    let (_, fetched) = app.get(&path, &alice.token).await;
    assert_eq!(fetched, sent);

    let (status, resp) = app
        .put(&path, &alice.token, json!({ "content": "é".repeat(4000) }))
        .await;
    assert_eq!(status, 200, "{resp}");
}

// ---------- DELETE /messages/:id ----------

#[tokio::test]
async fn the_sender_deletes_a_message() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let keep = app.send_message(&bob, chat, "keep").await;
    let gone = app.send_message(&bob, chat, "oops").await;

    let (status, body) = app
        .delete(&format!("/api/v1/messages/{}", id(&gone)), &bob.token)
        .await;

    assert_eq!(status, 204, "{body}");
    let (status, _) = app
        .get(&format!("/api/v1/messages/{}", id(&gone)), &bob.token)
        .await;
    assert_eq!(status, 404);
    assert_eq!(history(&app, &alice, chat, "").await, vec![id(&keep)]);
    // Deleting it again: it no longer exists.
    let (status, _) = app
        .delete(&format!("/api/v1/messages/{}", id(&gone)), &bob.token)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_chat_admin_deletes_someone_elses_message() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let chat = app.create_group(&alice, "g", &[&bob, &carol]).await;
    let (status, _) = app
        .put(
            &format!("/api/v1/chats/{chat}/members/{}", carol.id),
            &alice.token,
            json!({ "is_admin": true }),
        )
        .await;
    assert_eq!(status, 200);
    let first = app.send_message(&bob, chat, "spam").await;
    let second = app.send_message(&bob, chat, "more spam").await;

    let (s1, _) = app
        .delete(&format!("/api/v1/messages/{}", id(&first)), &alice.token)
        .await;
    let (s2, _) = app
        .delete(&format!("/api/v1/messages/{}", id(&second)), &carol.token)
        .await;

    assert_eq!((s1.as_u16(), s2.as_u16()), (204, 204));
    assert_eq!(stored_in_chat(&app, chat).await, 0);
}

#[tokio::test]
async fn deleting_is_403_for_other_members_and_404_for_outsiders() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let eve = app.register("eve").await;
    let chat = app.create_group(&alice, "g", &[&bob, &carol]).await;
    // Even the admin's message is safe from a plain member.
    let from_bob = app.send_message(&bob, chat, "mine").await;
    let from_alice = app.send_message(&alice, chat, "admin's").await;

    for msg in [&from_bob, &from_alice] {
        let (status, body) = app
            .delete(&format!("/api/v1/messages/{}", id(msg)), &carol.token)
            .await;
        assert_error(status, &body, 403, "not_message_sender");
        let (status, body) = app
            .delete(&format!("/api/v1/messages/{}", id(msg)), &eve.token)
            .await;
        assert_error(status, &body, 404, "not_found");
    }
    assert_eq!(stored_in_chat(&app, chat).await, 2);
}

// ---------- permission matrix ----------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Creator,
    Admin,
    Member,
    Outsider,
}

const ROLES: [Role; 4] = [Role::Creator, Role::Admin, Role::Member, Role::Outsider];

#[derive(Debug, Clone, Copy)]
enum Action {
    ViewChat,
    RenameChat,
    DeleteChat,
    AddMember,
    RemoveOtherMember,
    PromoteMember,
    Leave,
    MarkRead,
    ListMessages,
    SendMessage,
    ViewMessage,
    EditOthersMessage,
    EditOwnMessage,
    DeleteOthersMessage,
    DeleteOwnMessage,
}

struct Cast {
    creator: TestUser,
    admin: TestUser,
    member: TestUser,
    /// A plain member the actions are done to.
    target: TestUser,
    outsider: TestUser,
    /// Someone to add to the chat.
    newcomer: TestUser,
}

impl Cast {
    fn actor(&self, role: Role) -> &TestUser {
        match role {
            Role::Creator => &self.creator,
            Role::Admin => &self.admin,
            Role::Member => &self.member,
            Role::Outsider => &self.outsider,
        }
    }
}

/// A fresh chat for one cell: creator, a promoted admin, a member and a target,
/// with one message from each of them.
struct Scene {
    chat: i64,
    target_message: i64,
    own_message: Option<i64>,
}

async fn scene(app: &TestApp, cast: &Cast, role: Role) -> Scene {
    let chat = app
        .create_group(
            &cast.creator,
            "matrix",
            &[&cast.admin, &cast.member, &cast.target],
        )
        .await;
    let (status, body) = app
        .put(
            &format!("/api/v1/chats/{chat}/members/{}", cast.admin.id),
            &cast.creator.token,
            json!({ "is_admin": true }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let target_message = id(&app.send_message(&cast.target, chat, "target's").await);
    let own_message = match role {
        Role::Outsider => None,
        _ => Some(id(&app.send_message(cast.actor(role), chat, "own").await)),
    };
    Scene {
        chat,
        target_message,
        own_message,
    }
}

async fn perform(
    app: &TestApp,
    cast: &Cast,
    role: Role,
    action: Action,
    s: &Scene,
) -> (StatusCode, Value) {
    let actor = cast.actor(role);
    let t = &actor.token;
    let chat = s.chat;
    // An outsider has no message of their own in the chat: they try the target's.
    let own = s.own_message.unwrap_or(s.target_message);
    match action {
        Action::ViewChat => app.get(&format!("/api/v1/chats/{chat}"), t).await,
        Action::RenameChat => {
            app.put(
                &format!("/api/v1/chats/{chat}"),
                t,
                json!({ "name": "renamed" }),
            )
            .await
        }
        Action::DeleteChat => app.delete(&format!("/api/v1/chats/{chat}"), t).await,
        Action::AddMember => {
            app.post(
                &format!("/api/v1/chats/{chat}/members"),
                t,
                json!({ "member_ids": [cast.newcomer.id] }),
            )
            .await
        }
        Action::RemoveOtherMember => {
            app.delete(
                &format!("/api/v1/chats/{chat}/members/{}", cast.target.id),
                t,
            )
            .await
        }
        Action::PromoteMember => {
            app.put(
                &format!("/api/v1/chats/{chat}/members/{}", cast.target.id),
                t,
                json!({ "is_admin": true }),
            )
            .await
        }
        Action::Leave => {
            app.delete(&format!("/api/v1/chats/{chat}/members/{}", actor.id), t)
                .await
        }
        Action::MarkRead => {
            app.post(
                &format!("/api/v1/chats/{chat}/read"),
                t,
                json!({ "message_id": s.target_message }),
            )
            .await
        }
        Action::ListMessages => app.get(&format!("/api/v1/messages/chat/{chat}"), t).await,
        Action::SendMessage => {
            app.post(
                "/api/v1/messages",
                t,
                json!({ "chat_id": chat, "content": "hi" }),
            )
            .await
        }
        Action::ViewMessage => {
            app.get(&format!("/api/v1/messages/{}", s.target_message), t)
                .await
        }
        Action::EditOthersMessage => {
            app.put(
                &format!("/api/v1/messages/{}", s.target_message),
                t,
                json!({ "content": "edited" }),
            )
            .await
        }
        Action::EditOwnMessage => {
            app.put(
                &format!("/api/v1/messages/{own}"),
                t,
                json!({ "content": "edited" }),
            )
            .await
        }
        Action::DeleteOthersMessage => {
            app.delete(&format!("/api/v1/messages/{}", s.target_message), t)
                .await
        }
        Action::DeleteOwnMessage => app.delete(&format!("/api/v1/messages/{own}"), t).await,
    }
}

#[tokio::test]
async fn permission_matrix_for_every_chat_and_message_action() {
    let app = spawn_app().await;
    let cast = Cast {
        creator: app.register("creator").await,
        admin: app.register("admin").await,
        member: app.register("member").await,
        target: app.register("target").await,
        outsider: app.register("outsider").await,
        newcomer: app.register("newcomer").await,
    };
    // Expected status for [creator, admin, member, outsider], and the code of a 403.
    let table: [(Action, [u16; 4], &str); 15] = [
        (Action::ViewChat, [200, 200, 200, 404], ""),
        (Action::RenameChat, [200, 200, 403, 404], "not_chat_admin"),
        (Action::DeleteChat, [204, 403, 403, 404], "not_chat_creator"),
        (Action::AddMember, [200, 200, 403, 404], "not_chat_admin"),
        (
            Action::RemoveOtherMember,
            [204, 204, 403, 404],
            "not_chat_admin",
        ),
        (
            Action::PromoteMember,
            [200, 200, 403, 404],
            "not_chat_admin",
        ),
        (Action::Leave, [204, 204, 204, 404], ""),
        (Action::MarkRead, [200, 200, 200, 404], ""),
        (Action::ListMessages, [200, 200, 200, 404], ""),
        (Action::SendMessage, [201, 201, 201, 404], ""),
        (Action::ViewMessage, [200, 200, 200, 404], ""),
        (
            Action::EditOthersMessage,
            [403, 403, 403, 404],
            "not_message_sender",
        ),
        (Action::EditOwnMessage, [200, 200, 200, 404], ""),
        (
            Action::DeleteOthersMessage,
            [204, 204, 403, 404],
            "not_message_sender",
        ),
        (Action::DeleteOwnMessage, [204, 204, 204, 404], ""),
    ];

    let mut failures = Vec::new();
    for (action, expected, forbidden_code) in table {
        for (role, want) in ROLES.into_iter().zip(expected) {
            let s = scene(&app, &cast, role).await;
            let (status, body) = perform(&app, &cast, role, action, &s).await;
            let code_ok = match want {
                403 => body["code"] == forbidden_code,
                404 => body["code"] == "not_found",
                _ => true,
            };
            if status != want || !code_ok {
                failures.push(format!(
                    "{action:?} as {role:?}: want {want}, got {status} {body}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "permission matrix mismatches:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn event_timestamps_are_the_text_rest_bodies_carry() {
    // Arrange: message events are built in SQL; their timestamps must read
    // exactly like the REST body's, whatever the session time zone.
    let app = spawn_app().await;
    let db = pg::connect(&app.database_url).await;
    db.batch_execute("set timezone = 'Asia/Kolkata'")
        .await
        .unwrap();
    let sql = format!(
        "select {}",
        chatapp::messages::rfc3339_sql("$1::timestamptz")
    );
    // And a sent message's, whose node writes them from its fields.
    let sent_sql = format!(
        "with o as (select 0::int8 as id, 0::int8 as sender_id, ''::text as content),
         m as (select 1::int8 as id, 1::int8 as chat_id, 1::int8 as sender_id,
                      'x'::text as content, false as is_edited, null::text as client_id,
                      $1::timestamptz as created_at, $1::timestamptz as updated_at,
                      null::int8 as reply_to_id, '{{}}'::int8[] as mentions)
         select {}::text from m left join users u on false",
        chatapp::message_json::sent_fields_sql("m", "u", "o")
    );
    for text in [
        "2026-11-25T05:45:10Z",
        "2026-11-25T05:45:10.1Z",
        "2026-11-25T05:45:10.120Z",
        "2026-11-25T05:45:10.100200Z",
        "2026-11-25T05:45:10.123456Z",
        "1999-12-31T23:59:59.999999+05:30",
    ] {
        let t = OffsetDateTime::parse(text, &Rfc3339).unwrap();

        // Act
        let row = db.query_one(sql.as_str(), &[&t]).await.unwrap();
        let fields = db.query_one(sent_sql.as_str(), &[&t]).await.unwrap();
        let sent: Value =
            serde_json::from_str(&chatapp::message_json::sent_body(fields.get(0)).unwrap())
                .unwrap();

        // Assert
        let rest = json!(t.to_offset(time::UtcOffset::UTC).format(&Rfc3339).unwrap());
        assert_eq!(json!(row.get::<_, String>(0)), rest, "{text}");
        assert_eq!(sent["created_at"], rest, "{text}");
        assert_eq!(sent["updated_at"], rest, "{text}");
        assert_eq!(ts(&rest), t);
    }
}
