//! Test harness: a real PostgreSQL (started once per test binary unless
//! `DATABASE_URL` names one), a fresh database per test cloned from a migrated
//! template, a real server on port 0, and a real WebSocket client.

pub mod pg;
pub mod process;
pub mod realtime;
pub mod ws;

use chatapp::config::Config;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use ws::WsClient;

/// One fixed key for every test server, so nodes sharing a database accept each other's tokens.
pub const TEST_TOKEN_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
pub const PASSWORD: &str = "correct horse battery";

/// The configuration tests start from: cheap bcrypt, quiet, port 0.
#[allow(clippy::field_reassign_with_default)]
pub fn test_config(database_url: &str) -> Config {
    let mut config = Config::default();
    config.host = "127.0.0.1".into();
    config.port = 0;
    config.database.url = database_url.to_string();
    config.database.pool_size = 8;
    config.database.connect_timeout_secs = 2;
    config.auth.bcrypt_cost = 4;
    config.auth.token_key = Some(TEST_TOKEN_KEY.into());
    config.ws.close_flush_timeout_ms = 2_000;
    // Tests register and send far faster than any person; the rate limits
    // have tests of their own, which turn them on.
    config.limits.rate.enabled = false;
    // Stopping a test server need not give load balancers time to notice.
    config.http.drain_delay_secs = 0;
    config
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub base_url: String,
    pub database_url: String,
    pub http: reqwest::Client,
    pub hub: std::sync::Arc<chatapp::ws::Hub>,
    pub auth: std::sync::Arc<chatapp::auth::Auth>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: i64,
    pub username: String,
    pub token: String,
}

/// A server on a fresh database with the test configuration.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A server on a fresh database; `tweak` adjusts the configuration first.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let url = pg::fresh_database().await;
    spawn_node(&url, tweak).await
}

/// Another server ("node") on an existing database.
pub async fn spawn_node(database_url: &str, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config(database_url);
    tweak(&mut config);
    let app = chatapp::build(config).await.expect("app builds");
    let addr = app.local_addr();
    let hub = app.hub();
    let auth = app.auth();
    let (tx, rx) = oneshot::channel();
    let handle = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        base_url: format!("http://{addr}"),
        database_url: database_url.to_string(),
        http: reqwest::Client::new(),
        hub,
        auth,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

static USER_SEQ: AtomicU64 = AtomicU64::new(1);

/// A unique, valid username with the given prefix.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}{}", USER_SEQ.fetch_add(1, Ordering::Relaxed))
}

impl TestApp {
    /// Stops the server the way SIGTERM does and waits for it.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// Sends a request; `body` is sent as JSON. Returns the status and JSON body (Null if none).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.expect("body read");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("non-JSON response ({status}): {text}"))
        };
        (status, value)
    }

    /// Sends a hand-built request (raw bodies, odd headers); returns the status and JSON body (Null if none).
    pub async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.expect("body read");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("non-JSON response ({status}): {text}"))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.request(Method::POST, path, Some(token), Some(body))
            .await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.request(Method::PUT, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.request(Method::DELETE, path, Some(token), None).await
    }

    /// Registers a user (unique name from `prefix`) and returns their id and token.
    pub async fn register(&self, prefix: &str) -> TestUser {
        let username = unique_name(prefix);
        let (status, body) = self
            .request(
                Method::POST,
                "/api/v1/auth/register",
                None,
                Some(json!({ "username": username, "password": PASSWORD })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "register failed: {body}");
        TestUser {
            id: body["user"]["id"].as_i64().unwrap(),
            username,
            token: body["token"].as_str().unwrap().to_string(),
        }
    }

    pub async fn login(&self, username: &str, password: &str) -> (StatusCode, Value) {
        self.request(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({ "username": username, "password": password })),
        )
        .await
    }

    /// Creates a group chat owned by `owner` with `members`; returns its id.
    pub async fn create_group(&self, owner: &TestUser, name: &str, members: &[&TestUser]) -> i64 {
        let ids: Vec<i64> = members.iter().map(|m| m.id).collect();
        let (status, body) = self
            .post(
                "/api/v1/chats",
                &owner.token,
                json!({ "name": name, "is_group": true, "member_ids": ids }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "create group failed: {body}");
        body["id"].as_i64().unwrap()
    }

    /// Adds users `ids` to `chat` as `actor`, which must succeed; returns the
    /// chat as the answer gives it.
    pub async fn add_members(&self, actor: &TestUser, chat: i64, ids: &[i64]) -> Value {
        let (status, body) = self
            .post(
                &format!("/api/v1/chats/{chat}/members"),
                &actor.token,
                json!({ "member_ids": ids }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "add members failed: {body}");
        body
    }

    /// Creates (or fetches) the direct message between two users; returns its id.
    pub async fn create_dm(&self, a: &TestUser, b: &TestUser) -> i64 {
        let (status, body) = self
            .post(
                "/api/v1/chats",
                &a.token,
                json!({ "is_group": false, "member_ids": [b.id] }),
            )
            .await;
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "create dm failed: {body}"
        );
        body["id"].as_i64().unwrap()
    }

    /// Sends a message over REST and returns the stored message.
    pub async fn send_message(&self, sender: &TestUser, chat_id: i64, content: &str) -> Value {
        let (status, body) = self
            .post(
                "/api/v1/messages",
                &sender.token,
                json!({ "chat_id": chat_id, "content": content }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "send failed: {body}");
        body
    }

    /// Changes `user`'s password (from [`PASSWORD`]) to `new_password`,
    /// which revokes every token they hold.
    pub async fn change_password(&self, user: &TestUser, new_password: &str) {
        let (status, body) = self
            .put(
                &format!("/api/v1/users/{}", user.id),
                &user.token,
                json!({ "password": new_password, "current_password": PASSWORD }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// Deletes `user`'s own account, confirming it with their password.
    pub async fn delete_account(&self, user: &TestUser) -> (StatusCode, Value) {
        self.request(
            Method::DELETE,
            &format!("/api/v1/users/{}", user.id),
            Some(&user.token),
            Some(json!({ "current_password": PASSWORD })),
        )
        .await
    }

    /// Opens a WebSocket as `user`, optionally resuming after `since`.
    pub async fn connect_ws(&self, user: &TestUser, since: Option<i64>) -> WsClient {
        WsClient::connect(self.addr, &user.token, since).await
    }

    /// Runs a `select count(*) ... $1 ...` against the test database.
    pub async fn db_count(&self, sql: &str, id: i64) -> i64 {
        let db = pg::connect(&self.database_url).await;
        db.query_one(sql, &[&id]).await.unwrap().get(0)
    }

    /// `GET /ws/health`.
    pub async fn ws_health(&self) -> Value {
        let resp = self.http.get(self.url("/ws/health")).send().await.unwrap();
        resp.json().await.unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// An error body without its `request_id`, which differs per request.
pub fn without_request_id(body: &Value) -> Value {
    let mut body = body.clone();
    if let Some(fields) = body.as_object_mut() {
        fields.remove("request_id");
    }
    body
}

/// A timestamp field parsed as RFC 3339; panics (naming it) when it is not one.
#[track_caller]
pub fn ts(v: &Value) -> time::OffsetDateTime {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::parse(v.as_str().expect("timestamp string"), &Rfc3339)
        .unwrap_or_else(|e| panic!("not RFC 3339: {v}: {e}"))
}

/// Asserts an error response: the status, the envelope `{error, code}` with a
/// non-empty message, and `fields` present exactly when the code is `validation_failed`.
#[track_caller]
pub fn assert_error(status: StatusCode, body: &Value, expected: u16, code: &str) {
    assert_eq!(status.as_u16(), expected, "unexpected status; body: {body}");
    assert_eq!(body["code"], code, "unexpected code; body: {body}");
    assert!(
        body["error"].as_str().is_some_and(|m| !m.is_empty()),
        "error message missing: {body}"
    );
    if code == "validation_failed" {
        assert!(
            body["fields"].as_array().is_some_and(|f| !f.is_empty()),
            "validation error without fields: {body}"
        );
    } else {
        assert!(body.get("fields").is_none(), "unexpected fields: {body}");
    }
}
