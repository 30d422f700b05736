//! A socket must not outlive a password change or account deletion that
//! committed while it was connecting (before it could hear the announcement).

use crate::helpers::ws::Closed;
use crate::helpers::*;

/// Holds the connecting socket right before its membership snapshot (by
/// locking `event_seq`), applies `change` directly in the database — no
/// NOTIFY, as if the announcement had come and gone — then lets it continue.
async fn close_code_after_silent_change(change: &str) -> Closed {
    let app = spawn_app().await;
    let user = app.register("racer").await;
    let mut blocker = crate::helpers::pg::connect(&app.database_url).await;
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("lock table event_seq in access exclusive mode")
        .await
        .unwrap();

    let mut ws = app.connect_ws(&user, None).await;
    let admin = crate::helpers::pg::connect(&app.database_url).await;
    admin
        .execute(change, &[&user.id])
        .await
        .expect("silent change applies");
    lock.commit().await.unwrap();

    ws.closed().await
}

#[tokio::test]
async fn a_password_change_committed_while_connecting_closes_the_socket_with_4001() {
    let closed = close_code_after_silent_change(
        "update users set token_version = token_version + 1 where id = $1",
    )
    .await;
    assert_eq!(closed, Closed::Code(4001));
}

#[tokio::test]
async fn an_account_deleted_while_connecting_closes_the_socket_with_4003() {
    let closed = close_code_after_silent_change("delete from users where id = $1").await;
    assert_eq!(closed, Closed::Code(4003));
}
