use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, TestApp, User, assert_error, body, spawn_app, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(
    concurrent_joins_never_overbook_and_number_the_waitlist,
    leaving_promotes_the_earliest_waiter,
    a_roster_page_is_one_moment_of_the_event_while_waiters_move_up,
    raising_capacity_promotes_in_order_and_cuts_below_active_are_refused,
    an_idempotency_key_replays_the_first_answer,
    joining_rules,
    my_joins_are_newest_first_with_event_cards,
);

async fn concurrent_joins_never_overbook_and_number_the_waitlist(app: TestApp) {
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 50).await;
    let users: Vec<User> = (0..200).map(|_| app.user()).collect();

    let responses = join_all(users.iter().map(|u| app.join(u, event))).await;
    let mut active = 0;
    let mut positions = Vec::new();
    for response in responses {
        assert_eq!(response.status(), StatusCode::CREATED);
        let data = body(response).await["data"].clone();
        match data["status"].as_str().unwrap() {
            "active" => active += 1,
            "waitlisted" => positions.push(data["position"].as_u64().unwrap()),
            other => panic!("unexpected status {other}"),
        }
    }
    positions.sort();
    assert_eq!(active, 50);
    assert_eq!(positions, (1..=150).collect::<Vec<_>>());

    let seen = app.event(event).await;
    assert_eq!(
        (
            seen["active_count"].as_i64(),
            seen["waitlist_count"].as_i64()
        ),
        (Some(50), Some(150))
    );

    let roster = app.attendees(&owner, event).await;
    assert_eq!(roster.len(), 200);
    assert!(
        roster[..50]
            .iter()
            .all(|a| a["status"] == "active" && a["position"].is_null())
    );
    let listed: Vec<i64> = roster[50..]
        .iter()
        .map(|a| a["position"].as_i64().unwrap())
        .collect();
    assert_eq!(
        listed,
        (1..=150).collect::<Vec<_>>(),
        "waitlist in order, positions without gaps"
    );
    let ids: HashSet<&str> = roster
        .iter()
        .map(|a| a["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 200);
}

async fn leaving_promotes_the_earliest_waiter(app: TestApp) {
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 1).await;
    let (a, b, c) = (app.user(), app.user(), app.user());
    for u in [&a, &b, &c] {
        app.join(u, event).await;
    }
    let left = app.leave(&a, event).await;
    assert_eq!(left.status(), StatusCode::OK);
    assert_eq!(body(left).await["data"]["status"], "left");

    let roster = app.attendees(&owner, event).await;
    assert_eq!(roster[0]["user_id"], b.id.to_string());
    assert_eq!(roster[0]["status"], "active");
    assert_eq!(roster[1]["user_id"], c.id.to_string());
    assert_eq!(roster[1]["position"], 1);

    assert_error(
        app.leave(&a, event).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

/// The owner's roster page was read group by group: a waiter promoted
/// between the read of the active and that of the waiting was in neither.
/// Read while the active leave one by one in the order they joined, every
/// page must be the event at one moment: the members who have not left, in
/// the order they joined, the first five active and the rest numbered.
async fn a_roster_page_is_one_moment_of_the_event_while_waiters_move_up(app: TestApp) {
    let owner = app.user();
    let event = app.published_event(&owner, 5).await;
    let members: Vec<User> = (0..60).map(|_| app.user()).collect();
    for member in &members {
        assert!(app.join(member, event).await.status().is_success());
    }
    let ids: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
    let leaving = async {
        for member in &members[..30] {
            assert_eq!(app.leave(member, event).await.status(), StatusCode::OK);
        }
    };
    let reading = async {
        let mut pages = 0;
        loop {
            let path = format!("/v1/events/{event}/attendees?limit=100");
            let response = app
                .as_user(&owner, Method::GET, &path)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let page = body(response).await["data"].as_array().unwrap().clone();
            let listed: Vec<&str> = page
                .iter()
                .map(|m| m["user_id"].as_str().unwrap())
                .collect();
            let gone = ids.len() - listed.len();
            assert_eq!(
                listed,
                ids[gone..],
                "page {pages}: the members who stayed, in order"
            );
            for (i, member) in page.iter().enumerate() {
                match i {
                    0..5 => assert_eq!(member["status"], "active", "page {pages}"),
                    _ => assert_eq!(member["position"], i as i64 - 4, "page {pages}"),
                }
            }
            pages += 1;
            if gone == 30 {
                return pages;
            }
        }
    };
    let ((), pages) = futures_util::join!(leaving, reading);
    assert!(pages > 1);
}

async fn raising_capacity_promotes_in_order_and_cuts_below_active_are_refused(app: TestApp) {
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 1).await;
    let users: Vec<User> = (0..4).map(|_| app.user()).collect();
    for u in &users {
        app.join(u, event).await;
    }
    let raised = app
        .as_user(&owner, Method::PATCH, &format!("/v1/events/{event}"))
        .json(&json!({ "capacity": 3 }))
        .send()
        .await
        .unwrap();
    let raised = body(raised).await;
    assert_eq!(
        (
            raised["data"]["active_count"].as_i64(),
            raised["data"]["waitlist_count"].as_i64()
        ),
        (Some(3), Some(1))
    );
    let roster = app.attendees(&owner, event).await;
    let order: Vec<&str> = roster
        .iter()
        .map(|a| a["user_id"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = users.iter().map(|u| u.id.to_string()).collect();
    assert_eq!(order, expected);

    let cut = app
        .as_user(&owner, Method::PATCH, &format!("/v1/events/{event}"))
        .json(&json!({ "capacity": 2 }))
        .send()
        .await
        .unwrap();
    assert_error(cut, StatusCode::CONFLICT, "capacity_below_active").await;
    assert_eq!(app.event(event).await["capacity"], 3);
}

async fn an_idempotency_key_replays_the_first_answer(app: TestApp) {
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 1).await;
    let other_event = app.published_event(&owner, 1).await;
    let (a, b) = (app.user(), app.user());
    app.join(&a, event).await;

    // Concurrent duplicates while the first is in flight, then a late replay.
    let first = join_all((0..5).map(|_| app.join_with_key(&b, event, "key-1"))).await;
    let mut answers = Vec::new();
    for response in first {
        answers.push((response.status(), body(response).await));
    }
    let replay = app.join_with_key(&b, event, "key-1").await;
    assert_eq!(replay.headers().get("idempotent-replayed").unwrap(), "true");
    answers.push((replay.status(), body(replay).await));
    for answer in &answers {
        assert_eq!(answer, &answers[0]);
    }
    assert_eq!(answers[0].0, StatusCode::CREATED);
    assert_eq!(answers[0].1["data"]["position"], 1);
    assert_eq!(
        app.event(event).await["waitlist_count"],
        1,
        "no second effect"
    );

    // Leave, then replay the old key: the stored answer, not a new join.
    app.leave(&b, event).await;
    let replay = app.join_with_key(&b, event, "key-1").await;
    assert_eq!(body(replay).await, answers[0].1);
    assert_eq!(app.event(event).await["waitlist_count"], 0);

    let reused = app.join_with_key(&b, other_event, "key-1").await;
    assert_error(
        reused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.event(other_event).await["active_count"], 0);

    // One fresh key sent to two events at once: one joins, the other is
    // refused (in use while the first is in flight, reused once it is
    // answered), never a 5xx and never two effects.
    let (left, right) = (
        app.published_event(&owner, 5).await,
        app.published_event(&owner, 5).await,
    );
    for round in 0..5 {
        let key = format!("raced-{round}");
        let (on_left, on_right) = futures_util::join!(
            app.join_with_key(&b, left, &key),
            app.join_with_key(&b, right, &key)
        );
        let mut answers = Vec::new();
        for response in [on_left, on_right] {
            let status = response.status();
            answers.push((status, body(response).await["error"]["code"].clone()));
        }
        answers.sort_by_key(|(status, _)| *status);
        match &answers[..] {
            [
                (StatusCode::OK | StatusCode::CREATED, _),
                (StatusCode::CONFLICT, code),
            ] if code == "idempotency_key_in_use" => {}
            [
                (StatusCode::OK | StatusCode::CREATED, _),
                (StatusCode::UNPROCESSABLE_ENTITY, code),
            ] if code == "idempotency_key_reused" => {}
            other => panic!("round {round}: {other:?}"),
        }
        app.leave(&b, left).await;
        app.leave(&b, right).await;
    }
}

async fn joining_rules(app: TestApp) {
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 5).await;
    let draft = app.draft_event(&owner, 5).await;
    let a = app.user();

    assert_error(
        app.join(&owner, event).await,
        StatusCode::FORBIDDEN,
        "owner_cannot_join",
    )
    .await;
    assert_error(
        app.join(&a, draft).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.join(&a, uuid::Uuid::now_v7()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    assert_eq!(app.join(&a, event).await.status(), StatusCode::CREATED);
    let again = app.join(&a, event).await;
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "joining again answers the current membership"
    );
    assert_eq!(body(again).await["data"]["status"], "active");
    assert_eq!(app.event(event).await["active_count"], 1);
}

async fn my_joins_are_newest_first_with_event_cards(app: TestApp) {
    let owner = app.register("owner@example.com").await;
    let me = app.user();
    let mut events = Vec::new();
    for _ in 0..5 {
        let event = app.published_event(&owner, 1).await;
        app.join(&me, event).await;
        events.push(event);
    }
    let page = body(
        app.as_user(&me, Method::GET, "/v1/me/joins?limit=3")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let first: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        first,
        [events[4], events[3], events[2]].map(|e| e.to_string())
    );
    assert_eq!(page["data"][0]["event"]["title"], "Late jazz");
    assert_eq!(page["data"][0]["event"]["active_count"], 1);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = body(
        app.as_user(
            &me,
            Method::GET,
            &format!("/v1/me/joins?limit=3&cursor={cursor}"),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    let rest: Vec<&str> = rest["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(rest, [events[1], events[0]].map(|e| e.to_string()));
}

/// Actors leave memory when idle and come back from snapshot + tail with the
/// same state, FIFO order included.
#[actix_web::test]
async fn passivated_actors_rehydrate_from_snapshot_and_tail() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.actors.idle_timeout_secs = 1;
        s.actors.snapshot_every = 3;
    })
    .await
    .unwrap();
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 2).await;
    let users: Vec<User> = (0..7).map(|_| app.user()).collect();
    for u in &users {
        app.join(u, event).await;
    }
    wait_for_passivation(&app).await;

    // The rehydrated actor must promote users[2] — the front of the waitlist.
    app.leave(&users[0], event).await;
    let roster = app.attendees(&owner, event).await;
    let order: Vec<&str> = roster
        .iter()
        .map(|a| a["user_id"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = users[1..].iter().map(|u| u.id.to_string()).collect();
    assert_eq!(order, expected);
    let late = app.user();
    assert_eq!(
        body(app.join(&late, event).await).await["data"]["position"],
        5
    );
}

/// A member joining again under a fresh key changes nothing, yet the join
/// was carried out: replayed after the member left and the event's actor
/// forgot its keys, the key gets that answer back, not a place decided
/// afresh. (Its answer was once kept by the actor alone, so such a replay
/// joined the member again.)
#[actix_web::test]
async fn a_join_that_changed_nothing_replays_its_answer_after_the_member_left() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) = spawn_app_with(backend, |s| s.actors.idle_timeout_secs = 1).await else {
            continue;
        };
        let owner = app.user();
        let event = app.published_event(&owner, 10).await;
        let member = app.user();
        let first = app.join_with_key(&member, event, "first").await;
        assert_eq!(first.status(), StatusCode::CREATED);
        let again = app.join_with_key(&member, event, "again").await;
        assert_eq!(
            again.status(),
            StatusCode::OK,
            "{backend:?}: a member joining again"
        );
        let again = body(again).await;
        assert_eq!(again["data"]["status"], "active");
        assert_eq!(app.leave(&member, event).await.status(), StatusCode::OK);
        wait_for_passivation(&app).await;

        let replay = app.join_with_key(&member, event, "again").await;
        assert_eq!(replay.status(), StatusCode::OK, "{backend:?}");
        assert_eq!(replay.headers().get("idempotent-replayed").unwrap(), "true");
        assert_eq!(body(replay).await, again, "{backend:?}: the first answer");
        let now = app.event(event).await;
        assert_eq!(now["active_count"], 0, "{backend:?}: no second effect");
        assert!(app.attendees(&owner, event).await.is_empty());
    }
}

async fn wait_for_passivation(app: &TestApp) {
    for _ in 0..100 {
        let metrics = app.metrics().await;
        if metrics.lines().any(|l| l == "turnout_registry_actors 0") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the idle actor was never passivated");
}

/// The journal's one connection plans its statements while the tables are
/// nearly empty and keeps those plans. A lookup it may hash (a join, an
/// `EXISTS`) is then kept as a read of the whole table on every commit —
/// on a busy server, a commit that grows slower with every row. After
/// forty commits on Postgres, the log and the stored keys have been read
/// whole no more than a handful of times.
#[actix_web::test]
async fn the_journal_on_postgres_looks_rows_up_by_index_whatever_it_planned_on() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let owner = app.user();
    let event = app.published_event(&owner, 1_000).await;
    for _ in 0..40 {
        let response = app.join(&app.user(), event).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }

    // A backend reports its table statistics when idle, at most once a
    // second: wait until the journal's inserts show.
    let db = sqlx::PgPool::connect(&app.database_url).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (inserted,): (i64,) = sqlx::query_as(
            "SELECT COALESCE(SUM(n_tup_ins), 0)::BIGINT FROM pg_stat_user_tables \
             WHERE relname = 'idempotency_keys'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        if inserted >= 40 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the statistics never showed the journal's inserts ({inserted})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let scans: Vec<(String, i64)> = sqlx::query_as(
        "SELECT relname::TEXT, seq_scan FROM pg_stat_user_tables \
         WHERE relname IN ('event_log', 'idempotency_keys') ORDER BY relname",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(scans.len(), 2);
    for (table, scans) in scans {
        assert!(
            scans < 10,
            "{table} was read whole {scans} times in 40 commits"
        );
    }
}
