//! GET /api/v1/messages/search: the matching rules (case, whole words, all
//! terms, prefixes, phrases, URLs / e-mail addresses / file names /
//! identifiers / versions whole and in parts, other scripts), what is never
//! found (deleted messages, edited-away text, chats the caller is not in),
//! paging, the chat filter, bounds, hostile queries, the time limit, the
//! rate limit and the fill of messages stored without words.

use crate::helpers::*;
use chatapp::config::Rate;
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};

const PATH: &str = "/api/v1/messages/search";

async fn search(app: &TestApp, user: &TestUser, params: &[(&str, &str)]) -> (StatusCode, Value) {
    let req = app
        .http
        .get(app.url(PATH))
        .bearer_auth(&user.token)
        .query(params);
    app.send(req).await
}

fn contents(page: &Value) -> Vec<&str> {
    page.as_array()
        .unwrap_or_else(|| panic!("not an array: {page}"))
        .iter()
        .map(|m| m["content"].as_str().expect("content"))
        .collect()
}

fn ids(page: &Value) -> Vec<i64> {
    page.as_array()
        .unwrap_or_else(|| panic!("not an array: {page}"))
        .iter()
        .map(|m| m["id"].as_i64().expect("id"))
        .collect()
}

/// A server, a user and a group of theirs holding `texts`, sent in order.
async fn corpus(texts: &[&str]) -> (TestApp, TestUser, i64) {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    for text in texts {
        app.send_message(&alice, chat, text).await;
    }
    (app, alice, chat)
}

/// Asserts that each query finds exactly the texts given (in any order).
async fn assert_finds(app: &TestApp, user: &TestUser, cases: &[(&str, &[&str])]) {
    let mut wrong = Vec::new();
    for (q, expected) in cases {
        let (status, page) = search(app, user, &[("q", q)]).await;
        assert_eq!(status, 200, "{q:?}: {page}");
        let mut got = contents(&page);
        got.sort_unstable();
        let mut want = expected.to_vec();
        want.sort_unstable();
        if got != want {
            wrong.push(format!("{q:?}: found {got:?}, expected {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn matching_ignores_case_and_finds_whole_words_only() {
    let (app, alice, _) = corpus(&["Hello World", "the cat sat", "a Category error", "CATS"]).await;

    assert_finds(
        &app,
        &alice,
        &[
            ("hello", &["Hello World"]),
            ("HELLO", &["Hello World"]),
            ("wOrLd", &["Hello World"]),
            ("cat", &["the cat sat"]),
            ("category", &["a Category error"]),
            ("cats", &["CATS"]),
            ("ca", &[]),
            ("hell", &[]),
        ],
    )
    .await;
}

#[tokio::test]
async fn every_term_must_match() {
    let (app, alice, _) = corpus(&["red apple", "red car", "green apple"]).await;

    assert_finds(
        &app,
        &alice,
        &[
            ("red", &["red apple", "red car"]),
            ("red apple", &["red apple"]),
            ("apple red", &["red apple"]),
            ("red green", &[]),
            ("apple apple", &["red apple", "green apple"]),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_trailing_star_makes_the_last_word_a_prefix() {
    let (app, alice, _) =
        corpus(&["the cat", "a category", "concatenate", "snake_case_name"]).await;

    assert_finds(
        &app,
        &alice,
        &[
            ("cat*", &["the cat", "a category"]),
            ("categ*", &["a category"]),
            ("cat", &["the cat"]),
            ("*cat", &["the cat"]),
            ("snake_ca*", &["snake_case_name"]),
            ("snake_na*", &[]),
            ("the cat*", &["the cat"]),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_quoted_phrase_matches_its_words_in_order_and_adjacent() {
    let (app, alice, _) =
        corpus(&["the quick brown fox", "brown quick dogs", "quick red brown"]).await;

    assert_finds(
        &app,
        &alice,
        &[
            ("\"quick brown\"", &["the quick brown fox"]),
            ("\"brown quick\"", &["brown quick dogs"]),
            (
                "quick brown",
                &["the quick brown fox", "brown quick dogs", "quick red brown"],
            ),
            ("\"quick brown\" fox", &["the quick brown fox"]),
            ("\"quick bro*\"", &["the quick brown fox"]),
            ("\"the quick brown fox", &["the quick brown fox"]),
        ],
    )
    .await;
}

#[tokio::test]
async fn urls_are_found_whole_and_by_their_parts() {
    let url = "see https://docs.example.com/api/search_v2?lang=en#top now";
    let (app, alice, _) = corpus(&[url, "example.org is another"]).await;

    assert_finds(
        &app,
        &alice,
        &[
            ("https://docs.example.com/api/search_v2?lang=en#top", &[url]),
            ("docs.example.com", &[url]),
            ("example.com/api", &[url]),
            ("example", &[url, "example.org is another"]),
            ("com", &[url]),
            ("search_v2", &[url]),
            ("v2", &[url]),
            ("lang=en", &[url]),
            ("example.org", &["example.org is another"]),
            ("example.com/search", &[]),
        ],
    )
    .await;
}

#[tokio::test]
async fn email_addresses_are_found_whole_and_by_their_parts() {
    let text = "write to Bob.Smith+chat@mail.example.org today";
    let (app, alice, _) = corpus(&[text]).await;

    assert_finds(
        &app,
        &alice,
        &[
            ("bob.smith+chat@mail.example.org", &[text]),
            ("bob.smith", &[text]),
            ("smith", &[text]),
            ("mail.example.org", &[text]),
            ("chat@mail", &[text]),
            ("smith@mail", &[]),
        ],
    )
    .await;
}

#[tokio::test]
async fn file_names_and_paths_are_found_whole_and_by_their_parts() {
    let text = "attached report_2024-final.pdf and /usr/lib/libfoo.so.1";
    let (app, alice, _) = corpus(&[text]).await;

    assert_finds(
        &app,
        &alice,
        &[
            ("report_2024-final.pdf", &[text]),
            ("report", &[text]),
            ("2024", &[text]),
            ("pdf", &[text]),
            ("/usr/lib/libfoo.so.1", &[text]),
            ("libfoo.so", &[text]),
            ("libfoo", &[text]),
            ("final.pdf", &[text]),
            ("report.pdf", &[]),
        ],
    )
    .await;
}

#[tokio::test]
async fn identifiers_and_versions_are_found_whole_and_by_their_parts() {
    let text = "call snake_case_name() in release v1.2.3-rc1 of chatApp";
    let (app, alice, _) = corpus(&[text]).await;

    assert_finds(
        &app,
        &alice,
        &[
            ("snake_case_name", &[text]),
            ("snake_case_name()", &[text]),
            ("snake", &[text]),
            ("case_name", &[text]),
            ("v1.2.3-rc1", &[text]),
            ("v1.2.3", &[text]),
            ("v1", &[text]),
            ("2.3", &[text]),
            ("rc1", &[text]),
            ("chatapp", &[text]),
            // A part is a run of letters and digits: `v1` is one, and
            // camelCase is one word.
            ("1.2.3", &[]),
            ("app", &[]),
            ("name_case", &[]),
        ],
    )
    .await;
}

#[tokio::test]
async fn other_scripts_are_words_too() {
    let (app, alice, _) = corpus(&[
        "«Привет», МИР!",
        "ΚΑΛΗΜΕΡΑ κόσμε, ΣΟΦΟΣ",
        "東京都庁に行く。大阪",
        "École ＡＢＣ",
        "नमस्ते दुनिया",
    ])
    .await;

    assert_finds(
        &app,
        &alice,
        &[
            ("привет", &["«Привет», МИР!"]),
            ("ПРИВЕТ мир", &["«Привет», МИР!"]),
            ("καλημερα", &["ΚΑΛΗΜΕΡΑ κόσμε, ΣΟΦΟΣ"]),
            ("ΚΌΣΜΕ", &["ΚΑΛΗΜΕΡΑ κόσμε, ΣΟΦΟΣ"]),
            ("σοφος", &["ΚΑΛΗΜΕΡΑ κόσμε, ΣΟΦΟΣ"]),
            // No spaces between the words: a run is one word; a prefix finds its start.
            ("東京都庁に行く", &["東京都庁に行く。大阪"]),
            ("東京*", &["東京都庁に行く。大阪"]),
            ("大阪", &["東京都庁に行く。大阪"]),
            ("東京", &[]),
            ("école", &["École ＡＢＣ"]),
            ("abc", &["École ＡＢＣ"]),
            ("ecole", &[]),
            ("दुनिया", &["नमस्ते दुनिया"]),
        ],
    )
    .await;
}

#[tokio::test]
async fn deleted_messages_are_never_found_and_edited_ones_only_by_their_new_text() {
    // Arrange
    let (app, alice, chat) = corpus(&["keep this apple"]).await;
    let gone = app.send_message(&alice, chat, "delete this apple").await;
    let edited = app.send_message(&alice, chat, "an old banana").await;

    // Act
    let (status, _) = app
        .delete(&format!("/api/v1/messages/{}", gone["id"]), &alice.token)
        .await;
    assert_eq!(status, 204);
    let (status, body) = app
        .put(
            &format!("/api/v1/messages/{}", edited["id"]),
            &alice.token,
            serde_json::json!({ "content": "a new cherry" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Assert
    assert_finds(
        &app,
        &alice,
        &[
            ("apple", &["keep this apple"]),
            ("delete", &[]),
            ("banana", &[]),
            ("old", &[]),
            ("cherry", &["a new cherry"]),
        ],
    )
    .await;
}

#[tokio::test]
async fn results_are_messages_as_history_returns_them_newest_first() {
    // Arrange
    let (app, alice, chat) = corpus(&["first match", "no", "second match"]).await;

    // Act
    let (status, page) = search(&app, &alice, &[("q", "match")]).await;
    let (_, history) = app
        .get(&format!("/api/v1/messages/chat/{chat}"), &alice.token)
        .await;

    // Assert
    assert_eq!(status, 200, "{page}");
    let history = history.as_array().unwrap();
    assert_eq!(
        page.as_array().unwrap(),
        &[history[0].clone(), history[2].clone()]
    );
}

#[tokio::test]
async fn pages_follow_before_id_newest_first() {
    // Arrange
    let (app, alice, chat) = corpus(&[]).await;
    let mut sent = Vec::new();
    for i in 0..7 {
        let m = app
            .send_message(&alice, chat, &format!("page word {i}"))
            .await;
        sent.push(m["id"].as_i64().unwrap());
        app.send_message(&alice, chat, "filler").await;
    }
    sent.reverse();

    // Act
    let mut pages = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let mut params = vec![("q", "word".to_string()), ("limit", "3".to_string())];
        if let Some(b) = before {
            params.push(("before_id", b.to_string()));
        }
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, page) = search(&app, &alice, &params).await;
        assert_eq!(status, 200, "{page}");
        let page = ids(&page);
        if page.is_empty() {
            break;
        }
        before = page.last().copied();
        pages.push(page);
    }

    // Assert
    assert_eq!(pages, [&sent[0..3], &sent[3..6], &sent[6..7]]);
}

#[tokio::test]
async fn chat_id_limits_the_search_to_one_chat() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let ours = app.create_group(&alice, "ours", &[&bob]).await;
    let mine = app.create_group(&alice, "mine", &[]).await;
    app.send_message(&alice, ours, "shared plan").await;
    app.send_message(&alice, mine, "private plan").await;

    // Act
    let (all, everywhere) = search(&app, &alice, &[("q", "plan")]).await;
    let (one, in_ours) = search(
        &app,
        &alice,
        &[("q", "plan"), ("chat_id", &ours.to_string())],
    )
    .await;
    let (bobs, bob_sees) = search(&app, &bob, &[("q", "plan")]).await;

    // Assert
    assert_eq!([all, one, bobs], [200, 200, 200]);
    assert_eq!(contents(&everywhere), ["private plan", "shared plan"]);
    assert_eq!(contents(&in_ours), ["shared plan"]);
    assert_eq!(
        contents(&bob_sees),
        ["shared plan"],
        "never a chat he is not in"
    );
}

#[tokio::test]
async fn a_chat_the_caller_is_not_in_is_not_found() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let eve = app.register("eve").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    app.send_message(&alice, chat, "secret plan").await;
    let chat = chat.to_string();

    // Act
    let matching = search(&app, &eve, &[("q", "secret"), ("chat_id", &chat)]).await;
    let missing = search(&app, &eve, &[("q", "nothing"), ("chat_id", &chat)]).await;
    let no_words = search(&app, &eve, &[("q", "!!"), ("chat_id", &chat)]).await;
    let no_chat = search(&app, &eve, &[("q", "secret"), ("chat_id", "999999")]).await;
    let (own, _) = search(&app, &alice, &[("q", "nothing"), ("chat_id", &chat)]).await;

    // Assert
    for (status, body) in [matching, missing, no_words, no_chat] {
        assert_error(status, &body, 404, "not_found");
    }
    assert_eq!(own, 200, "a member's empty result is a page");
}

#[tokio::test]
async fn bad_parameters_are_400_naming_the_field() {
    let (app, alice, _) = corpus(&["x"]).await;
    let long = "a".repeat(201);
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "q"),
        (&[("q", "")], "q"),
        (&[("q", "   ")], "q"),
        (&[("q", &long)], "q"),
        (&[("q", "x"), ("limit", "0")], "limit"),
        (&[("q", "x"), ("limit", "101")], "limit"),
        (&[("q", "x"), ("limit", "ten")], "limit"),
        (&[("q", "x"), ("chat_id", "0")], "chat_id"),
        (&[("q", "x"), ("chat_id", "-1")], "chat_id"),
        (&[("q", "x"), ("before_id", "0")], "before_id"),
        (
            &[("q", "x"), ("before_id", "99999999999999999999")],
            "before_id",
        ),
    ];

    for (params, field) in cases {
        let (status, body) = search(&app, &alice, params).await;
        assert_error(status, &body, 400, "validation_failed");
        assert_eq!(body["fields"][0]["field"], *field, "{params:?}: {body}");
    }
    let fits = "a".repeat(200);
    let (status, body) = search(&app, &alice, &[("q", &fits), ("limit", "100")]).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn hostile_queries_are_answered_never_with_a_server_error() {
    // Arrange
    let (app, alice, _) = corpus(&["an ordinary message about cats and dogs"]).await;
    let many_words = "a ".repeat(100);
    let many_phrases = "\"a b\" ".repeat(33);
    let long_word = "x".repeat(200);
    let queries: Vec<&str> = vec![
        "!!!",
        "\"",
        "\"\"\"",
        "*",
        "***",
        "* * *",
        "a*b*",
        ":*",
        "&",
        "|",
        "!",
        "<->",
        "& | ! <-> :*",
        "cats & dogs",
        "cats | dogs",
        "!cats",
        "cats <-> dogs",
        "cats <2> dogs",
        "cats:*",
        "cats:A",
        "cats:*A",
        "(cats",
        "cats)",
        "((()))",
        "'",
        "''",
        "'cats'",
        "\\",
        "\\'",
        "cats\\",
        "--",
        "/* */",
        ";",
        "'; drop table messages; --",
        "%",
        "_",
        "\u{301}\u{301}",
        "👍👍",
        "\u{FEFF}",
        "\u{200B}",
        "ﷺ",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        &many_words,
        &many_phrases,
        &long_word,
    ];

    // Act
    let mut failures = Vec::new();
    for q in &queries {
        let (status, body) = search(&app, &alice, &[("q", q)]).await;
        if status != 200 || !body.is_array() {
            failures.push(format!("{q:?}: {status} {body}"));
        }
    }

    // Assert
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    let (_, page) = search(&app, &alice, &[("q", "cats & dogs")]).await;
    assert_eq!(contents(&page).len(), 1, "operators are punctuation");
}

#[tokio::test]
async fn a_search_past_its_time_limit_is_503_query_timeout() {
    // Arrange
    let app = spawn_app_with(|c| c.limits.search_timeout_ms = 200).await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    app.send_message(&alice, chat, "waiting word").await;
    let mut db = pg::connect(&app.database_url).await;
    let lock = db.transaction().await.unwrap();
    // The search waits for this lock until its time limit ends it.
    lock.batch_execute("lock table messages in access exclusive mode")
        .await
        .unwrap();

    // Act
    let (status, body) = search(&app, &alice, &[("q", "waiting")]).await;
    lock.rollback().await.unwrap();
    let (after, page) = search(&app, &alice, &[("q", "waiting")]).await;
    let (history, _) = app
        .get(&format!("/api/v1/messages/chat/{chat}"), &alice.token)
        .await;

    // Assert
    assert_error(status, &body, 503, "query_timeout");
    assert_eq!(after, 200, "{page}");
    assert_eq!(contents(&page), ["waiting word"]);
    assert_eq!(history, 200, "the limit ended with the search");
}

#[tokio::test]
async fn searches_are_rate_limited_per_user() {
    // Arrange
    let app = spawn_app_with(|c| {
        c.limits.rate.enabled = true;
        c.limits.rate.searches = Rate {
            per_minute: 1,
            burst: 2,
        };
    })
    .await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;

    // Act
    let mut alices = Vec::new();
    for _ in 0..3 {
        alices.push(search(&app, &alice, &[("q", "x")]).await);
    }
    let (bobs, _) = search(&app, &bob, &[("q", "x")]).await;

    // Assert
    let statuses: Vec<u16> = alices.iter().map(|(s, _)| s.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 429]);
    assert_error(alices[2].0, &alices[2].1, 429, "rate_limited");
    assert_eq!(bobs, 200, "another user's limit is their own");
}

#[tokio::test]
async fn messages_sent_together_are_all_found() {
    // Arrange: concurrent sends are committed in batches (one statement).
    let (app, alice, chat) = corpus(&[]).await;
    let sends = (0..40).map(|i| {
        let (app, alice) = (&app, &alice);
        async move {
            app.send_message(alice, chat, &format!("batch word{i} shared"))
                .await
        }
    });
    join_all(sends).await;

    // Act
    let (status, page) = search(&app, &alice, &[("q", "shared"), ("limit", "100")]).await;
    let (_, one) = search(&app, &alice, &[("q", "word17")]).await;

    // Assert
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page).len(), 40);
    assert_eq!(contents(&one), ["batch word17 shared"]);
}

#[tokio::test]
async fn messages_stored_without_words_are_given_them_when_a_node_starts() {
    // Arrange: as if stored before search existed.
    let (app, alice, chat) = corpus(&[]).await;
    let db = pg::connect(&app.database_url).await;
    db.execute(
        "insert into messages (chat_id, sender_id, content) values ($1, $2, 'Legacy Words here')",
        &[&chat, &alice.id],
    )
    .await
    .unwrap();

    // Act
    let node = spawn_node(&app.database_url, |_| {}).await;
    let started = Instant::now();
    let found = loop {
        let (status, page) = search(&node, &alice, &[("q", "legacy")]).await;
        assert_eq!(status, 200, "{page}");
        if !ids(&page).is_empty() || started.elapsed() > Duration::from_secs(20) {
            break contents(&page)
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Assert
    assert_eq!(found, ["Legacy Words here"]);
    let vector: String = db
        .query_one(
            "select search::text from messages where chat_id = $1",
            &[&chat],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(vector, "'here':3 'legacy':1 'words':2");
}
