//! Tokens expire: REST answers 401 and an open socket is closed with 4001.

mod helpers;

use helpers::ws::Closed;
use helpers::*;

#[tokio::test]
async fn expired_token_gets_401_and_its_socket_is_closed_with_4001() {
    // Arrange: tokens that live two seconds.
    let app = spawn_app_with(|c| c.auth.token_ttl_secs = 2).await;
    let user = app.register("expiring").await;
    let mut ws = app.connect_ws(&user, None).await;
    assert_eq!(ws.next_json().await["type"], "ready");
    let (status, _) = app.get("/api/v1/auth/me", &user.token).await;
    assert_eq!(status, 200);

    // Act: wait for the expiry (the socket is closed by the server, not by us).
    let closed = ws.closed().await;

    // Assert
    assert_eq!(closed, Closed::Code(4001));
    let (status, body) = app.get("/api/v1/auth/me", &user.token).await;
    assert_eq!(status, 401);
    assert_eq!(body["code"], "unauthorized");
    assert_eq!(body["error"], "token has expired");
}
