//! Revocation cannot be missed: a password change, an account deletion or a
//! removal from a chat reaches every socket even when it happened while the
//! node's LISTEN connection was down.

use crate::helpers::realtime::connected;
use crate::helpers::ws::Closed;
use crate::helpers::*;
use serde_json::json;

/// Terminates the node's LISTEN connection (it reconnects on its own).
async fn kill_listener(app: &TestApp) {
    let killed = pg::kill_listeners(&app.database_url).await;
    assert_eq!(killed, 1, "exactly one listener connection per node");
}

/// Applies `change` straight to the database — no NOTIFY, as if the
/// announcement had been sent while the listener was away — then kills the
/// listener; returns how the user's socket ends.
async fn close_code_after_a_missed_change(change: &str) -> Closed {
    let app = spawn_app().await;
    let user = app.register("victim").await;
    let (mut ws, _) = connected(&app, &user, None).await;
    let db = pg::connect(&app.database_url).await;
    db.execute(change, &[&user.id]).await.unwrap();

    kill_listener(&app).await;

    ws.closed().await
}

#[tokio::test]
async fn a_password_change_missed_by_a_disconnected_listener_still_closes_the_socket() {
    let closed = close_code_after_a_missed_change(
        "update users set token_version = token_version + 1 where id = $1",
    )
    .await;
    assert_eq!(closed, Closed::Code(4001));
}

#[tokio::test]
async fn an_account_deletion_missed_by_a_disconnected_listener_still_closes_the_socket() {
    let closed = close_code_after_a_missed_change("delete from users where id = $1").await;
    assert_eq!(closed, Closed::Code(4003));
}

#[tokio::test]
async fn a_removal_while_the_listener_is_down_ends_delivery_from_that_chat() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let (mut ws, _) = connected(&app, &bob, None).await;

    // Act: bob is removed while the node's listener is away.
    kill_listener(&app).await;
    let (status, _) = app
        .delete(
            &format!("/api/v1/chats/{chat}/members/{}", bob.id),
            &alice.token,
        )
        .await;
    assert_eq!(status, 204);

    // Assert: he hears of his removal, then nothing more from that chat.
    let removed = ws.next_of_type("member_removed").await;
    assert_eq!(removed["payload"]["user_id"], bob.id);
    app.post(
        "/api/v1/messages",
        &alice.token,
        json!({"chat_id": chat, "content": "after bob left"}),
    )
    .await;
    ws.expect_no("message", std::time::Duration::from_millis(600))
        .await;
}
