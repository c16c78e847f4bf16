//! Two servers on one database: the event log's (stream_id, version) key
//! fences a stale actor, which fails its command (nothing acknowledged),
//! reloads, and then decides on the true state.

use reqwest::StatusCode;

use crate::helpers::{Backend, body, fresh_database, spawn_node};

async fn a_stale_actor_is_fenced_and_reloads(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(backend, &dir).await else {
        return;
    };
    let a = spawn_node(&url, |_| {}).await;
    let b = spawn_node(&url, |_| {}).await;

    let owner = a.register("owner@example.com").await;
    let event = a.published_event(&owner, 1).await;
    // Node A's actor now holds the event at its current version.
    let first = a.user();
    assert_eq!(a.join(&first, event).await.status(), StatusCode::CREATED);

    // Node B takes the next version.
    let second = b.user();
    let on_b = body(b.join(&second, event).await).await;
    assert_eq!(on_b["data"]["status"], "waitlisted", "{on_b}");

    // A's actor is stale: its append loses on (stream_id, version).
    let third = a.user();
    let fenced = a.join(&third, event).await;
    assert_eq!(fenced.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(fenced.headers().contains_key("retry-after"));

    // The retry goes to a reloaded actor that sees B's join.
    let retried = body(a.join(&third, event).await).await;
    assert_eq!(retried["data"]["status"], "waitlisted");
    assert_eq!(retried["data"]["position"], 2);
    let seen = a.event(event).await;
    assert_eq!(
        (
            seen["active_count"].as_i64(),
            seen["waitlist_count"].as_i64()
        ),
        (Some(1), Some(2))
    );
}

#[actix_web::test]
async fn sqlite_a_stale_actor_is_fenced_and_reloads() {
    a_stale_actor_is_fenced_and_reloads(Backend::Sqlite).await;
}

#[actix_web::test]
async fn postgres_a_stale_actor_is_fenced_and_reloads() {
    a_stale_actor_is_fenced_and_reloads(Backend::Postgres).await;
}
