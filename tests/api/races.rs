//! Requests racing a deletion (an account's, a chat's) end as they would
//! have a moment earlier or later: success, or the clear 4xx of the thing
//! being gone, never a 500 (a foreign key violated, a deadlock), and the
//! database stays consistent. Each race runs for many rounds, one side
//! started a little later each round, so that the other's statements fall
//! before, inside and after the deletion's transaction.

use crate::helpers::*;
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::future::Future;
use std::time::{Duration, Instant};

const ROUNDS: usize = 40;

type Answer = (StatusCode, Value);

/// A pause growing with the round by 300 µs, starting over every sixteen
/// rounds. Spun (yielding), as the timer counts whole milliseconds.
async fn stagger(round: usize) {
    let until = Instant::now() + Duration::from_micros(300 * (round % 16) as u64);
    while Instant::now() < until {
        tokio::task::yield_now().await;
    }
}

/// Fails unless every answer's status is one of `allowed`, listing the others.
#[track_caller]
fn assert_statuses(what: &str, answers: &[Answer], allowed: &[u16]) {
    let wrong: Vec<String> = answers
        .iter()
        .filter(|(status, _)| !allowed.contains(&status.as_u16()))
        .map(|(status, body)| format!("{status} {body}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} answers outside {allowed:?}: {wrong:#?}",
        wrong.len(),
        answers.len()
    );
}

/// The answers of every round: the deletion's and the racing requests'.
#[derive(Default)]
struct Rounds {
    deletions: Vec<Answer>,
    answers: Vec<Answer>,
}

impl Rounds {
    /// Runs `deletion` and `request`, this one started `stagger(round)` later.
    async fn race(
        &mut self,
        round: usize,
        deletion: impl Future<Output = Answer>,
        request: impl Future<Output = Answer>,
    ) {
        self.race_all(round, deletion, [request]).await;
    }

    /// Runs `deletion` and `requests`, these together `stagger(round)` later.
    async fn race_all<F: Future<Output = Answer>>(
        &mut self,
        round: usize,
        deletion: impl Future<Output = Answer>,
        requests: impl IntoIterator<Item = F>,
    ) {
        let (deleted, answers) = tokio::join!(deletion, async {
            stagger(round).await;
            join_all(requests).await
        });
        self.deletions.push(deleted);
        self.answers.extend(answers);
    }
}

/// The fixtures of every round, `arrange(round)` each, made concurrently:
/// only the races need to run one at a time.
async fn arrange<T, F: Future<Output = T>>(arrange: impl FnMut(usize) -> F) -> Vec<T> {
    join_all((0..ROUNDS).map(arrange)).await
}

/// A user in `chats` groups of someone else's: deleting the account then
/// leaves each, which keeps its transaction open for a while.
async fn member_of_groups(app: &TestApp, prefix: &str, chats: usize) -> TestUser {
    let user = app.register(prefix).await;
    let owner = app.register("owner").await;
    for i in 0..chats {
        app.create_group(&owner, &format!("g{i}"), &[&user]).await;
    }
    user
}

/// `select count(*) ...` against the test database.
async fn count(app: &TestApp, sql: &str) -> i64 {
    let db = pg::connect(&app.database_url).await;
    db.query_one(sql, &[]).await.unwrap().get(0)
}

/// How many of `users` still have an account.
async fn accounts_left(app: &TestApp, users: &[TestUser]) -> i64 {
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let sql = format!("select count(*) from users where id = any(array{ids:?}::bigint[])");
    count(app, &sql).await
}

/// Every chat has an admin, and the event log has no holes (a statement
/// failing halfway through a send or a change would leave one).
async fn assert_consistent(app: &TestApp) {
    let db = pg::connect(&app.database_url).await;
    let broken: Vec<(i64, i64)> = db
        .query(
            "select c.id, count(m.user_id) from chats c left join chat_members m on m.chat_id = c.id
             group by c.id having count(m.user_id) filter (where m.is_admin) = 0",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        broken.is_empty(),
        "chats without an admin (chat, members): {broken:?}"
    );
    let row = db
        .query_one(
            "select last_id, (select count(*) from events), (select coalesce(max(id), 0) from events)
             from event_seq",
            &[],
        )
        .await
        .unwrap();
    let (last_id, events, max_id): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (events, max_id),
        (last_id, last_id),
        "(events, max id) vs last_id"
    );
}

/// Asserts every deletion answered 204 and every request `ok` or 404
/// `not_found`: what it names is gone.
#[track_caller]
fn assert_ok_or_gone(what: &str, rounds: &Rounds, ok: u16) {
    assert_statuses("deletion", &rounds.deletions, &[204]);
    assert_statuses(what, &rounds.answers, &[ok, 404]);
    for (status, body) in &rounds.answers {
        if *status == 404 {
            assert_error(*status, body, 404, "not_found");
        }
    }
}

/// Asserts each answer is `ok` or the 400 a user id naming nobody gets,
/// naming the user who deleted their account that round.
#[track_caller]
fn assert_ok_or_unknown(what: &str, rounds: &Rounds, named: &[i64], ok: u16) {
    assert_statuses("delete account", &rounds.deletions, &[204]);
    assert_statuses(what, &rounds.answers, &[ok, 400]);
    for ((status, body), id) in rounds.answers.iter().zip(named) {
        if *status == 400 {
            assert_eq!(body["code"], "validation_failed", "{body}");
            let message = format!("unknown user ids: {id}");
            assert_eq!(
                body["fields"],
                json!([{"field": "member_ids", "message": message}]),
                "{body}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_a_user_who_is_deleting_their_account_answers_204_or_404() {
    // Arrange
    let app = &spawn_app().await;
    let fixtures = arrange(|_| async move {
        let blocker = app.register("blocker").await;
        let leaving = member_of_groups(app, "leaving", 3).await;
        (blocker, leaving)
    })
    .await;
    let mut rounds = Rounds::default();

    // Act
    for (round, (blocker, leaving)) in fixtures.iter().enumerate() {
        let path = format!("/api/v1/users/{}/block", leaving.id);
        let blocked = app.put(&path, &blocker.token, json!({}));
        rounds
            .race(round, app.delete_account(leaving), blocked)
            .await;
    }

    // Assert: blocked before the deletion (which then removed the block),
    // or told the user is gone.
    assert_ok_or_gone("block", &rounds, 204);
    assert_eq!(count(app, "select count(*) from blocks").await, 0);
    assert_consistent(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_someone_while_deleting_ones_account_answers_204_or_401() {
    // Arrange
    let app = &spawn_app().await;
    let fixtures = arrange(|_| async move {
        let leaving = member_of_groups(app, "leaving", 3).await;
        let other = app.register("other").await;
        (leaving, other)
    })
    .await;
    let mut rounds = Rounds::default();

    // Act
    for (round, (leaving, other)) in fixtures.iter().enumerate() {
        let path = format!("/api/v1/users/{}/block", other.id);
        let blocking = app.put(&path, &leaving.token, json!({}));
        rounds
            .race(round, app.delete_account(leaving), blocking)
            .await;
    }

    // Assert: the token of an account that is gone is refused, as it is
    // on any later request.
    assert_statuses("delete account", &rounds.deletions, &[204]);
    assert_statuses("block", &rounds.answers, &[204, 401]);
    assert_eq!(count(app, "select count(*) from blocks").await, 0);
    assert_consistent(app).await;
}

/// Each round `creator` creates the chat `body(leaving's id)` describes
/// while `leaving` deletes their account: created, or refused naming them.
async fn race_chat_creation(app: &TestApp, what: &str, body: impl Fn(i64) -> Value) {
    // Arrange
    let fixtures = arrange(|_| async move {
        let creator = app.register("creator").await;
        let leaving = member_of_groups(app, "leaving", 3).await;
        (creator, leaving)
    })
    .await;
    let mut rounds = Rounds::default();

    // Act
    for (round, (creator, leaving)) in fixtures.iter().enumerate() {
        let created = app.post("/api/v1/chats", &creator.token, body(leaving.id));
        rounds
            .race(round, app.delete_account(leaving), created)
            .await;
    }

    // Assert
    let named: Vec<i64> = fixtures.iter().map(|(_, leaving)| leaving.id).collect();
    assert_ok_or_unknown(what, &rounds, &named, 201);
    assert_consistent(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_naming_a_user_who_is_deleting_their_account_is_created_or_refused_naming_them() {
    let app = &spawn_app().await;
    let friend = app.register("friend").await.id;
    race_chat_creation(
        app,
        "create group",
        |leaving| json!({"name": "g", "is_group": true, "member_ids": [friend, leaving]}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_with_a_user_who_is_deleting_their_account_is_created_or_refused_naming_them() {
    let app = &spawn_app().await;
    race_chat_creation(
        app,
        "create dm",
        |leaving| json!({"is_group": false, "member_ids": [leaving]}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_group_while_deleting_ones_account_answers_201_or_401() {
    // Arrange
    let app = &spawn_app().await;
    let friend = &app.register("friend").await;
    let fixtures = arrange(|_| member_of_groups(app, "leaving", 3)).await;
    let mut rounds = Rounds::default();

    // Act
    for (round, leaving) in fixtures.iter().enumerate() {
        let body = json!({"name": "g", "is_group": true, "member_ids": [friend.id]});
        let created = app.post("/api/v1/chats", &leaving.token, body);
        rounds
            .race(round, app.delete_account(leaving), created)
            .await;
    }

    // Assert: created (then left by the deletion, friend its admin), or
    // the token of an account that is gone is refused.
    assert_statuses("delete account", &rounds.deletions, &[204]);
    assert_statuses("create group", &rounds.answers, &[201, 401]);
    let created = rounds.answers.iter().filter(|(s, _)| *s == 201).count() as i64;
    let sql = format!(
        "select count(*) from chat_members where user_id = {}",
        friend.id
    );
    assert_eq!(count(app, &sql).await, created);
    assert_consistent(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_user_who_is_deleting_their_account_adds_them_or_is_refused_naming_them() {
    // Arrange: each group was created by the user about to leave, who left
    // it: deleting the account then also clears the group's creator.
    let app = &spawn_app().await;
    let fixtures = arrange(|_| async move {
        let admin = app.register("admin").await;
        let leaving = member_of_groups(app, "leaving", 3).await;
        let chat = app.create_group(&leaving, "theirs", &[&admin]).await;
        let member = format!("/api/v1/chats/{chat}/members/{}", leaving.id);
        let (status, body) = app.delete(&member, &leaving.token).await;
        assert_eq!(status, 204, "{body}");
        (admin, leaving, chat)
    })
    .await;
    let mut rounds = Rounds::default();

    // Act
    for (round, (admin, leaving, chat)) in fixtures.iter().enumerate() {
        let path = format!("/api/v1/chats/{chat}/members");
        let added = app.post(&path, &admin.token, json!({"member_ids": [leaving.id]}));
        rounds.race(round, app.delete_account(leaving), added).await;
    }

    // Assert
    let named: Vec<i64> = fixtures.iter().map(|(_, leaving, _)| leaving.id).collect();
    assert_ok_or_unknown("add members", &rounds, &named, 200);
    assert_consistent(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_a_dm_while_it_is_being_deleted_returns_it_or_a_new_one() {
    // Arrange
    let app = &spawn_app().await;
    let fixtures = arrange(|_| async move {
        let alice = app.register("alice").await;
        let bob = app.register("bob").await;
        let dm = app.create_dm(&alice, &bob).await;
        (alice, bob, dm)
    })
    .await;
    let mut rounds = Rounds::default();

    // Act: alice, its creator, deletes it while bob opens it again.
    for (round, (alice, bob, dm)) in fixtures.iter().enumerate() {
        let path = format!("/api/v1/chats/{dm}");
        let deleted = app.delete(&path, &alice.token);
        let body = json!({"is_group": false, "member_ids": [alice.id]});
        let opened = app.post("/api/v1/chats", &bob.token, body);
        rounds.race(round, deleted, opened).await;
    }

    // Assert: the DM as it was (then deleted), or a new one with both in it.
    assert_statuses("delete chat", &rounds.deletions, &[204]);
    assert_statuses("open dm", &rounds.answers, &[200, 201]);
    for ((status, body), (alice, bob, _)) in rounds.answers.iter().zip(&fixtures) {
        let key = format!("{}:{}", alice.id.min(bob.id), alice.id.max(bob.id));
        let sql = format!("select count(*) from chats where dm_key = '{key}'");
        let expected = if *status == 201 { 1 } else { 0 };
        assert_eq!(count(app, &sql).await, expected, "{status} {body}");
        if *status == 201 {
            assert_eq!(body["member_count"], 2, "{body}");
        }
    }
    assert_consistent(app).await;
}

/// A group of `owner`'s with two other members, who send to it.
async fn group_of_three(app: &TestApp) -> (TestUser, [TestUser; 2], i64) {
    let owner = app.register("owner").await;
    let senders = [app.register("sender").await, app.register("sender").await];
    let chat = app
        .create_group(&owner, "g", &[&senders[0], &senders[1]])
        .await;
    (owner, senders, chat)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_to_a_chat_being_deleted_answers_201_or_404() {
    // Arrange
    let app = &spawn_app().await;
    let fixtures = arrange(|_| group_of_three(app)).await;
    let mut rounds = Rounds::default();

    // Act: the owner deletes the group while both others send to it (one
    // statement each, or one for both when they queue together).
    for (round, (owner, senders, chat)) in fixtures.iter().enumerate() {
        let path = format!("/api/v1/chats/{chat}");
        let sends = senders.iter().map(|sender| {
            let body = json!({"chat_id": chat, "content": "hello"});
            app.post("/api/v1/messages", &sender.token, body)
        });
        rounds
            .race_all(round, app.delete(&path, &owner.token), sends)
            .await;
    }

    // Assert: sent before the deletion (which then removed the message), or
    // told the chat is gone.
    assert_ok_or_gone("send", &rounds, 201);
    assert_eq!(count(app, "select count(*) from chats").await, 0);
    assert_eq!(count(app, "select count(*) from messages").await, 0);
    assert_consistent(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_while_deleting_ones_account_answers_201_or_401_or_404() {
    // Arrange
    let app = &spawn_app().await;
    let fixtures = arrange(|_| async move {
        let (owner, [leaving, _], chat) = group_of_three(app).await;
        // More chats to leave keep the deletion's transaction open longer.
        for i in 0..2 {
            app.create_group(&owner, &format!("g{i}"), &[&leaving])
                .await;
        }
        (leaving, chat)
    })
    .await;
    let mut rounds = Rounds::default();

    // Act
    for (round, (leaving, chat)) in fixtures.iter().enumerate() {
        let body = json!({"chat_id": chat, "content": "goodbye"});
        let sent = app.post("/api/v1/messages", &leaving.token, body);
        rounds.race(round, app.delete_account(leaving), sent).await;
    }

    // Assert: sent before the deletion (the message stays, its sender
    // gone), or refused as from an account that is gone (401 once the
    // token is checked after it, 404 when the send itself came after).
    assert_statuses("delete account", &rounds.deletions, &[204]);
    assert_statuses("send", &rounds.answers, &[201, 401, 404]);
    let sent = rounds.answers.iter().filter(|(s, _)| *s == 201).count() as i64;
    let sql = "select count(*) from messages where sender_id is null and content = 'goodbye'";
    assert_eq!(count(app, sql).await, sent);
    assert_consistent(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_ones_password_while_deleting_ones_account_answers_200_or_401() {
    // Arrange
    let app = &spawn_app().await;
    let fixtures = arrange(|_| member_of_groups(app, "leaving", 3)).await;
    let mut rounds = Rounds::default();

    // Act
    for (round, leaving) in fixtures.iter().enumerate() {
        let path = format!("/api/v1/users/{}", leaving.id);
        let body = json!({"password": "a new battery staple", "current_password": PASSWORD});
        let changed = app.put(&path, &leaving.token, body);
        rounds
            .race(round, app.delete_account(leaving), changed)
            .await;
    }

    // Assert: the change came first, or the deletion did and the token of
    // an account that is gone is refused. A change first revokes the token
    // the deletion then presents, or the password it confirms with: the
    // account stays exactly when the deletion was refused.
    assert_statuses("delete account", &rounds.deletions, &[204, 401]);
    assert_statuses("change password", &rounds.answers, &[200, 401]);
    let kept = rounds.deletions.iter().filter(|(s, _)| *s == 401).count() as i64;
    for ((deleted, _), (changed, body)) in rounds.deletions.iter().zip(&rounds.answers) {
        if *deleted == 401 {
            assert_eq!(*changed, 200, "{body}");
        }
    }
    assert_eq!(accounts_left(app, &fixtures).await, kept);
    assert_consistent(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_oneself_while_deleting_ones_account_answers_200_or_401() {
    // Arrange
    let app = &spawn_app().await;
    let fixtures = arrange(|_| member_of_groups(app, "leaving", 3)).await;
    let mut rounds = Rounds::default();

    // Act
    for (round, leaving) in fixtures.iter().enumerate() {
        let path = format!("/api/v1/users/{}", leaving.id);
        let renamed = app.put(&path, &leaving.token, json!({"display_name": "Gone"}));
        rounds
            .race(round, app.delete_account(leaving), renamed)
            .await;
    }

    // Assert
    assert_statuses("delete account", &rounds.deletions, &[204]);
    assert_statuses("rename", &rounds.answers, &[200, 401]);
    assert_eq!(accounts_left(app, &fixtures).await, 0);
    assert_consistent(app).await;
}
