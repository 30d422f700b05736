//! A client written for the seed's README runs through unchanged: the same
//! paths, bodies and fields, and the same WebSocket frames. CORS lets a
//! page on another origin call the API, as the seed did.

use crate::helpers::*;
use serde_json::{Value, json};

#[tokio::test]
async fn the_seed_readme_flow_runs_unchanged() {
    let app = spawn_app().await;
    let http = &app.http;
    let base = &app.base_url;
    let name = unique_name("seed");

    // Register (the seed's body) and take the token.
    let registered: Value = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"username": name, "password": "password123", "display_name": "Seed User"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = registered["token"].as_str().expect("a token").to_string();
    let me = registered["user"]["id"].as_i64().unwrap();
    let friend = app.register("friend").await;

    // List users, create a group, send a message.
    let users: Value = http
        .get(format!("{base}/api/v1/users?limit=50&offset=0"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(users.as_array().unwrap().iter().any(|u| u["id"] == me));
    let chat: Value = http
        .post(format!("{base}/api/v1/chats"))
        .bearer_auth(&token)
        .json(&json!({"name": "seed group", "is_group": true, "member_ids": [friend.id]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let chat_id = chat["id"].as_i64().unwrap();
    let mut ws = WsClient::connect(app.addr, &token, None).await;
    // Live delivery starts at `ready` (a client without `since` is sent what
    // commits after it); the seed's clients ignore the frame, the test waits
    // for it so the send below cannot commit before the socket is live.
    ws.next_of_type("ready").await;
    ws.send_json(json!({"type": "join_chat", "payload": {"chat_id": chat_id}}))
        .await;
    let sent = http
        .post(format!("{base}/api/v1/messages"))
        .bearer_auth(&token)
        .json(&json!({"chat_id": chat_id, "content": "Hello, World!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 201);
    let sent: Value = sent.json().await.unwrap();

    // The message as the seed's clients read it, live and over REST.
    let live = ws.next_of_type("message").await;
    for field in [
        "message_id",
        "content",
        "sender_id",
        "username",
        "chat_id",
        "timestamp",
    ] {
        assert!(live["payload"].get(field).is_some(), "no {field}: {live}");
    }
    assert_eq!(live["payload"]["message_id"], sent["id"]);
    let page: Value = http
        .get(format!(
            "{base}/api/v1/messages/chat/{chat_id}?limit=50&offset=0"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page[0]["content"], "Hello, World!");

    // Chat detail, and the chat list "with members".
    let detail: Value = http
        .get(format!("{base}/api/v1/chats/{chat_id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["members"].as_array().unwrap().len(), 2);
    let chats: Value = http
        .get(format!("{base}/api/v1/chats?limit=50&offset=0"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(chats[0]["id"], chat_id);
    assert_eq!(chats[0]["members"].as_array().unwrap().len(), 2, "{chats}");

    // A message frame as the seed sends it, and the WebSocket health.
    ws.send_json(
        json!({"type": "message", "payload": {"chat_id": chat_id, "content": "by socket"}}),
    )
    .await;
    assert_eq!(ws.next_of_type("ack").await["payload"]["chat_id"], chat_id);
    let health: Value = http
        .get(format!("{base}/ws/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["connections"], 1);
}

#[tokio::test]
async fn any_origin_may_call_the_api_by_default_and_cors_origins_restricts_it() {
    let open = spawn_app().await;
    let closed = spawn_app_with(|c| c.cors.origins = vec!["https://chat.example.com".into()]).await;
    let preflight = |app: &TestApp, origin: &str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/api/v1/messages"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };

    let anywhere = preflight(&open, "https://elsewhere.example").await.unwrap();
    let listed = preflight(&closed, "https://chat.example.com")
        .await
        .unwrap();
    let unlisted = preflight(&closed, "https://elsewhere.example")
        .await
        .unwrap();

    assert_eq!(anywhere.status(), 200);
    assert!(
        anywhere
            .headers()
            .contains_key("access-control-allow-origin")
    );
    assert_eq!(listed.status(), 200);
    assert_eq!(
        listed.headers()["access-control-allow-origin"],
        "https://chat.example.com"
    );
    assert_eq!(unlisted.status(), 403);
}
