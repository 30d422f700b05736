use crate::helpers::*;

#[tokio::test]
async fn server_starts_and_health_is_ok() {
    let app = spawn_app().await;
    let (status, body) = app
        .request(reqwest::Method::GET, "/health", None, None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    let user = app.register("smoke").await;
    let chat = app.create_group(&user, "g", &[]).await;
    let mut ws = app.connect_ws(&user, None).await;
    let ready = ws.next_of_type("ready").await;
    assert_eq!(ready["payload"]["chat_ids"][0], chat);
    let msg = app.send_message(&user, chat, "hi").await;
    let frame = ws.next_of_type("message").await;
    assert_eq!(frame["payload"]["message_id"], msg["id"]);
}
