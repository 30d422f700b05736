//! Replay costs what the user missed, not the size of the log: a user of one
//! quiet chat resuming from an old `since` reads their own events, and a
//! replay past the budget is answered `recovered: false` instead.

use crate::helpers::realtime::connected;
use crate::helpers::*;
use std::time::Duration;

/// A database whose log already holds `n` events of chats nobody here is in.
async fn database_with_foreign_events(n: i64) -> String {
    let url = pg::fresh_database().await;
    let db = pg::connect(&url).await;
    db.execute(
        "insert into events (id, chat_id, kind, payload)
         select g, 1000000 + g % 100, 'system',
                jsonb_build_object('chat_id', 1000000 + g % 100, 'message', 'elsewhere')
         from generate_series(1, $1::bigint) g",
        &[&n],
    )
    .await
    .unwrap();
    db.execute("update event_seq set last_id = $1", &[&n])
        .await
        .unwrap();
    db.batch_execute("analyze events").await.unwrap();
    url
}

#[tokio::test]
async fn a_one_chat_users_replay_reads_their_events_not_the_whole_log() {
    // A small log and a large one: the planner's choice differs between them,
    // and neither may fall back to reading every event.
    for foreign in [20_000, 200_000] {
        replay_reads_only_the_users_events(foreign).await;
    }
}

async fn replay_reads_only_the_users_events(foreign: i64) {
    // Arrange: events of other chats, then a few of Alice's own.
    let url = database_with_foreign_events(foreign).await;
    let app = spawn_node(&url, |c| c.ws.replay_cache_bytes = 0).await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "quiet", &[]).await;
    for i in 0..10 {
        app.send_message(&alice, chat, &format!("m{i}")).await;
    }
    let db = pg::connect(&url).await;
    db.batch_execute("analyze events").await.unwrap();
    let before = pg::rows_read(&db, "events").await;

    // Act: resume from the very beginning of the log.
    let (mut ws, ready) = connected(&app, &alice, Some(0)).await;
    let mut replayed = 0;
    while let Some(frame) = ws.next_json_within(Duration::from_millis(800)).await {
        if frame["payload"]["event_id"].is_i64() {
            replayed += 1;
        }
    }

    // Assert: everything of hers replayed, reading a bounded number of rows.
    assert_eq!(ready["recovered"], true, "{ready}");
    assert_eq!(replayed, 11, "chat_created and ten messages");
    let read = pg::rows_read_since(&db, "events", before, replayed).await;
    assert!(
        read <= 200,
        "with {foreign} others the replay read {read} event rows"
    );
}

#[tokio::test]
async fn a_replay_past_the_budget_is_not_recovered_but_one_within_it_is() {
    // Arrange
    let app = spawn_app_with(|c| {
        c.ws.replay_cache_bytes = 0;
        c.ws.replay_max_events = 20;
    })
    .await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "busy", &[]).await;
    for i in 0..30 {
        app.send_message(&alice, chat, &format!("m{i}")).await;
    }
    let (_, head) = connected(&app, &alice, None).await;
    let head = head["last_event_id"].as_i64().unwrap();

    // Act
    let (mut far, far_ready) = connected(&app, &alice, Some(0)).await;
    let (mut near, near_ready) = connected(&app, &alice, Some(head - 10)).await;

    // Assert: the 31 events after 0 are past the budget; the last 10 are not.
    assert_eq!(far_ready["recovered"], false, "{far_ready}");
    far.expect_no("message", Duration::from_millis(500)).await;
    assert_eq!(near_ready["recovered"], true, "{near_ready}");
    let replayed = crate::helpers::realtime::read_messages(&mut near, 10).await;
    assert_eq!(replayed.len(), 10);
}
