//! Users: listing and search, profiles, password change, account deletion,
//! last-seen (`/api/v1/users*`).

use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[track_caller]
fn usernames(body: &Value) -> Vec<String> {
    body.as_array()
        .unwrap_or_else(|| panic!("not a list: {body}"))
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_string())
        .collect()
}

#[track_caller]
fn assert_field_error(body: &Value, field: &str) {
    let fields = body["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("no fields: {body}"));
    assert!(
        fields.iter().any(|f| f["field"] == field),
        "no error for `{field}`: {body}"
    );
}

/// Registers `username` (exactly) with an optional display name.
async fn register_named(app: &TestApp, username: &str, display_name: Option<&str>) -> TestUser {
    let (status, body) = app
        .request(
            Method::POST,
            "/api/v1/auth/register",
            None,
            Some(
                json!({ "username": username, "password": PASSWORD, "display_name": display_name }),
            ),
        )
        .await;
    assert_eq!(status, 201, "register {username}: {body}");
    TestUser {
        id: body["user"]["id"].as_i64().unwrap(),
        username: username.to_string(),
        token: body["token"].as_str().unwrap().to_string(),
    }
}

/// Inserts `n` users straight into the database (fast bulk setup).
async fn insert_users(app: &TestApp, prefix: &str, n: usize) {
    let db = pg::connect(&app.database_url).await;
    db.execute(
        "insert into users (username, password_hash)
         select $1 || lpad(g::text, 4, '0'), 'x' from generate_series(1, $2::int) g",
        &[&prefix, &(n as i32)],
    )
    .await
    .unwrap();
}

fn user_path(id: i64) -> String {
    format!("/api/v1/users/{id}")
}

// ---- GET /users ----

#[tokio::test]
async fn list_returns_complete_users_in_id_order() {
    let app = spawn_app().await;
    let a = app.register("lista").await;
    let b = app.register("listb").await;

    let (status, body) = app.get("/api/v1/users", &a.token).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(usernames(&body), [a.username.clone(), b.username.clone()]);
    for user in body.as_array().unwrap() {
        let mut keys: Vec<&str> = user
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["created_at", "display_name", "id", "last_seen", "username"],
            "every field is present, null when unset: {user}"
        );
    }
}

#[tokio::test]
async fn list_requires_a_token() {
    let app = spawn_app().await;
    let (status, body) = app.request(Method::GET, "/api/v1/users", None, None).await;
    assert_error(status, &body, 401, "unauthorized");
}

#[tokio::test]
async fn list_pages_with_limit_and_offset() {
    let app = spawn_app().await;
    let me = app.register("aaa").await;
    insert_users(&app, "page", 120).await;

    let (status, default_page) = app.get("/api/v1/users", &me.token).await;
    assert_eq!(status, 200);
    assert_eq!(
        default_page.as_array().unwrap().len(),
        50,
        "default limit is 50"
    );

    let (_, max_page) = app.get("/api/v1/users?limit=100", &me.token).await;
    assert_eq!(max_page.as_array().unwrap().len(), 100);

    let (_, first) = app.get("/api/v1/users?limit=3&offset=0", &me.token).await;
    let (_, second) = app.get("/api/v1/users?limit=3&offset=3", &me.token).await;
    assert_eq!(
        usernames(&first),
        [me.username.as_str(), "page0001", "page0002"]
    );
    assert_eq!(usernames(&second), ["page0003", "page0004", "page0005"]);

    let (status, past_end) = app.get("/api/v1/users?offset=1000", &me.token).await;
    assert_eq!(status, 200);
    assert_eq!(past_end, json!([]));
}

#[tokio::test]
async fn list_rejects_bad_pagination_with_field_errors() {
    let app = spawn_app().await;
    let me = app.register("pg").await;
    let cases = [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=", "limit"),
        ("limit=1.5", "limit"),
        ("limit=99999999999999999999", "limit"),
        ("offset=-1", "offset"),
        ("offset=abc", "offset"),
        ("offset=99999999999999999999", "offset"),
    ];
    for (query, field) in cases {
        let (status, body) = app.get(&format!("/api/v1/users?{query}"), &me.token).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_error(status, &body, 400, "validation_failed");
        assert_field_error(&body, field);
    }
}

#[tokio::test]
async fn search_matches_username_or_display_name_prefix_case_insensitively() {
    let app = spawn_app().await;
    let me = register_named(&app, "searcher", None).await;
    register_named(&app, "alice_smith", Some("Wonder")).await;
    register_named(&app, "bob", Some("Alice Cooper")).await;
    register_named(&app, "malice", Some("Not A Prefix alice")).await;
    register_named(&app, "carol", None).await;

    let cases: &[(&str, &[&str])] = &[
        ("ali", &["alice_smith", "bob"]),
        ("ALI", &["alice_smith", "bob"]),
        ("alice%20c", &["bob"]),
        ("wond", &["alice_smith"]),
        ("lice", &[]),
        ("carol", &["carol"]),
        ("zzz", &[]),
    ];
    for (q, expected) in cases {
        let (status, body) = app.get(&format!("/api/v1/users?q={q}"), &me.token).await;
        assert_eq!(status, 200, "q={q}: {body}");
        assert_eq!(usernames(&body), *expected, "q={q}");
    }

    let (_, page) = app
        .get("/api/v1/users?q=ali&limit=1&offset=1", &me.token)
        .await;
    assert_eq!(usernames(&page), ["bob"], "search combines with paging");
}

#[tokio::test]
async fn search_treats_like_wildcards_literally() {
    let app = spawn_app().await;
    let me = register_named(&app, "searcher", None).await;
    register_named(&app, "a_b", None).await;
    register_named(&app, "axb", None).await;
    register_named(&app, "ab_", None).await;
    register_named(&app, "pct1", Some("100% real")).await;
    register_named(&app, "pct2", Some("1000 fake")).await;
    register_named(&app, "bsl", Some("back\\slash")).await;

    let cases: &[(&str, &[&str])] = &[
        // `_` must not match any single character.
        ("a_", &["a_b"]),
        ("a%5F", &["a_b"]),
        // `%` must not match anything.
        ("%25", &[]),
        ("100%25", &["pct1"]),
        ("a%25b", &[]),
        // A backslash is not an escape character for the client.
        ("back%5C", &["bsl"]),
        ("%5C", &[]),
    ];
    for (q, expected) in cases {
        let (status, body) = app.get(&format!("/api/v1/users?q={q}"), &me.token).await;
        assert_eq!(status, 200, "q={q}: {body}");
        assert_eq!(usernames(&body), *expected, "q={q}");
    }
}

#[tokio::test]
async fn search_query_over_100_characters_is_rejected() {
    let app = spawn_app().await;
    let me = app.register("longq").await;
    let (status, body) = app
        .get(&format!("/api/v1/users?q={}", "a".repeat(101)), &me.token)
        .await;
    assert_error(status, &body, 400, "validation_failed");
    assert_field_error(&body, "q");
}

// ---- GET /users/:id ----

#[tokio::test]
async fn get_user_returns_the_profile() {
    let app = spawn_app().await;
    let me = app.register("viewer").await;
    let other = register_named(&app, "target", Some("Tar Get")).await;

    let (status, body) = app.get(&user_path(other.id), &me.token).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], other.id);
    assert_eq!(body["username"], "target");
    assert_eq!(body["display_name"], "Tar Get");
    assert_eq!(body["last_seen"], Value::Null);
    assert!(body["created_at"].is_string());
}

#[tokio::test]
async fn get_unknown_user_is_404() {
    let app = spawn_app().await;
    let me = app.register("viewer").await;
    let (status, body) = app.get(&user_path(me.id + 1000), &me.token).await;
    assert_error(status, &body, 404, "not_found");
}

#[tokio::test]
async fn malformed_user_ids_are_400() {
    let app = spawn_app().await;
    let me = app.register("ids").await;
    for id in [
        "abc",
        "0",
        "-5",
        "99999999999999999999",
        "1.5",
        "1e3",
        "%20",
    ] {
        let path = format!("/api/v1/users/{id}");
        let (status, body) = app.get(&path, &me.token).await;
        assert_eq!(status, 400, "GET {path}: {body}");
        assert_error(status, &body, 400, "invalid_id");
        let (status, body) = app.put(&path, &me.token, json!({})).await;
        assert_eq!(status, 400, "PUT {path}: {body}");
        let (status, body) = app.delete(&path, &me.token).await;
        assert_eq!(status, 400, "DELETE {path}: {body}");
    }
}

// ---- PUT /users/:id ----

#[tokio::test]
async fn display_name_can_be_set_kept_and_cleared() {
    let app = spawn_app().await;
    let me = app.register("profile").await;
    let path = user_path(me.id);

    let (status, body) = app
        .put(&path, &me.token, json!({ "display_name": "  Shown Name " }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["display_name"], "Shown Name");
    assert_eq!(body["id"], me.id);

    let (status, body) = app.put(&path, &me.token, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["display_name"], "Shown Name", "absent field leaves it");

    let (status, body) = app
        .put(&path, &me.token, json!({ "display_name": null }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["display_name"], Value::Null, "null clears it");

    let (_, fetched) = app.get(&path, &me.token).await;
    assert_eq!(fetched["display_name"], Value::Null);
}

#[tokio::test]
async fn display_name_update_is_limited_to_100_characters() {
    let app = spawn_app().await;
    let me = app.register("dnlimit").await;
    let path = user_path(me.id);

    let (status, body) = app
        .put(&path, &me.token, json!({ "display_name": "ü".repeat(100) }))
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = app
        .put(&path, &me.token, json!({ "display_name": "ü".repeat(101) }))
        .await;
    assert_error(status, &body, 400, "validation_failed");
    assert_field_error(&body, "display_name");
    let (_, fetched) = app.get(&path, &me.token).await;
    assert_eq!(
        fetched["display_name"],
        "ü".repeat(100),
        "unchanged after a 400"
    );
}

#[tokio::test]
async fn display_name_of_the_wrong_type_is_400() {
    let app = spawn_app().await;
    let me = app.register("dntype").await;
    let (status, body) = app
        .put(&user_path(me.id), &me.token, json!({ "display_name": 42 }))
        .await;
    assert_error(status, &body, 400, "invalid_body");
}

#[tokio::test]
async fn changing_someone_elses_profile_is_403() {
    let app = spawn_app().await;
    let me = app.register("me").await;
    let other = register_named(&app, "victim", Some("Original")).await;

    for body in [
        json!({ "display_name": "hacked" }),
        json!({ "password": "new password 1", "current_password": PASSWORD }),
    ] {
        let (status, resp) = app.put(&user_path(other.id), &me.token, body).await;
        assert_error(status, &resp, 403, "not_your_account");
    }
    let (_, fetched) = app.get(&user_path(other.id), &me.token).await;
    assert_eq!(fetched["display_name"], "Original");
    let (status, _) = app.login("victim", PASSWORD).await;
    assert_eq!(status, 200, "the victim's password is unchanged");
}

#[tokio::test]
async fn password_change_requires_the_current_password() {
    let app = spawn_app().await;
    let me = app.register("pwreq").await;
    let path = user_path(me.id);

    let (status, body) = app
        .put(&path, &me.token, json!({ "password": "new password 1" }))
        .await;
    assert_error(status, &body, 400, "validation_failed");
    assert_field_error(&body, "current_password");

    let (status, body) = app
        .put(
            &path,
            &me.token,
            json!({ "password": "new password 1", "current_password": "wrong password" }),
        )
        .await;
    assert_error(status, &body, 400, "validation_failed");
    assert_field_error(&body, "current_password");

    let (status, body) = app
        .put(
            &path,
            &me.token,
            json!({ "password": "short", "current_password": PASSWORD }),
        )
        .await;
    assert_error(status, &body, 400, "validation_failed");
    assert_field_error(&body, "password");

    // Nothing changed: the old password and the old token still work.
    let (status, _) = app.login(&me.username, PASSWORD).await;
    assert_eq!(status, 200);
    let (status, _) = app.get("/api/v1/auth/me", &me.token).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn password_change_with_the_current_password_succeeds() {
    let app = spawn_app().await;
    let me = app.register("pwok").await;

    let (status, body) = app
        .put(
            &user_path(me.id),
            &me.token,
            json!({ "password": "new password 1", "current_password": PASSWORD }),
        )
        .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], me.id);
    assert!(body.get("password_hash").is_none(), "{body}");
    let (status, _) = app.login(&me.username, "new password 1").await;
    assert_eq!(status, 200);
    let (status, _) = app.login(&me.username, PASSWORD).await;
    assert_eq!(status, 401);
}

// ---- DELETE /users/:id ----

#[tokio::test]
async fn deleting_your_account_removes_memberships_and_keeps_messages_anonymous() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let group = app.create_group(&alice, "team", &[&bob]).await;
    let dm = app.create_dm(&alice, &bob).await;
    let in_group = app.send_message(&bob, group, "bye from bob").await;
    let in_dm = app.send_message(&bob, dm, "private bye").await;
    let from_alice = app.send_message(&alice, group, "hi bob").await;

    let (status, body) = app.delete_account(&bob).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(body, Value::Null, "204 has no body");

    let (status, body) = app.get(&user_path(bob.id), &alice.token).await;
    assert_error(status, &body, 404, "not_found");

    let (status, chat) = app
        .get(&format!("/api/v1/chats/{group}"), &alice.token)
        .await;
    assert_eq!(status, 200, "{chat}");
    let member_ids: Vec<i64> = chat["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user_id"].as_i64().unwrap())
        .collect();
    assert_eq!(member_ids, [alice.id]);

    let db = pg::connect(&app.database_url).await;
    let left: i64 = db
        .query_one(
            "select count(*) from chat_members where user_id = $1",
            &[&bob.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "no membership of the deleted user remains");

    for (chat_id, msg) in [(group, &in_group), (dm, &in_dm)] {
        let (status, history) = app
            .get(&format!("/api/v1/messages/chat/{chat_id}"), &alice.token)
            .await;
        assert_eq!(status, 200, "{history}");
        let kept = history
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == msg["id"])
            .unwrap_or_else(|| panic!("message {} is gone: {history}", msg["id"]));
        assert_eq!(kept["content"], msg["content"]);
        assert!(kept.as_object().unwrap().contains_key("sender_id"));
        assert_eq!(kept["sender_id"], Value::Null, "{kept}");
        assert!(kept.as_object().unwrap().contains_key("sender"));
        assert_eq!(kept["sender"], Value::Null, "{kept}");
    }
    let (_, msg) = app
        .get(
            &format!("/api/v1/messages/{}", from_alice["id"]),
            &alice.token,
        )
        .await;
    assert_eq!(msg["sender_id"], alice.id, "others' messages are untouched");
}

#[tokio::test]
async fn deleting_the_last_admins_account_promotes_a_member_and_drops_chats_left_empty() {
    // Arrange: alice is the only admin of a shared group and the only member of another.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let shared = app.create_group(&alice, "shared", &[&bob]).await;
    let (status, body) = app
        .post(
            &format!("/api/v1/chats/{shared}/members"),
            &alice.token,
            json!({ "member_ids": [carol.id] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let solo = app.create_group(&alice, "solo", &[]).await;
    app.send_message(&alice, solo, "note to self").await;

    // Act
    let (status, body) = app.delete_account(&alice).await;
    assert_eq!(status, 204, "{body}");

    // Assert: bob, the longest-standing remaining member, is now the admin...
    let (status, chat) = app
        .get(&format!("/api/v1/chats/{shared}"), &bob.token)
        .await;
    assert_eq!(status, 200, "{chat}");
    let admins: Vec<i64> = chat["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["is_admin"] == true)
        .map(|m| m["user_id"].as_i64().unwrap())
        .collect();
    assert_eq!(admins, [bob.id], "{chat}");
    // ...and the chat nobody is left in is gone, with its messages.
    let db = pg::connect(&app.database_url).await;
    let remaining: i64 = db
        .query_one(
            "select (select count(*) from chats where id = $1)
                  + (select count(*) from messages where chat_id = $1)",
            &[&solo],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(remaining, 0);
}

#[tokio::test]
async fn deleting_someone_elses_account_is_403() {
    let app = spawn_app().await;
    let me = app.register("me").await;
    let other = app.register("other").await;

    let (status, body) = app.delete(&user_path(other.id), &me.token).await;

    assert_error(status, &body, 403, "not_your_account");
    let (status, _) = app.get(&user_path(other.id), &me.token).await;
    assert_eq!(status, 200, "the account still exists");
    let (status, _) = app.get("/api/v1/auth/me", &other.token).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn deleting_without_a_token_is_401() {
    let app = spawn_app().await;
    let other = app.register("other").await;
    let (status, body) = app
        .request(Method::DELETE, &user_path(other.id), None, None)
        .await;
    assert_error(status, &body, 401, "unauthorized");
}

// ---- POST /users/last-seen ----

#[tokio::test]
async fn last_seen_is_set_to_now() {
    let app = spawn_app().await;
    let me = app.register("seen").await;
    let other = app.register("watcher").await;
    let before = OffsetDateTime::now_utc();

    let (status, body) = app
        .post("/api/v1/users/last-seen", &me.token, json!({}))
        .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], me.id);
    let seen = OffsetDateTime::parse(body["last_seen"].as_str().unwrap(), &Rfc3339).unwrap();
    assert!(
        (seen - before).whole_seconds().abs() < 30,
        "last_seen {seen} is not now ({before})"
    );
    let (_, fetched) = app.get(&user_path(me.id), &other.token).await;
    assert_eq!(fetched["last_seen"], body["last_seen"]);
}

#[tokio::test]
async fn last_seen_requires_a_token() {
    let app = spawn_app().await;
    let (status, body) = app
        .request(Method::POST, "/api/v1/users/last-seen", None, None)
        .await;
    assert_error(status, &body, 401, "unauthorized");
}

#[tokio::test]
async fn account_deletion_finds_the_users_messages_and_chats_by_index() {
    // Deleting a user nulls `messages.sender_id` and `chats.creator_id`; without
    // an index each deletion would scan those whole tables.
    let app = spawn_app().await;
    let db = crate::helpers::pg::connect(&app.database_url).await;
    db.batch_execute("set enable_seqscan = off").await.unwrap();
    for query in [
        "explain update messages set sender_id = null where sender_id = 1",
        "explain update chats set creator_id = null where creator_id = 1",
    ] {
        let plan: Vec<String> = db
            .query(query, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let plan = plan.join("\n");
        assert!(plan.contains("Index"), "{query} scans the table:\n{plan}");
    }
}

#[tokio::test]
async fn deleting_an_account_takes_its_current_password() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let path = user_path(alice.id);

    // Act
    let (no_body, no_body_resp) = app.delete(&path, &alice.token).await;
    let (wrong, wrong_resp) = app
        .request(
            Method::DELETE,
            &path,
            Some(&alice.token),
            Some(json!({"current_password": "not it at all"})),
        )
        .await;
    let (right, _) = app.delete_account(&alice).await;

    // Assert: a token alone cannot erase an account.
    assert_error(no_body, &no_body_resp, 401, "invalid_credentials");
    assert_error(wrong, &wrong_resp, 401, "invalid_credentials");
    assert_eq!(right, 204);
}

/// A group of `owner` with `others`, every one of them an admin.
async fn group_of_admins(app: &TestApp, owner: &TestUser, others: &[&TestUser]) -> i64 {
    let chat = app.create_group(owner, "g", others).await;
    for other in others {
        let (status, body) = app
            .put(
                &format!("/api/v1/chats/{chat}/members/{}", other.id),
                &owner.token,
                json!({"is_admin": true}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    chat
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_deletion_racing_leaves_and_demotes_keeps_chats_admined_or_deleted() {
    // Arrange: in each round alice deletes her account while bob, the other
    // admin, leaves a three-member group, leaves a two-admin group and
    // steps down in a third; whichever runs first, the rules must hold.
    let app = spawn_app().await;
    for _ in 0..12 {
        let alice = app.register("alice").await;
        let bob = app.register("bob").await;
        let carol = app.register("carol").await;
        let trio = group_of_admins(&app, &alice, &[&bob]).await;
        app.post(
            &format!("/api/v1/chats/{trio}/members"),
            &alice.token,
            json!({"member_ids": [carol.id]}),
        )
        .await;
        let pair = group_of_admins(&app, &alice, &[&bob]).await;
        let demoted = group_of_admins(&app, &alice, &[&bob]).await;
        let member = |chat: i64| format!("/api/v1/chats/{chat}/members/{}", bob.id);
        let (trio_bob, pair_bob, demoted_bob) = (member(trio), member(pair), member(demoted));

        // Act
        let _ = tokio::join!(
            app.delete_account(&alice),
            app.delete(&trio_bob, &bob.token),
            app.delete(&pair_bob, &bob.token),
            app.put(&demoted_bob, &bob.token, json!({"is_admin": false})),
        );
    }

    // Assert: no chat is left empty, and every chat with members has an admin.
    let db = pg::connect(&app.database_url).await;
    let broken: Vec<(i64, i64, i64)> = db
        .query(
            "select c.id, count(m.user_id), count(m.user_id) filter (where m.is_admin)
             from chats c left join chat_members m on m.chat_id = c.id
             group by c.id
             having count(m.user_id) = 0 or count(m.user_id) filter (where m.is_admin) = 0",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(broken.is_empty(), "(chat, members, admins): {broken:?}");
}
