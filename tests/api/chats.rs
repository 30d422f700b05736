//! Chats: creation (groups and DMs), listing, detail, rename, delete,
//! membership changes and read markers.

use crate::helpers::*;
use serde_json::{Value, json};

// ---------- local helpers ----------

/// Sorted user ids of a chat detail's members.
fn member_ids(chat: &Value) -> Vec<i64> {
    let mut ids: Vec<i64> = chat["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members: {chat}"))
        .iter()
        .map(|m| m["user_id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

fn member(chat: &Value, user_id: i64) -> &Value {
    chat["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == user_id)
        .unwrap_or_else(|| panic!("{user_id} is not a member: {chat}"))
}

fn sorted(mut ids: Vec<i64>) -> Vec<i64> {
    ids.sort_unstable();
    ids
}

async fn detail(app: &TestApp, user: &TestUser, chat: i64) -> Value {
    let (status, body) = app.get(&format!("/api/v1/chats/{chat}"), &user.token).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn list(app: &TestApp, user: &TestUser, query: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/api/v1/chats{query}"), &user.token).await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

fn ids_of(chats: &[Value]) -> Vec<i64> {
    chats.iter().map(|c| c["id"].as_i64().unwrap()).collect()
}

async fn set_admin(app: &TestApp, actor: &TestUser, chat: i64, target: i64, is_admin: bool) {
    let (status, body) = app
        .put(
            &format!("/api/v1/chats/{chat}/members/{target}"),
            &actor.token,
            json!({ "is_admin": is_admin }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn remove_member(
    app: &TestApp,
    actor: &TestUser,
    chat: i64,
    target: i64,
) -> (reqwest::StatusCode, Value) {
    app.delete(
        &format!("/api/v1/chats/{chat}/members/{target}"),
        &actor.token,
    )
    .await
}

async fn mark_read(app: &TestApp, user: &TestUser, chat: i64, message_id: i64) -> Value {
    let (status, body) = app
        .post(
            &format!("/api/v1/chats/{chat}/read"),
            &user.token,
            json!({ "message_id": message_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

const CHAT_FIELDS: [&str; 9] = [
    "id",
    "name",
    "is_group",
    "creator_id",
    "created_at",
    "updated_at",
    "last_read_message_id",
    "unread_count",
    "member_count",
];

// ---------- POST /chats: groups ----------

#[tokio::test]
async fn creating_a_group_returns_201_and_makes_the_creator_an_admin_member() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;

    let (status, chat) = app
        .post(
            "/api/v1/chats",
            &alice.token,
            json!({ "name": "Team", "is_group": true, "member_ids": [bob.id] }),
        )
        .await;

    assert_eq!(status, 201, "{chat}");
    assert_eq!(chat["name"], "Team");
    assert_eq!(chat["is_group"], true);
    assert_eq!(chat["creator_id"], alice.id);
    assert_eq!(member_ids(&chat), sorted(vec![alice.id, bob.id]));
    assert_eq!(member(&chat, alice.id)["is_admin"], true);
    assert_eq!(member(&chat, bob.id)["is_admin"], false);
    assert_eq!(member(&chat, bob.id)["username"], bob.username.as_str());
    // The creator sees it, and so does the member.
    assert_eq!(
        ids_of(&list(&app, &bob, "").await),
        vec![chat["id"].as_i64().unwrap()]
    );
}

#[tokio::test]
async fn group_name_is_trimmed() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;

    let (status, chat) = app
        .post(
            "/api/v1/chats",
            &alice.token,
            json!({ "name": "  \t Team Rocket \n", "is_group": true, "member_ids": [] }),
        )
        .await;

    assert_eq!(status, 201, "{chat}");
    assert_eq!(chat["name"], "Team Rocket");
}

#[tokio::test]
async fn group_name_must_be_1_to_100_characters() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let cases: Vec<(&str, Value, u16)> = vec![
        ("missing", Value::Null, 400),
        ("empty", json!(""), 400),
        ("whitespace only", json!("   \t "), 400),
        ("one char", json!("x"), 201),
        ("100 ascii", json!("a".repeat(100)), 201),
        ("100 non-ascii", json!("é".repeat(100)), 201),
        ("100 emoji", json!("🦀".repeat(100)), 201),
        (
            "100 after trimming",
            json!(format!("  {}  ", "b".repeat(100))),
            201,
        ),
        ("101 ascii", json!("a".repeat(101)), 400),
        ("101 non-ascii", json!("é".repeat(101)), 400),
        ("wrong type", json!(42), 400),
    ];

    for (label, name, expected) in cases {
        let mut body = json!({ "is_group": true, "member_ids": [] });
        if !name.is_null() {
            body["name"] = name.clone();
        }
        let (status, resp) = app.post("/api/v1/chats", &alice.token, body).await;
        assert_eq!(status, expected, "{label}: {resp}");
        if expected == 400 && !name.is_number() {
            assert_error(status, &resp, 400, "validation_failed");
            assert_eq!(resp["fields"][0]["field"], "name", "{label}: {resp}");
        }
        if expected == 201 {
            assert_eq!(resp["name"], name.as_str().unwrap().trim(), "{label}");
        }
    }
    // Only the five valid names produced chats.
    assert_eq!(list(&app, &alice, "").await.len(), 5);
}

#[tokio::test]
async fn duplicate_member_ids_are_collapsed() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;

    let (status, chat) = app
        .post(
            "/api/v1/chats",
            &alice.token,
            json!({ "name": "g", "is_group": true, "member_ids": [bob.id, carol.id, bob.id, bob.id] }),
        )
        .await;

    assert_eq!(status, 201, "{chat}");
    assert_eq!(member_ids(&chat), sorted(vec![alice.id, bob.id, carol.id]));
}

#[tokio::test]
async fn the_creators_own_id_in_member_ids_is_ignored() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;

    let (status, chat) = app
        .post(
            "/api/v1/chats",
            &alice.token,
            json!({ "name": "g", "is_group": true, "member_ids": [alice.id, bob.id, alice.id] }),
        )
        .await;

    assert_eq!(status, 201, "{chat}");
    assert_eq!(member_ids(&chat), sorted(vec![alice.id, bob.id]));
    assert_eq!(member(&chat, alice.id)["is_admin"], true);
}

#[tokio::test]
async fn unknown_member_ids_are_a_400_that_lists_them_and_create_nothing() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;

    let (status, body) = app
        .post(
            "/api/v1/chats",
            &alice.token,
            json!({ "name": "g", "is_group": true, "member_ids": [bob.id, 987654, 123456789] }),
        )
        .await;

    assert_error(status, &body, 400, "validation_failed");
    let text = body.to_string();
    assert!(text.contains("987654"), "{body}");
    assert!(text.contains("123456789"), "{body}");
    assert!(!text.contains(&format!("{}, ", bob.id)), "{body}");
    assert!(list(&app, &alice, "").await.is_empty());
    assert!(list(&app, &bob, "").await.is_empty());
}

#[tokio::test]
async fn invalid_member_ids_are_rejected() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    for ids in [
        json!([0]),
        json!([-3]),
        json!(["x"]),
        json!(5),
        json!([1.5]),
    ] {
        let (status, body) = app
            .post(
                "/api/v1/chats",
                &alice.token,
                json!({ "name": "g", "is_group": true, "member_ids": ids }),
            )
            .await;
        assert_eq!(status, 400, "{ids}: {body}");
    }
    assert!(list(&app, &alice, "").await.is_empty());
}

// ---------- POST /chats: direct messages ----------

#[tokio::test]
async fn a_direct_message_needs_exactly_one_other_user() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;

    for ids in [json!([]), json!([alice.id]), json!([bob.id, carol.id])] {
        let (status, body) = app
            .post(
                "/api/v1/chats",
                &alice.token,
                json!({ "is_group": false, "member_ids": ids }),
            )
            .await;
        assert_error(status, &body, 400, "validation_failed");
        assert_eq!(body["fields"][0]["field"], "member_ids", "{ids}: {body}");
    }
    assert!(list(&app, &alice, "").await.is_empty());
}

#[tokio::test]
async fn a_direct_message_is_created_with_both_users_and_no_name() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;

    // The caller's own id and duplicates do not count as "other users".
    let (status, chat) = app
        .post(
            "/api/v1/chats",
            &alice.token,
            json!({ "is_group": false, "member_ids": [alice.id, bob.id, bob.id] }),
        )
        .await;

    assert_eq!(status, 201, "{chat}");
    assert_eq!(chat["is_group"], false);
    assert!(chat["name"].is_null(), "{chat}");
    assert_eq!(member_ids(&chat), sorted(vec![alice.id, bob.id]));
}

#[tokio::test]
async fn creating_an_existing_dm_returns_the_same_chat_with_200_in_either_direction() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let dm = json!({ "is_group": false, "member_ids": [bob.id] });

    let (first_status, first) = app.post("/api/v1/chats", &alice.token, dm.clone()).await;
    let (again_status, again) = app.post("/api/v1/chats", &alice.token, dm).await;
    let (reverse_status, reverse) = app
        .post(
            "/api/v1/chats",
            &bob.token,
            json!({ "is_group": false, "member_ids": [alice.id] }),
        )
        .await;

    assert_eq!(first_status, 201, "{first}");
    assert_eq!(again_status, 200, "{again}");
    assert_eq!(reverse_status, 200, "{reverse}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(reverse["id"], first["id"]);
    assert_eq!(member_ids(&reverse), sorted(vec![alice.id, bob.id]));
    assert_eq!(list(&app, &alice, "").await.len(), 1);
    assert_eq!(list(&app, &bob, "").await.len(), 1);
}

#[tokio::test]
async fn a_dm_with_a_third_user_is_a_different_chat() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;

    let ab = app.create_dm(&alice, &bob).await;
    let ac = app.create_dm(&alice, &carol).await;
    let bc = app.create_dm(&bob, &carol).await;

    assert_ne!(ab, ac);
    assert_ne!(ab, bc);
    assert_ne!(ac, bc);
    assert_eq!(list(&app, &alice, "").await.len(), 2);
}

#[tokio::test]
async fn concurrent_dm_creation_yields_one_chat() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let to_bob = json!({ "is_group": false, "member_ids": [bob.id] });
    let to_alice = json!({ "is_group": false, "member_ids": [alice.id] });

    let (r1, r2, r3, r4, r5, r6) = tokio::join!(
        app.post("/api/v1/chats", &alice.token, to_bob.clone()),
        app.post("/api/v1/chats", &bob.token, to_alice.clone()),
        app.post("/api/v1/chats", &alice.token, to_bob.clone()),
        app.post("/api/v1/chats", &bob.token, to_alice.clone()),
        app.post("/api/v1/chats", &alice.token, to_bob),
        app.post("/api/v1/chats", &bob.token, to_alice),
    );

    let results = [r1, r2, r3, r4, r5, r6];
    let created = results.iter().filter(|(s, _)| *s == 201).count();
    let existing = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!((created, existing), (1, 5), "{results:?}");
    let id = &results[0].1["id"];
    assert!(results.iter().all(|(_, b)| &b["id"] == id), "{results:?}");
    assert_eq!(
        app.db_count("select count(*) from chats where id >= $1", 1)
            .await,
        1
    );
    assert_eq!(
        app.db_count(
            "select count(*) from chat_members where chat_id = $1",
            id.as_i64().unwrap()
        )
        .await,
        2
    );
}

#[tokio::test]
async fn recreating_a_dm_the_other_user_left_brings_them_back() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let dm = app.create_dm(&alice, &bob).await;
    let (status, _) = remove_member(&app, &bob, dm, bob.id).await;
    assert_eq!(status, 204);

    let (status, chat) = app
        .post(
            "/api/v1/chats",
            &alice.token,
            json!({ "is_group": false, "member_ids": [bob.id] }),
        )
        .await;

    assert_eq!(status, 200, "{chat}");
    assert_eq!(chat["id"], dm);
    assert_eq!(member_ids(&chat), sorted(vec![alice.id, bob.id]));
    detail(&app, &bob, dm).await;
}

#[tokio::test]
async fn a_member_brought_back_into_a_dm_is_told_their_own_read_marker_not_the_callers() {
    // Arrange: alice has read two of bob's three messages and answered; bob leaves.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let dm = app.create_dm(&alice, &bob).await;
    let mut sent = Vec::new();
    for i in 1..=3 {
        sent.push(app.send_message(&bob, dm, &format!("m{i}")).await["id"].clone());
    }
    mark_read(&app, &alice, dm, sent[1].as_i64().unwrap()).await;
    app.send_message(&alice, dm, "hi").await;
    let (status, _) = remove_member(&app, &bob, dm, bob.id).await;
    assert_eq!(status, 204);
    let (mut ws, _) = crate::helpers::realtime::connected(&app, &bob, None).await;

    // Act: alice re-opens the DM, which brings bob back.
    let (status, body) = app
        .post(
            "/api/v1/chats",
            &alice.token,
            json!({ "is_group": false, "member_ids": [bob.id] }),
        )
        .await;

    // Assert: alice's answer is hers; bob's frame is the chat as he sees it
    // (no marker, alice's message unread).
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["last_read_message_id"], sent[1], "{body}");
    assert_eq!(body["unread_count"], 1, "{body}");
    let mut created = ws.next_of_type("chat_created").await["payload"].clone();
    created.as_object_mut().unwrap().remove("event_id");
    let mut bobs = detail(&app, &bob, dm).await;
    assert!(bobs["last_read_message_id"].is_null(), "{bobs}");
    assert_eq!(bobs["unread_count"], 1, "{bobs}");
    // Members' `online` is each viewer's own: REST has it, events do not.
    for member in bobs["members"].as_array_mut().unwrap() {
        member.as_object_mut().unwrap().remove("online");
    }
    assert_eq!(created, bobs);
}

// ---------- GET /chats ----------

#[tokio::test]
async fn chat_list_contains_only_the_callers_chats() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let shared = app.create_group(&alice, "shared", &[&bob]).await;
    let _alice_only = app.create_group(&alice, "mine", &[]).await;
    let carol_dm = app.create_dm(&carol, &alice).await;
    let _other = app.create_group(&carol, "not bob's", &[]).await;

    let bobs = list(&app, &bob, "").await;

    assert_eq!(ids_of(&bobs), vec![shared]);
    for field in CHAT_FIELDS {
        assert!(bobs[0].get(field).is_some(), "missing {field}: {}", bobs[0]);
    }
    assert_eq!(member_ids(&bobs[0]), sorted(vec![alice.id, bob.id]));
    assert_eq!(bobs[0]["member_count"], 2);
    let without = list(&app, &bob, "?with_members=false").await;
    assert!(without[0].get("members").is_none(), "{}", without[0]);
    assert!(ids_of(&list(&app, &alice, "").await).contains(&carol_dm));
    assert_eq!(list(&app, &alice, "").await.len(), 3);
}

#[tokio::test]
async fn chat_list_is_ordered_by_most_recent_activity() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let first = app.create_group(&alice, "first", &[]).await;
    let second = app.create_group(&alice, "second", &[]).await;
    let third = app.create_group(&alice, "third", &[]).await;
    assert_eq!(
        ids_of(&list(&app, &alice, "").await),
        vec![third, second, first]
    );

    app.send_message(&alice, first, "bump").await;
    assert_eq!(
        ids_of(&list(&app, &alice, "").await),
        vec![first, third, second]
    );

    app.send_message(&alice, second, "bump").await;
    assert_eq!(
        ids_of(&list(&app, &alice, "").await),
        vec![second, first, third]
    );
}

#[tokio::test]
async fn chat_list_with_members_true_includes_members() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let g1 = app.create_group(&alice, "g1", &[&bob]).await;
    let g2 = app.create_group(&alice, "g2", &[&bob, &carol]).await;

    let chats = list(&app, &alice, "?with_members=true").await;

    assert_eq!(ids_of(&chats), vec![g2, g1]);
    assert_eq!(
        member_ids(&chats[0]),
        sorted(vec![alice.id, bob.id, carol.id])
    );
    assert_eq!(member_ids(&chats[1]), sorted(vec![alice.id, bob.id]));
    let m = member(&chats[0], carol.id);
    for field in [
        "user_id",
        "username",
        "display_name",
        "is_admin",
        "joined_at",
    ] {
        assert!(m.get(field).is_some(), "missing {field}: {m}");
    }
    let without = list(&app, &alice, "?with_members=false").await;
    assert!(without.iter().all(|c| c.get("members").is_none()));
}

#[tokio::test]
async fn chat_list_paginates_with_limit_and_offset() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.create_group(&alice, &format!("g{i}"), &[]).await);
    }
    ids.reverse(); // newest first

    assert_eq!(ids_of(&list(&app, &alice, "?limit=2").await), ids[..2]);
    assert_eq!(
        ids_of(&list(&app, &alice, "?limit=2&offset=2").await),
        ids[2..4]
    );
    assert_eq!(
        ids_of(&list(&app, &alice, "?limit=2&offset=4").await),
        ids[4..]
    );
    assert!(list(&app, &alice, "?offset=5").await.is_empty());
    assert_eq!(list(&app, &alice, "?limit=100").await.len(), 5);
}

#[tokio::test]
async fn chat_list_defaults_to_50_chats() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let db = pg::connect(&app.database_url).await;
    db.execute(
        "with c as (
             insert into chats (name, is_group, creator_id)
             select 'g' || g, true, $1 from generate_series(1, 55) g returning id
         )
         insert into chat_members (chat_id, user_id, is_admin) select id, $1, true from c",
        &[&alice.id],
    )
    .await
    .unwrap();

    assert_eq!(list(&app, &alice, "").await.len(), 50);
    assert_eq!(list(&app, &alice, "?limit=100").await.len(), 55);
}

#[tokio::test]
async fn chat_list_rejects_bad_pagination_and_flags() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    for query in [
        "limit=0",
        "limit=101",
        "limit=-1",
        "limit=abc",
        "limit=",
        "limit=99999999999999999999999",
        "offset=-1",
        "offset=x",
        "with_members=maybe",
    ] {
        let (status, body) = app
            .get(&format!("/api/v1/chats?{query}"), &alice.token)
            .await;
        assert_error(status, &body, 400, "validation_failed");
        let field = query.split('=').next().unwrap();
        assert_eq!(body["fields"][0]["field"], field, "{query}: {body}");
    }
}

// ---------- GET /chats/:id ----------

#[tokio::test]
async fn chat_detail_has_every_field_and_the_members() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "Team", &[&bob]).await;

    let body = detail(&app, &bob, chat).await;

    for field in CHAT_FIELDS {
        assert!(body.get(field).is_some(), "missing {field}: {body}");
    }
    assert_eq!(body["id"], chat);
    assert_eq!(body["name"], "Team");
    assert_eq!(body["is_group"], true);
    assert_eq!(body["creator_id"], alice.id);
    assert!(body["last_read_message_id"].is_null());
    assert_eq!(body["unread_count"], 0);
    ts(&body["created_at"]);
    ts(&body["updated_at"]);
    assert_eq!(member_ids(&body), sorted(vec![alice.id, bob.id]));
    let m = member(&body, alice.id);
    assert_eq!(m["username"], alice.username.as_str());
    assert!(m["display_name"].is_null(), "{m}");
    assert_eq!(m["is_admin"], true);
    ts(&m["joined_at"]);
    assert_eq!(m["online"], false, "alice is not connected: {m}");
    let keys: Vec<&String> = m.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 6, "{m}");
}

#[tokio::test]
async fn chat_detail_is_404_for_non_members_and_unknown_chats() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let eve = app.register("eve").await;
    let chat = app.create_group(&alice, "Team", &[]).await;

    let (status, body) = app.get(&format!("/api/v1/chats/{chat}"), &eve.token).await;
    assert_error(status, &body, 404, "not_found");
    let (status, unknown) = app.get("/api/v1/chats/999999", &eve.token).await;
    assert_error(status, &unknown, 404, "not_found");
    // Indistinguishable: an existing chat you cannot see looks like one that does not exist.
    assert_eq!(without_request_id(&body), without_request_id(&unknown));
}

#[tokio::test]
async fn chat_detail_rejects_bad_ids_with_400() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    for id in ["abc", "0", "-1", "1.5", "99999999999999999999"] {
        let (status, body) = app.get(&format!("/api/v1/chats/{id}"), &alice.token).await;
        assert_error(status, &body, 400, "invalid_id");
    }
}

// ---------- PUT /chats/:id ----------

#[tokio::test]
async fn an_admin_renames_a_group() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "Old", &[&bob]).await;
    let before = detail(&app, &alice, chat).await;

    let (status, body) = app
        .put(
            &format!("/api/v1/chats/{chat}"),
            &alice.token,
            json!({ "name": "  New  " }),
        )
        .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "New");
    assert!(body["members"].is_array(), "{body}");
    assert!(
        ts(&body["updated_at"]) > ts(&before["updated_at"]),
        "{body}"
    );
    assert_eq!(body["created_at"], before["created_at"]);
    assert_eq!(detail(&app, &bob, chat).await["name"], "New");
}

#[tokio::test]
async fn a_promoted_admin_may_rename() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "Old", &[&bob]).await;
    set_admin(&app, &alice, chat, bob.id, true).await;

    let (status, body) = app
        .put(
            &format!("/api/v1/chats/{chat}"),
            &bob.token,
            json!({ "name": "Bob's" }),
        )
        .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "Bob's");
}

#[tokio::test]
async fn renaming_is_403_for_a_non_admin_member_and_404_for_a_non_member() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let eve = app.register("eve").await;
    let chat = app.create_group(&alice, "Old", &[&bob]).await;

    let (status, body) = app
        .put(
            &format!("/api/v1/chats/{chat}"),
            &bob.token,
            json!({ "name": "Bob's" }),
        )
        .await;
    assert_error(status, &body, 403, "not_chat_admin");
    let (status, body) = app
        .put(
            &format!("/api/v1/chats/{chat}"),
            &eve.token,
            json!({ "name": "Eve's" }),
        )
        .await;
    assert_error(status, &body, 404, "not_found");

    assert_eq!(detail(&app, &alice, chat).await["name"], "Old");
}

#[tokio::test]
async fn renaming_a_group_validates_the_name() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "Old", &[]).await;
    for body in [
        json!({}),
        json!({ "name": "" }),
        json!({ "name": "   " }),
        json!({ "name": null }),
        json!({ "name": "x".repeat(101) }),
        json!({ "name": 7 }),
    ] {
        let (status, resp) = app
            .put(&format!("/api/v1/chats/{chat}"), &alice.token, body.clone())
            .await;
        assert_eq!(status, 400, "{body}: {resp}");
    }
    let (status, resp) = app
        .put(
            &format!("/api/v1/chats/{chat}"),
            &alice.token,
            json!({ "name": "ü".repeat(100) }),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
}

// ---------- DELETE /chats/:id ----------

#[tokio::test]
async fn the_creator_deletes_a_chat_with_its_messages_and_memberships() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "doomed", &[&bob]).await;
    let kept = app.create_group(&alice, "kept", &[&bob]).await;
    let msg = app.send_message(&bob, chat, "hello").await;
    app.send_message(&bob, kept, "still here").await;

    let (status, body) = app
        .delete(&format!("/api/v1/chats/{chat}"), &alice.token)
        .await;

    assert_eq!(status, 204, "{body}");
    for user in [&alice, &bob] {
        let (status, body) = app.get(&format!("/api/v1/chats/{chat}"), &user.token).await;
        assert_error(status, &body, 404, "not_found");
        assert_eq!(ids_of(&list(&app, user, "").await), vec![kept]);
    }
    let (status, _) = app
        .get(&format!("/api/v1/messages/{}", msg["id"]), &bob.token)
        .await;
    assert_eq!(status, 404);
    let sql_msgs = "select count(*) from messages where chat_id = $1";
    let sql_members = "select count(*) from chat_members where chat_id = $1";
    assert_eq!(app.db_count(sql_msgs, chat).await, 0);
    assert_eq!(app.db_count(sql_members, chat).await, 0);
    assert_eq!(app.db_count(sql_msgs, kept).await, 1);
    assert_eq!(app.db_count(sql_members, kept).await, 2);
}

#[tokio::test]
async fn deleting_a_chat_is_403_for_other_admins_and_members_and_404_for_outsiders() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let admin = app.register("admin").await;
    let bob = app.register("bob").await;
    let eve = app.register("eve").await;
    let chat = app.create_group(&alice, "g", &[&admin, &bob]).await;
    set_admin(&app, &alice, chat, admin.id, true).await;

    let (status, body) = app
        .delete(&format!("/api/v1/chats/{chat}"), &admin.token)
        .await;
    assert_error(status, &body, 403, "not_chat_creator");
    let (status, body) = app
        .delete(&format!("/api/v1/chats/{chat}"), &bob.token)
        .await;
    assert_error(status, &body, 403, "not_chat_creator");
    let (status, body) = app
        .delete(&format!("/api/v1/chats/{chat}"), &eve.token)
        .await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = app.delete("/api/v1/chats/987654", &alice.token).await;
    assert_error(status, &body, 404, "not_found");

    assert_eq!(member_ids(&detail(&app, &alice, chat).await).len(), 3);
}

#[tokio::test]
async fn once_the_creators_account_is_gone_any_remaining_admin_may_delete() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let admin = app.register("admin").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&admin, &bob]).await;
    set_admin(&app, &alice, chat, admin.id, true).await;
    let (status, body) = app.delete_account(&alice).await;
    assert_eq!(status, 204, "{body}");
    let after = detail(&app, &bob, chat).await;
    assert!(after["creator_id"].is_null(), "{after}");

    let (status, body) = app
        .delete(&format!("/api/v1/chats/{chat}"), &bob.token)
        .await;
    assert_error(status, &body, 403, "not_chat_creator");
    let (status, body) = app
        .delete(&format!("/api/v1/chats/{chat}"), &admin.token)
        .await;
    assert_eq!(status, 204, "{body}");

    let (status, _) = app.get(&format!("/api/v1/chats/{chat}"), &bob.token).await;
    assert_eq!(status, 404);
}

// ---------- POST /chats/:id/members ----------

#[tokio::test]
async fn an_admin_adds_members_and_gets_the_chat_detail() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let dave = app.register("dave").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;

    // Duplicates, the caller and an existing member are all fine.
    let body = app
        .add_members(
            &alice,
            chat,
            &[carol.id, dave.id, carol.id, alice.id, bob.id],
        )
        .await;

    assert_eq!(body["id"], chat);
    assert_eq!(
        member_ids(&body),
        sorted(vec![alice.id, bob.id, carol.id, dave.id])
    );
    assert_eq!(member(&body, carol.id)["is_admin"], false);
    assert_eq!(member(&body, alice.id)["is_admin"], true);
    assert_eq!(ids_of(&list(&app, &carol, "").await), vec![chat]);
}

#[tokio::test]
async fn adding_members_is_403_for_non_admins_and_404_for_outsiders() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let eve = app.register("eve").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let path = format!("/api/v1/chats/{chat}/members");

    let (status, body) = app
        .post(&path, &bob.token, json!({ "member_ids": [carol.id] }))
        .await;
    assert_error(status, &body, 403, "not_chat_admin");
    let (status, body) = app
        .post(&path, &eve.token, json!({ "member_ids": [carol.id] }))
        .await;
    assert_error(status, &body, 404, "not_found");

    assert_eq!(
        member_ids(&detail(&app, &alice, chat).await),
        sorted(vec![alice.id, bob.id])
    );
}

#[tokio::test]
async fn members_cannot_be_added_to_a_direct_message() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let dm = app.create_dm(&alice, &bob).await;

    let (status, body) = app
        .post(
            &format!("/api/v1/chats/{dm}/members"),
            &alice.token,
            json!({ "member_ids": [carol.id] }),
        )
        .await;

    assert_error(status, &body, 400, "not_a_group");
    assert_eq!(
        member_ids(&detail(&app, &alice, dm).await),
        sorted(vec![alice.id, bob.id])
    );
}

#[tokio::test]
async fn adding_unknown_or_no_users_is_a_400() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let carol = app.register("carol").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    let path = format!("/api/v1/chats/{chat}/members");

    let (status, body) = app
        .post(
            &path,
            &alice.token,
            json!({ "member_ids": [carol.id, 555555] }),
        )
        .await;
    assert_error(status, &body, 400, "validation_failed");
    assert!(body.to_string().contains("555555"), "{body}");
    // All or nothing: carol was not added either.
    assert_eq!(
        member_ids(&detail(&app, &alice, chat).await),
        vec![alice.id]
    );

    for bad in [
        json!({ "member_ids": [] }),
        json!({}),
        json!({ "member_ids": [alice.id] }),
        json!({ "member_ids": [0] }),
    ] {
        let (status, body) = app.post(&path, &alice.token, bad.clone()).await;
        assert_error(status, &body, 400, "validation_failed");
    }
}

// ---------- DELETE /chats/:id/members/:memberId ----------

#[tokio::test]
async fn an_admin_removes_a_member() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let chat = app.create_group(&alice, "g", &[&bob, &carol]).await;

    let (status, body) = remove_member(&app, &alice, chat, bob.id).await;

    assert_eq!(status, 204, "{body}");
    assert_eq!(
        member_ids(&detail(&app, &alice, chat).await),
        sorted(vec![alice.id, carol.id])
    );
    let (status, _) = app.get(&format!("/api/v1/chats/{chat}"), &bob.token).await;
    assert_eq!(status, 404);
    assert!(list(&app, &bob, "").await.is_empty());
}

#[tokio::test]
async fn an_admin_may_remove_another_admin() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    set_admin(&app, &alice, chat, bob.id, true).await;

    let (status, body) = remove_member(&app, &bob, chat, alice.id).await;

    assert_eq!(status, 204, "{body}");
    let after = detail(&app, &bob, chat).await;
    assert_eq!(member_ids(&after), vec![bob.id]);
}

#[tokio::test]
async fn a_non_admin_cannot_remove_someone_else() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let chat = app.create_group(&alice, "g", &[&bob, &carol]).await;

    for target in [carol.id, alice.id] {
        let (status, body) = remove_member(&app, &bob, chat, target).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["code"], "not_chat_admin");
    }
    assert_eq!(member_ids(&detail(&app, &alice, chat).await).len(), 3);
}

#[tokio::test]
async fn any_member_may_leave() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let msg = app.send_message(&bob, chat, "bye").await;

    let (status, body) = remove_member(&app, &bob, chat, bob.id).await;

    assert_eq!(status, 204, "{body}");
    assert_eq!(
        member_ids(&detail(&app, &alice, chat).await),
        vec![alice.id]
    );
    // Their messages stay in the chat.
    let (status, kept) = app
        .get(&format!("/api/v1/messages/{}", msg["id"]), &alice.token)
        .await;
    assert_eq!(status, 200, "{kept}");
    // Leaving twice: no longer a member, so the chat is invisible.
    let (status, _) = remove_member(&app, &bob, chat, bob.id).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn removing_a_non_member_is_404() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let eve = app.register("eve").await;
    let chat = app.create_group(&alice, "g", &[]).await;

    let (status, body) = remove_member(&app, &alice, chat, eve.id).await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = remove_member(&app, &alice, chat, 999_999).await;
    assert_error(status, &body, 404, "not_found");
    // And an outsider cannot remove anyone from a chat they do not see.
    let (status, body) = remove_member(&app, &eve, chat, alice.id).await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = remove_member(&app, &alice, chat, 0).await;
    assert_error(status, &body, 400, "invalid_id");
}

#[tokio::test]
async fn when_the_last_admin_leaves_the_longest_standing_member_becomes_admin() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    // Registered first, so carol has the lower id but joins later than dave.
    let carol = app.register("carol").await;
    let dave = app.register("dave").await;
    let chat = app.create_group(&alice, "g", &[&dave]).await;
    app.add_members(&alice, chat, &[carol.id]).await;

    let (status, body) = remove_member(&app, &alice, chat, alice.id).await;

    assert_eq!(status, 204, "{body}");
    let after = detail(&app, &dave, chat).await;
    assert_eq!(member_ids(&after), sorted(vec![carol.id, dave.id]));
    assert_eq!(member(&after, dave.id)["is_admin"], true, "{after}");
    assert_eq!(member(&after, carol.id)["is_admin"], false, "{after}");
    // The new admin can act as one.
    let (status, body) = app
        .put(
            &format!("/api/v1/chats/{chat}"),
            &dave.token,
            json!({ "name": "dave's" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn no_one_is_promoted_when_another_admin_remains() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    app.add_members(&alice, chat, &[carol.id]).await;
    set_admin(&app, &alice, chat, carol.id, true).await;

    let (status, _) = remove_member(&app, &alice, chat, alice.id).await;

    assert_eq!(status, 204);
    let after = detail(&app, &bob, chat).await;
    assert_eq!(member(&after, bob.id)["is_admin"], false, "{after}");
    assert_eq!(member(&after, carol.id)["is_admin"], true, "{after}");
}

#[tokio::test]
async fn a_chat_whose_last_member_leaves_is_deleted() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    app.send_message(&bob, chat, "anyone?").await;

    assert_eq!(remove_member(&app, &alice, chat, alice.id).await.0, 204);
    assert_eq!(remove_member(&app, &bob, chat, bob.id).await.0, 204);

    for user in [&alice, &bob] {
        let (status, body) = app.get(&format!("/api/v1/chats/{chat}"), &user.token).await;
        assert_error(status, &body, 404, "not_found");
    }
    assert_eq!(
        app.db_count("select count(*) from chats where id = $1", chat)
            .await,
        0
    );
    assert_eq!(
        app.db_count("select count(*) from messages where chat_id = $1", chat)
            .await,
        0
    );
}

// ---------- PUT /chats/:id/members/:memberId ----------

#[tokio::test]
async fn an_admin_promotes_and_demotes_a_member() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let path = format!("/api/v1/chats/{chat}/members/{}", bob.id);

    let (status, body) = app
        .put(&path, &alice.token, json!({ "is_admin": true }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(member(&body, bob.id)["is_admin"], true, "{body}");
    assert_eq!(
        member(&detail(&app, &bob, chat).await, bob.id)["is_admin"],
        true
    );

    // Idempotent: promoting again changes nothing.
    let (status, body) = app
        .put(&path, &alice.token, json!({ "is_admin": true }))
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = app
        .put(&path, &alice.token, json!({ "is_admin": false }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(member(&body, bob.id)["is_admin"], false, "{body}");
    let (status, body) = app
        .put(
            &format!("/api/v1/chats/{chat}"),
            &bob.token,
            json!({ "name": "x" }),
        )
        .await;
    assert_error(status, &body, 403, "not_chat_admin");
}

#[tokio::test]
async fn an_admin_may_step_down_while_another_admin_remains() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    set_admin(&app, &alice, chat, bob.id, true).await;

    let (status, body) = app
        .put(
            &format!("/api/v1/chats/{chat}/members/{}", alice.id),
            &alice.token,
            json!({ "is_admin": false }),
        )
        .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(member(&body, alice.id)["is_admin"], false);
    assert_eq!(member(&body, bob.id)["is_admin"], true);
}

#[tokio::test]
async fn demoting_the_last_admin_is_409() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;

    let (status, body) = app
        .put(
            &format!("/api/v1/chats/{chat}/members/{}", alice.id),
            &alice.token,
            json!({ "is_admin": false }),
        )
        .await;

    assert_error(status, &body, 409, "last_admin");
    assert_eq!(
        member(&detail(&app, &alice, chat).await, alice.id)["is_admin"],
        true
    );
}

#[tokio::test]
async fn changing_admin_rights_is_403_for_non_admins_and_404_for_outsiders() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let eve = app.register("eve").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;

    // A member may not promote themselves...
    let (status, body) = app
        .put(
            &format!("/api/v1/chats/{chat}/members/{}", bob.id),
            &bob.token,
            json!({ "is_admin": true }),
        )
        .await;
    assert_error(status, &body, 403, "not_chat_admin");
    // ...nor demote an admin.
    let (status, body) = app
        .put(
            &format!("/api/v1/chats/{chat}/members/{}", alice.id),
            &bob.token,
            json!({ "is_admin": false }),
        )
        .await;
    assert_error(status, &body, 403, "not_chat_admin");
    let (status, body) = app
        .put(
            &format!("/api/v1/chats/{chat}/members/{}", bob.id),
            &eve.token,
            json!({ "is_admin": true }),
        )
        .await;
    assert_error(status, &body, 404, "not_found");
    // Target not a member.
    let (status, body) = app
        .put(
            &format!("/api/v1/chats/{chat}/members/{}", eve.id),
            &alice.token,
            json!({ "is_admin": true }),
        )
        .await;
    assert_error(status, &body, 404, "not_found");

    let after = detail(&app, &alice, chat).await;
    assert_eq!(member(&after, bob.id)["is_admin"], false);
    assert_eq!(member_ids(&after), sorted(vec![alice.id, bob.id]));
}

#[tokio::test]
async fn changing_admin_rights_requires_a_boolean_is_admin() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let path = format!("/api/v1/chats/{chat}/members/{}", bob.id);

    let (status, body) = app.put(&path, &alice.token, json!({})).await;
    assert_error(status, &body, 400, "validation_failed");
    assert_eq!(body["fields"][0]["field"], "is_admin");
    for bad in [json!({ "is_admin": "yes" }), json!({ "is_admin": 1 })] {
        let (status, body) = app.put(&path, &alice.token, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(
        member(&detail(&app, &alice, chat).await, bob.id)["is_admin"],
        false
    );
}

// ---------- POST /chats/:id/read ----------

#[tokio::test]
async fn read_markers_drive_unread_counts_and_move_forward_only() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let m1 = app.send_message(&alice, chat, "1").await["id"]
        .as_i64()
        .unwrap();
    let m2 = app.send_message(&alice, chat, "2").await["id"]
        .as_i64()
        .unwrap();
    let m3 = app.send_message(&alice, chat, "3").await["id"]
        .as_i64()
        .unwrap();
    // Bob's own message never counts as unread for him.
    app.send_message(&bob, chat, "mine").await;

    let bobs = detail(&app, &bob, chat).await;
    assert_eq!(bobs["unread_count"], 3);
    assert!(bobs["last_read_message_id"].is_null());
    // Alice only sees bob's message as unread.
    assert_eq!(detail(&app, &alice, chat).await["unread_count"], 1);

    let marker = mark_read(&app, &bob, chat, m2).await;
    assert_eq!(marker["chat_id"], chat);
    assert_eq!(marker["last_read_message_id"], m2);
    assert_eq!(marker["unread_count"], 1);
    let listed = list(&app, &bob, "").await;
    assert_eq!(listed[0]["last_read_message_id"], m2);
    assert_eq!(listed[0]["unread_count"], 1);
    let d = detail(&app, &bob, chat).await;
    assert_eq!(d["last_read_message_id"], m2);
    assert_eq!(d["unread_count"], 1);

    // A lower id does not move it back.
    let marker = mark_read(&app, &bob, chat, m1).await;
    assert_eq!(marker["last_read_message_id"], m2);
    assert_eq!(detail(&app, &bob, chat).await["last_read_message_id"], m2);

    let marker = mark_read(&app, &bob, chat, m3).await;
    assert_eq!(marker["last_read_message_id"], m3);
    assert_eq!(marker["unread_count"], 0);
    assert_eq!(list(&app, &bob, "").await[0]["unread_count"], 0);
    // Markers are per member.
    assert!(detail(&app, &alice, chat).await["last_read_message_id"].is_null());
}

#[tokio::test]
async fn concurrent_read_markers_each_answer_the_marker_as_it_is_after_them() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    for round in 0..40 {
        // Arrange: a fresh membership and two messages, m1 < m2.
        let chat = app.create_group(&alice, "g", &[&bob]).await;
        let m1 = app.send_message(&alice, chat, "1").await["id"].clone();
        let m2 = app.send_message(&alice, chat, "2").await["id"].clone();
        let path = format!("/api/v1/chats/{chat}/read");

        // Act
        let ((s1, first), (s2, second)) = tokio::join!(
            app.post(&path, &bob.token, json!({ "message_id": m1 })),
            app.post(&path, &bob.token, json!({ "message_id": m2 })),
        );

        // Assert: never older than what the request itself set, and the
        // count is that of the marker answered.
        assert_eq!((s1.as_u16(), s2.as_u16()), (200, 200), "{first} {second}");
        let unread_after = |marker: &Value| if *marker == m2 { 0 } else { 1 };
        assert!(
            first["last_read_message_id"] == m1 || first["last_read_message_id"] == m2,
            "round {round}: {first}"
        );
        assert_eq!(
            second["last_read_message_id"], m2,
            "round {round}: {second}"
        );
        for answer in [&first, &second] {
            assert_eq!(
                answer["unread_count"],
                unread_after(&answer["last_read_message_id"]),
                "round {round}: {answer}"
            );
        }
        assert_eq!(detail(&app, &bob, chat).await["last_read_message_id"], m2);
    }
}

#[tokio::test]
async fn marking_read_is_404_for_another_chats_message_and_for_non_members() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let eve = app.register("eve").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    let other = app.create_group(&alice, "other", &[]).await;
    let here = app.send_message(&alice, chat, "here").await["id"]
        .as_i64()
        .unwrap();
    let there = app.send_message(&alice, other, "there").await["id"]
        .as_i64()
        .unwrap();
    let path = format!("/api/v1/chats/{chat}/read");

    let (status, body) = app
        .post(&path, &alice.token, json!({ "message_id": there }))
        .await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = app
        .post(&path, &alice.token, json!({ "message_id": 999_999 }))
        .await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = app
        .post(&path, &eve.token, json!({ "message_id": here }))
        .await;
    assert_error(status, &body, 404, "not_found");
    assert!(detail(&app, &alice, chat).await["last_read_message_id"].is_null());

    for bad in [json!({}), json!({ "message_id": "x" })] {
        let (status, body) = app.post(&path, &alice.token, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}
