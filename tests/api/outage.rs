//! The database goes away mid-load (a TCP proxy in front of the real
//! Postgres is cut): writes fail fast with 503 and Retry-After, `/ready`
//! says not ready, and after the database returns everything recovers and
//! no acknowledged join is lost. Runs when `TURNOUT_TEST_POSTGRES_URL` is set.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use uuid::Uuid;

use crate::helpers::{Backend, TcpProxy, body, fresh_database, spawn_node};

#[actix_web::test]
async fn writes_fail_fast_while_the_database_is_away_and_recover_without_losing_a_join() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(Backend::Postgres, &dir).await else {
        return;
    };
    // postgres://user@host:port/db → the same database through the proxy.
    let (scheme_user, rest) = url.split_once('@').expect("a URL with a user");
    let (host_port, database) = rest.split_once('/').unwrap();
    let proxy = TcpProxy::to(host_port.parse().unwrap()).await;
    let proxied = format!("{scheme_user}@127.0.0.1:{}/{database}", proxy.port);
    let app = spawn_node(&proxied, |s| {
        s.http.breaker.failures = 3;
        s.http.breaker.cool_down_ms = 300;
        s.http.write_timeout_ms = 1500;
        s.database.acquire_timeout_ms = 500;
    })
    .await;

    let owner = app.user();
    let event = app.published_event(&owner, 1000).await;
    let mut acknowledged: HashSet<Uuid> = HashSet::new();
    let member = app.user();
    assert_eq!(app.join(&member, event).await.status(), StatusCode::CREATED);
    acknowledged.insert(member.id);
    for _ in 0..10 {
        let user = app.user();
        assert_eq!(app.join(&user, event).await.status(), StatusCode::CREATED);
        acknowledged.insert(user.id);
    }

    proxy.off();
    let mut codes: HashSet<String> = HashSet::new();
    for _ in 0..12 {
        let user = app.user();
        let Ok(response) = app.try_join(&user, event).await else {
            continue;
        };
        let status = response.status();
        if status.is_success() {
            acknowledged.insert(user.id);
            continue;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
        codes.insert(
            body(response).await["error"]["code"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert!(
        codes.contains("writes_paused"),
        "the breaker opened: {codes:?}"
    );
    // A channel first asked for now cannot load; its subscriber waits for
    // the database instead of being forgotten.
    let mut socket = crate::realtime::connect(&app).await;
    crate::realtime::send(
        &mut socket,
        serde_json::json!({ "type": "subscribe", "channel": format!("event:{event}") }),
    )
    .await;
    // So does a person's `me` feed: not told they hold nothing.
    let mut mine = crate::realtime::connect(&app).await;
    crate::realtime::authenticate(&mut mine, &member.token).await;
    crate::realtime::send(
        &mut mine,
        serde_json::json!({ "type": "subscribe", "channel": "me" }),
    )
    .await;
    let ready = app.request(Method::GET, "/ready").send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let health = app.request(Method::GET, "/health").send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK, "alive, just not ready");
    // The `me` channel's load waits for a connection (500 ms here) and
    // fails, more than once by then. (Not read from the load failures'
    // counter: the metrics registry is the test process's, shared with
    // every app in it.)
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    proxy.on();
    // A balancer that follows `/ready` sends the node no writes while it
    // says no: after the cool-down `/ready` pings and says ready without a
    // write to probe with; the next write is the probe and closes it.
    crate::helpers::wait_until(
        crate::helpers::EVENTUALLY,
        "/ready recovered without writes",
        || async {
            let ready = app.request(Method::GET, "/ready").send().await.unwrap();
            ready.status() == StatusCode::OK
        },
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let user = app.user();
        if let Ok(response) = app.try_join(&user, event).await
            && response.status() == StatusCode::CREATED
        {
            acknowledged.insert(user.id);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes never recovered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = app.request(Method::GET, "/ready").send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    // A write that went through closed the breaker: the next ones, at once,
    // are all taken. (Not read from the breaker's gauge: the metrics
    // registry is the test process's, shared with every app in it.)
    let after: Vec<_> = (0..5).map(|_| app.user()).collect();
    for user in &after {
        assert_eq!(app.join(user, event).await.status(), StatusCode::CREATED);
        acknowledged.insert(user.id);
    }

    let members: HashSet<Uuid> = app
        .attendees(&owner, event)
        .await
        .iter()
        .map(|a| a["user_id"].as_str().unwrap().parse().unwrap())
        .collect();
    let lost: Vec<_> = acknowledged.difference(&members).collect();
    assert!(lost.is_empty(), "acknowledged joins lost: {lost:?}");

    let snapshot = crate::realtime::next(&mut socket).await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    assert_eq!(snapshot["data"]["event"]["id"], event.to_string());
    let places = crate::realtime::next(&mut mine).await;
    assert_eq!(places["type"], "snapshot", "{places}");
    assert_eq!(places["data"]["places"][0]["event_id"], event.to_string());
    assert_eq!(places["data"]["places"][0]["status"], "active", "{places}");
}
