//! Live updates over a real WebSocket client.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::helpers::{
    Backend, TestApp, User, assert_error, body, fresh_database, metric, spawn_app_with,
};
use crate::process::ServerProcess;

pub type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(app: &TestApp) -> Socket {
    let url = app.address.replace("http://", "ws://") + "/v1/ws";
    connect_async(url).await.expect("websocket connects").0
}

pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut WebSocketStream<S>,
    frame: Value,
) {
    socket.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next JSON frame, skipping pings.
pub async fn next<S: AsyncRead + AsyncWrite + Unpin>(socket: &mut WebSocketStream<S>) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s")
            .expect("the socket is open")
            .expect("a valid frame");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => continue,
        }
    }
}

/// The close frame the server sends, skipping what comes before it.
pub async fn close_frame<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut WebSocketStream<S>,
) -> Option<CloseFrame> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("the server acts within 10 s")
        {
            Some(Ok(Message::Close(frame))) => return frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Sends an `auth` frame with `token` and waits for `authenticated`.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut WebSocketStream<S>,
    token: &str,
) {
    send(socket, json!({ "type": "auth", "token": token })).await;
    assert_eq!(next(socket).await["type"], "authenticated");
}

/// A socket authenticated as `user` and subscribed to `me`; its snapshot.
pub async fn me_socket(app: &TestApp, user: &User) -> (Socket, Value) {
    let mut socket = connect(app).await;
    authenticate(&mut socket, &user.token).await;
    let snapshot = subscribe(&mut socket, "me", None).await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    (socket, snapshot)
}

pub async fn subscribe(socket: &mut Socket, channel: &str, since: Option<Value>) -> Value {
    let mut frame = json!({ "type": "subscribe", "channel": channel });
    if let Some(since) = since {
        frame["since"] = since;
    }
    send(socket, frame).await;
    next(socket).await
}

fn members(event: &Value) -> i64 {
    event["active_count"].as_i64().unwrap() + event["waitlist_count"].as_i64().unwrap()
}

async fn sqlite_app(tweak: impl FnOnce(&mut turnout::config::Settings)) -> TestApp {
    spawn_app_with(Backend::Sqlite, tweak).await.unwrap()
}

/// An `auth` for someone else ends the first user's own feeds (`me`,
/// `recs`), each with `unsubscribed`: they must not run on after the first
/// user's token is replaced. A second `me` follows the new user alone.
#[actix_web::test]
async fn an_auth_for_another_user_ends_the_first_users_own_feeds() {
    let app = sqlite_app(|_| {}).await;
    let owner = app.register("owner@example.com").await;
    let theirs = app.published_event(&owner, 10).await;
    let mine = app.published_event(&owner, 10).await;
    let (first, second) = (app.user(), app.user());
    let mut socket = connect(&app).await;
    authenticate(&mut socket, &first.token).await;
    assert_eq!(subscribe(&mut socket, "me", None).await["type"], "snapshot");
    send(
        &mut socket,
        json!({ "type": "subscribe", "channel": "recs" }),
    )
    .await;
    while next(&mut socket).await["channel"] != "recs" {}

    // The same user again (a refreshed token) keeps its feeds, whose
    // updates (the recommendations settling) may come before the answer.
    send(&mut socket, json!({ "type": "auth", "token": first.token })).await;
    loop {
        let frame = next(&mut socket).await;
        assert_ne!(frame["type"], "unsubscribed", "{frame}");
        if frame["type"] == "authenticated" {
            break;
        }
    }
    send(
        &mut socket,
        json!({ "type": "auth", "token": second.token }),
    )
    .await;
    let mut ended = Vec::new();
    loop {
        let frame = next(&mut socket).await;
        match frame["type"].as_str() {
            Some("unsubscribed") => ended.push(frame["channel"].as_str().unwrap().to_owned()),
            Some("authenticated") => break,
            _ => {}
        }
    }
    ended.sort();
    assert_eq!(ended, ["me", "recs"]);

    app.join(&first, theirs).await;
    let snapshot = subscribe(&mut socket, "me", None).await;
    assert_eq!(snapshot["data"]["places"], json!([]), "{snapshot}");
    app.join(&second, mine).await;
    loop {
        let frame = next(&mut socket).await;
        assert_ne!(
            frame["data"]["place"]["event_id"],
            theirs.to_string(),
            "the first user's place reached the second's connection: {frame}"
        );
        if frame["channel"] == "me" && frame["type"] == "update" {
            assert_eq!(frame["data"]["place"]["event_id"], mine.to_string());
            break;
        }
    }
}

/// A join and the event's cancellation committed one straight after the
/// other: the cancellation names nobody and reaches a `me` watcher only once
/// the watcher follows the event, which it begins to do on the join's
/// change. Every place so taken is told as cancelled all the same.
#[actix_web::test]
async fn a_place_cancelled_as_it_is_taken_is_told_on_me() {
    // Appends close together share a commit: the two changes are then
    // routed one straight after the other.
    let app = sqlite_app(|s| s.journal.linger_us = 50_000).await;
    let owner = app.register("owner@example.com").await;
    let person = app.user();
    let (mut socket, _) = me_socket(&app, &person).await;
    let mut taken = std::collections::HashSet::new();
    for _ in 0..40 {
        if taken.len() == 8 {
            break;
        }
        let event = app.published_event(&owner, 10).await;
        let cancel = async {
            // Behind the join in the actor's mailbox, decided while the
            // join commits.
            tokio::time::sleep(Duration::from_millis(1)).await;
            app.as_user(&owner, Method::POST, &format!("/v1/events/{event}/cancel"))
                .send()
                .await
                .unwrap()
        };
        let (joined, cancelled) = tokio::join!(app.try_join(&person, event), cancel);
        assert!(cancelled.status().is_success(), "{}", cancelled.status());
        if joined.unwrap().status().is_success() {
            taken.insert(event.to_string());
        }
    }
    assert!(!taken.is_empty(), "every cancellation came before its join");

    let mut told = std::collections::HashSet::new();
    while told.len() < taken.len() {
        let frame = next(&mut socket).await;
        let place = &frame["data"]["place"];
        if frame["type"] == "update" && place["status"] == "cancelled" {
            told.insert(place["event_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(told, taken);
}

/// A join watched on `me` needs no read of its own: the feeds remember the
/// event's latest change, and the watcher, once it follows the event, reads
/// only if one went by that it missed — a place taken as active, or waiting
/// with nothing moving behind it, is told and followed without one. And a
/// waiting place hears only what may move it: the joins behind it reach
/// nobody, the leave ahead of it moves it up, exactly, with no read. (A
/// server of its own, so that the counts are this test's.)
#[tokio::test]
async fn a_join_watched_on_me_reads_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(Backend::Sqlite, &dir).await.unwrap();
    let server = ServerProcess::start(&url, dir.path(), &[]).await;
    let app = TestApp::attach(&server.address, crate::helpers::JWT_KEY);
    let owner = app.register("owner@example.com").await;
    let (person, first, ahead) = (app.user(), app.user(), app.user());
    let (mut socket, _) = me_socket(&app, &person).await;
    let open = app.published_event(&owner, 10).await;
    let full = app.published_event(&owner, 1).await;
    assert_eq!(app.join(&first, full).await.status(), StatusCode::CREATED);
    assert_eq!(app.join(&ahead, full).await.status(), StatusCode::CREATED);

    assert_eq!(app.join(&person, open).await.status(), StatusCode::CREATED);
    let waiting = body(app.join(&person, full).await).await;
    assert_eq!(waiting["data"]["status"], "waitlisted", "{waiting}");
    assert_eq!(waiting["data"]["position"], 2, "{waiting}");
    let mut told = Vec::new();
    while told.len() < 2 {
        let frame = next(&mut socket).await;
        if frame["type"] == "update" {
            told.push(frame["data"]["reason"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(told, ["joined", "waitlisted"]);
    for _ in 0..5 {
        let behind = app.user();
        assert_eq!(app.join(&behind, full).await.status(), StatusCode::CREATED);
    }
    // Followed: the leave ahead reaches the waiting place, which moves up.
    assert_eq!(app.leave(&ahead, full).await.status(), StatusCode::OK);
    let moved = next(&mut socket).await;
    assert_eq!(moved["data"]["reason"], "position", "{moved}");
    assert_eq!(moved["data"]["place"]["position"], 1, "{moved}");
    assert_eq!(moved["offset"], 3, "nothing told of the joins behind");
    assert_eq!(app.leave(&first, full).await.status(), StatusCode::OK);
    let promoted = next(&mut socket).await;
    assert_eq!(promoted["data"]["reason"], "promoted", "{promoted}");

    let metrics = app.metrics().await;
    let counted = |name| metric(&metrics, name).expect("counted from the start");
    assert_eq!(counted("turnout_me_follow_reads_total"), 0.0);
    assert_eq!(counted("turnout_me_gaps_total"), 0.0);
    assert_eq!(
        counted("turnout_me_changes_handed_total"),
        4.0,
        "the two joins, the leave ahead and the promotion: not the joins behind"
    );
}

/// 1000 joins race the subscription: the snapshot and the updates after it
/// neither overlap nor leave a gap, and the last update is the final state.
#[actix_web::test]
async fn snapshot_then_updates_without_gap_or_duplicate_while_joins_stream_in() {
    // This client reads on the test's one thread, shared with the 1000
    // joining requests, so it may lag far behind: room for every update, so
    // that what is tested is the order, not the slow-consumer close.
    let app = sqlite_app(|s| s.realtime.max_queued_bytes = 4 << 20).await;
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 300).await;
    let users: Vec<User> = (0..1000).map(|_| app.user()).collect();

    let joining = {
        let app = app.clone();
        actix_web::rt::spawn(async move {
            futures_util::future::join_all(users.iter().map(|u| app.join(u, event))).await
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut socket = connect(&app).await;
    let snapshot = subscribe(&mut socket, &format!("event:{event}"), None).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["v"], 1);
    let mut offset = snapshot["offset"].as_u64().unwrap();
    let mut seen = members(&snapshot["data"]["event"]);
    while seen < 1000 {
        let update = next(&mut socket).await;
        assert_eq!(update["type"], "update");
        assert_eq!(update["epoch"], snapshot["epoch"]);
        let committed_at: chrono::DateTime<chrono::Utc> = update["committed_at"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .expect("an update says when its commit happened (RFC 3339)");
        assert!(committed_at <= chrono::Utc::now());
        assert_eq!(
            update["offset"].as_u64().unwrap(),
            offset + 1,
            "no gap in offsets"
        );
        offset += 1;
        let now = members(&update["data"]["event"]);
        assert!(
            now > seen,
            "no update repeats what the snapshot or an earlier update had"
        );
        seen = now;
    }
    for response in joining.await.unwrap() {
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let last = app.event(event).await;
    assert_eq!(
        (
            last["active_count"].as_i64(),
            last["waitlist_count"].as_i64()
        ),
        (Some(300), Some(700))
    );
}

/// Frames carry a channel's canonical name; a client that spelled it
/// otherwise holds one subscription under that name, not two.
#[actix_web::test]
async fn one_channel_under_two_spellings_is_one_subscription() {
    let app = sqlite_app(|_| {}).await;
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 10).await;
    let canonical = format!("event:{event}");
    let shouted = format!("event:{}", event.to_string().to_uppercase());

    let mut socket = connect(&app).await;
    let snapshot = subscribe(&mut socket, &shouted, None).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["channel"], canonical.as_str());
    let again = subscribe(&mut socket, &canonical, None).await;
    assert_eq!(again["type"], "error");
    assert_eq!(again["code"], "already_subscribed");

    send(
        &mut socket,
        json!({ "type": "unsubscribe", "channel": shouted }),
    )
    .await;
    let left = next(&mut socket).await;
    assert_eq!(left["type"], "unsubscribed");
    assert_eq!(left["channel"], canonical.as_str());

    let snapshot = subscribe(&mut socket, &canonical, None).await;
    assert_eq!(snapshot["type"], "snapshot");
    app.join(&app.user(), event).await;
    let update = next(&mut socket).await;
    assert_eq!(update["channel"], canonical.as_str());
    assert_eq!(
        update["offset"].as_u64(),
        Some(snapshot["offset"].as_u64().unwrap() + 1)
    );
}

/// Frames of these `types` on `channel`, in one write, so that the server
/// reads them together.
async fn send_together(socket: &mut Socket, types: &[&str], channel: &str) {
    for kind in types {
        let frame = json!({ "type": kind, "channel": channel }).to_string();
        socket.feed(Message::text(frame)).await.unwrap();
    }
    socket.flush().await.unwrap();
}

/// An unsubscribe sent right behind its subscribe, before the hub (new,
/// loading the event) has answered: the snapshot comes first, then
/// `unsubscribed`, and nothing of the channel after it.
#[actix_web::test]
async fn unsubscribed_is_the_last_frame_of_its_channel() {
    let app = sqlite_app(|_| {}).await;
    let owner = app.register("owner@example.com").await;
    let mut socket = connect(&app).await;
    for round in 0..5 {
        let event = app.published_event(&owner, 10).await;
        let channel = format!("event:{event}");
        send_together(&mut socket, &["subscribe", "unsubscribe"], &channel).await;

        let first = next(&mut socket).await;
        assert_eq!(first["type"], "snapshot", "round {round}: {first}");
        let last = next(&mut socket).await;
        assert_eq!(last["type"], "unsubscribed", "round {round}: {last}");

        app.join(&app.user(), event).await;
        let after = tokio::time::timeout(Duration::from_millis(300), next(&mut socket)).await;
        assert!(
            after.is_err(),
            "round {round}: {after:?} after unsubscribed"
        );
    }
}

/// The same for the user's own feeds, whose snapshot their own actor reads
/// while the session may already have let go of them: nothing of `me` or
/// `recs` follows its `unsubscribed`, not even the snapshot being read.
#[actix_web::test]
async fn unsubscribed_is_the_last_frame_of_a_users_own_feed() {
    let app = sqlite_app(|_| {}).await;
    let owner = app.register("owner@example.com").await;
    let user = app.user();
    let mut socket = connect(&app).await;
    authenticate(&mut socket, &user.token).await;
    for round in 0..5 {
        for channel in ["me", "recs"] {
            send_together(&mut socket, &["subscribe", "unsubscribe"], channel).await;
            // The snapshot, if the server sent one, then any update of this
            // channel sent before it read the unsubscribe (the recommender
            // may hear of an earlier round's event only now).
            let mut frame = next(&mut socket).await;
            if frame["type"] == "snapshot" && frame["channel"] == channel {
                frame = next(&mut socket).await;
            }
            while frame["type"] == "update" && frame["channel"] == channel {
                frame = next(&mut socket).await;
            }
            assert_eq!(frame["type"], "unsubscribed", "round {round}: {frame}");
            assert_eq!(frame["channel"], channel);

            // A place of theirs would be news on both channels.
            let event = app.published_event(&owner, 10).await;
            app.join(&user, event).await;
            let after = tokio::time::timeout(Duration::from_millis(300), next(&mut socket)).await;
            assert!(
                after.is_err(),
                "round {round}: {after:?} after {channel}'s unsubscribed"
            );
        }
    }
}

/// A channel left and asked for again in one write is told in that order:
/// `unsubscribed`, then the new snapshot — a hub's channel (the hub says
/// both, in its order) and the user's own feeds alike.
#[actix_web::test]
async fn a_channel_left_and_asked_for_again_at_once_is_told_in_that_order() {
    let app = sqlite_app(|_| {}).await;
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 10).await;
    let user = app.user();
    let mut socket = connect(&app).await;
    authenticate(&mut socket, &user.token).await;
    for channel in [format!("event:{event}"), "me".into(), "recs".into()] {
        assert_eq!(
            subscribe(&mut socket, &channel, None).await["type"],
            "snapshot"
        );
        for round in 0..5 {
            send_together(&mut socket, &["unsubscribe", "subscribe"], &channel).await;
            // An update sent before the server read the pair is news, not
            // disorder: the recommender may hear of the event published
            // above only after the first snapshot.
            let mut left = next(&mut socket).await;
            while left["type"] == "update" && left["channel"] == channel.as_str() {
                left = next(&mut socket).await;
            }
            assert_eq!(
                left["type"], "unsubscribed",
                "{channel} round {round}: {left}"
            );
            let back = next(&mut socket).await;
            assert_eq!(back["type"], "snapshot", "{channel} round {round}: {back}");
            assert_eq!(back["channel"], channel.as_str());
        }
    }
}

#[actix_web::test]
async fn a_client_resumes_from_its_last_offset() {
    let app = sqlite_app(|_| {}).await;
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 10).await;
    let channel = format!("event:{event}");

    let mut socket = connect(&app).await;
    let snapshot = subscribe(&mut socket, &channel, None).await;
    app.join(&app.user(), event).await;
    let first = next(&mut socket).await;
    let since = json!({ "epoch": first["epoch"], "offset": first["offset"] });
    drop(socket);

    for _ in 0..3 {
        app.join(&app.user(), event).await;
    }
    let mut socket = connect(&app).await;
    let resumed = subscribe(&mut socket, &channel, Some(since)).await;
    assert_eq!(resumed["type"], "resumed");
    assert_eq!(resumed["recovered"], true);
    let from = first["offset"].as_u64().unwrap();
    for i in 1..=3 {
        let missed = next(&mut socket).await;
        assert_eq!(missed["offset"].as_u64().unwrap(), from + i);
        assert_eq!(members(&missed["data"]["event"]), 1 + i as i64);
    }
    // And it stays live.
    app.join(&app.user(), event).await;
    let live = next(&mut socket).await;
    assert_eq!(live["offset"].as_u64().unwrap(), from + 4);
    assert_eq!(snapshot["epoch"], live["epoch"]);
}

/// A resume whose missed updates would fill most of the connection's queue
/// gets a snapshot: replayed, they would overflow it, close the connection
/// (4008) and the client, resuming again, would loop.
#[actix_web::test]
async fn a_resume_bigger_than_half_the_queue_gets_a_snapshot() {
    let app = sqlite_app(|s| s.realtime.max_queued_bytes = 4 * 1024).await;
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 50).await;
    let channel = format!("event:{event}");
    let mut socket = connect(&app).await;
    let snapshot = subscribe(&mut socket, &channel, None).await;
    let since = json!({ "epoch": snapshot["epoch"], "offset": snapshot["offset"] });
    let one_update = {
        app.join(&app.user(), event).await;
        next(&mut socket).await.to_string().len()
    };
    drop(socket);
    // More missed updates than half the queue holds, fewer than the history.
    let missed = 2 * 1024 / one_update + 2;
    assert!(missed < 100, "updates of {one_update} bytes");
    for _ in 0..missed {
        app.join(&app.user(), event).await;
    }

    let mut socket = connect(&app).await;
    let fresh = subscribe(&mut socket, &channel, Some(since)).await;

    assert_eq!(
        (&fresh["type"], &fresh["recovered"]),
        (&json!("snapshot"), &json!(false)),
        "{fresh}"
    );
    assert_eq!(members(&fresh["data"]["event"]), 1 + missed as i64);
}

#[actix_web::test]
async fn a_resume_past_the_history_gets_a_fresh_snapshot() {
    let app = sqlite_app(|s| s.realtime.history = 2).await;
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 10).await;
    let channel = format!("event:{event}");
    let mut socket = connect(&app).await;
    let snapshot = subscribe(&mut socket, &channel, None).await;
    let since = json!({ "epoch": snapshot["epoch"], "offset": snapshot["offset"] });
    drop(socket);

    for _ in 0..5 {
        app.join(&app.user(), event).await;
    }
    let mut socket = connect(&app).await;
    let fresh = subscribe(&mut socket, &channel, Some(since)).await;
    assert_eq!(fresh["type"], "snapshot");
    assert_eq!(fresh["recovered"], false);
    assert_eq!(
        fresh["offset"].as_u64().unwrap(),
        snapshot["offset"].as_u64().unwrap() + 5
    );
    assert_eq!(members(&fresh["data"]["event"]), 5);

    let mut other = connect(&app).await;
    let wrong_epoch = subscribe(
        &mut other,
        &channel,
        Some(json!({ "epoch": "nope", "offset": 1 })),
    )
    .await;
    assert_eq!(wrong_epoch["recovered"], false);
}

#[actix_web::test]
async fn a_venue_channel_lists_upcoming_events_and_their_counts() {
    let app = sqlite_app(|_| {}).await;
    let owner = app.register("owner@example.com").await;
    let venue = app.venue(&owner).await;
    let soon = chrono::Utc::now() + chrono::Duration::days(2);
    let create = |title: &str| {
        app.as_user(&owner, Method::POST, "/v1/events")
            .json(&json!({ "title": title, "venue_id": venue, "starts_at": soon, "capacity": 2 }))
            .send()
    };
    let first = crate::helpers::id_of(&body(create("Early show").await.unwrap()).await);
    app.as_user(&owner, Method::POST, &format!("/v1/events/{first}/publish"))
        .send()
        .await
        .unwrap();

    let mut socket = connect(&app).await;
    let snapshot = subscribe(&mut socket, &format!("venue:{venue}"), None).await;
    let listed = snapshot["data"]["events"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["title"], "Early show");

    app.join(&app.user(), first).await;
    let update = next(&mut socket).await;
    assert_eq!(update["data"]["event"]["places_left"], 1);
    assert_eq!(update["data"]["listed"], true);

    let second = crate::helpers::id_of(&body(create("Late show").await.unwrap()).await);
    app.as_user(
        &owner,
        Method::POST,
        &format!("/v1/events/{second}/publish"),
    )
    .send()
    .await
    .unwrap();
    let published = next(&mut socket).await;
    assert_eq!(published["data"]["event"]["title"], "Late show");
    assert_eq!(published["data"]["listed"], true);

    app.as_user(&owner, Method::POST, &format!("/v1/events/{first}/cancel"))
        .send()
        .await
        .unwrap();
    let cancelled = next(&mut socket).await;
    assert_eq!(cancelled["data"]["event"]["status"], "cancelled");
    assert_eq!(cancelled["data"]["listed"], false);
}

/// An event moved to another venue leaves the first venue's screen and
/// appears on the second's.
#[actix_web::test]
async fn an_event_that_moves_venue_leaves_one_listing_for_the_other() {
    let app = sqlite_app(|_| {}).await;
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 10).await;
    let from = app.event(event).await["venue_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let to = app.venue(&owner).await;

    let mut old_screen = connect(&app).await;
    let listed = subscribe(&mut old_screen, &format!("venue:{from}"), None).await;
    assert_eq!(listed["data"]["events"].as_array().unwrap().len(), 1);
    let mut new_screen = connect(&app).await;
    let empty = subscribe(&mut new_screen, &format!("venue:{to}"), None).await;
    assert_eq!(empty["data"]["events"], json!([]));

    let moved = app
        .as_user(&owner, Method::PATCH, &format!("/v1/events/{event}"))
        .json(&json!({ "venue_id": to }))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), StatusCode::OK);

    let left = next(&mut old_screen).await;
    assert_eq!(left["data"]["event"]["id"], event.to_string());
    assert_eq!(left["data"]["listed"], false);
    let arrived = next(&mut new_screen).await;
    assert_eq!(arrived["data"]["event"]["id"], event.to_string());
    assert_eq!(arrived["data"]["listed"], true);
}

/// A venue's screen shows upcoming events: one leaves it when it starts.
#[actix_web::test]
async fn an_event_leaves_the_venue_listing_when_it_starts() {
    let app = sqlite_app(|_| {}).await;
    let owner = app.register("owner@example.com").await;
    let venue = app.venue(&owner).await;
    // Far enough ahead that setting up never reaches it, near enough that the
    // wait for it stays inside `next`'s 10 s.
    let starts_at = chrono::Utc::now() + chrono::Duration::seconds(8);
    let created = app
        .as_user(&owner, Method::POST, "/v1/events")
        .json(&json!({ "title": "Matinee", "venue_id": venue, "starts_at": starts_at, "capacity": 5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let event = crate::helpers::id_of(&body(created).await);
    app.as_user(&owner, Method::POST, &format!("/v1/events/{event}/publish"))
        .send()
        .await
        .unwrap();

    let mut socket = connect(&app).await;
    let snapshot = subscribe(&mut socket, &format!("venue:{venue}"), None).await;
    assert_eq!(snapshot["data"]["events"].as_array().unwrap().len(), 1);
    let started = next(&mut socket).await;
    assert_eq!(started["data"]["event"]["id"], event.to_string());
    assert_eq!(started["data"]["listed"], false);
    assert_eq!(started["data"]["reason"], "started");
    assert!(chrono::Utc::now() >= starts_at, "not before its start");

    let mut late = connect(&app).await;
    let snapshot = subscribe(&mut late, &format!("venue:{venue}"), None).await;
    assert_eq!(snapshot["data"]["events"], json!([]));
}

#[actix_web::test]
async fn the_feed_reports_publishing_and_filling_up_not_every_join() {
    let app = sqlite_app(|_| {}).await;
    let owner = app.register("owner@example.com").await;
    let mut socket = connect(&app).await;
    let snapshot = subscribe(&mut socket, "feed?tag=jazz", None).await;
    assert_eq!(snapshot["data"]["events"], json!([]));

    let event = app.published_event(&owner, 20).await;
    let published = next(&mut socket).await;
    assert_eq!(published["data"]["reason"], "published");
    for _ in 0..18 {
        app.join(&app.user(), event).await;
    }
    let filling = next(&mut socket).await;
    assert_eq!(filling["data"]["reason"], "filling_up");
    assert_eq!(filling["data"]["event"]["places_left"], 2);
    app.join(&app.user(), event).await;
    app.join(&app.user(), event).await;
    let full = next(&mut socket).await;
    assert_eq!(full["data"]["reason"], "full");
    assert_eq!(
        full["offset"].as_u64().unwrap(),
        published["offset"].as_u64().unwrap() + 2
    );
}

/// Malformed frames and `auth`s with a token that does not verify are
/// strikes: each gets an error, and past `max_strikes` the connection is
/// closed.
#[actix_web::test]
async fn malformed_frames_and_forged_tokens_get_errors_then_the_connection_is_closed() {
    let app = sqlite_app(|s| s.realtime.max_strikes = 3).await;
    let mut socket = connect(&app).await;
    send(&mut socket, json!({ "type": "ping" })).await;
    assert_eq!(next(&mut socket).await["type"], "pong");
    socket.send(Message::text("{not json")).await.unwrap();
    let error = next(&mut socket).await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("bad_frame"))
    );
    send(
        &mut socket,
        json!({ "type": "subscribe", "channel": "nowhere" }),
    )
    .await;
    assert!(
        next(&mut socket).await["message"]
            .as_str()
            .unwrap()
            .contains("unknown channel")
    );
    send(&mut socket, json!({ "type": "auth", "token": "forged" })).await;
    assert_eq!(next(&mut socket).await["code"], "unauthorized");
    socket.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    let close = close_frame(&mut socket).await;
    assert_eq!(u16::from(close.unwrap().code), 1008);
}

#[actix_web::test]
async fn connection_limits_and_origins_are_enforced() {
    let app = sqlite_app(|s| {
        s.realtime.max_connections_per_ip = 2;
        s.realtime.allowed_origins = vec!["https://kiosk.example.org".into()];
    })
    .await;
    let url = app.address.replace("http://", "ws://") + "/v1/ws";
    let mut evil = url.clone().into_client_request().unwrap();
    evil.headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    match connect_async(evil).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 403)
        }
        other => panic!("a foreign origin must be refused: {other:?}"),
    }
    let mut kiosk = url.clone().into_client_request().unwrap();
    kiosk
        .headers_mut()
        .insert("Origin", "https://kiosk.example.org".parse().unwrap());
    let _kiosk = connect_async(kiosk)
        .await
        .expect("a listed origin is let in");
    let _other = connect(&app).await;
    match connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            crate::helpers::assert_connections_refused_to_the_client(&response, 2)
        }
        other => panic!("a third connection from one address must be refused: {other:?}"),
    }

    let plain = app.request(Method::GET, "/v1/ws").send().await.unwrap();
    assert_error(plain, StatusCode::BAD_REQUEST, "not_a_websocket").await;
}

/// The server's own cap on sockets, reached by many addresses: that is the
/// server's condition, `503 overloaded` (another node may have room), and
/// the refusals are counted by which cap refused them.
#[actix_web::test]
async fn a_full_server_refuses_sockets_with_503_and_counts_why() {
    let app = sqlite_app(|s| {
        s.realtime.max_connections = 2;
        s.realtime.max_connections_per_ip = 0;
    })
    .await;
    let url = app.address.replace("http://", "ws://") + "/v1/ws";
    let _first = connect(&app).await;
    let _second = connect(&app).await;
    match connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "overloaded", "{body}");
        }
        other => panic!("a third socket on a full server must be refused: {other:?}"),
    }
    let page = app.metrics().await;
    assert!(
        crate::helpers::labelled(
            &page,
            "turnout_ws_connections_refused_total",
            r#"reason="server""#
        ) >= 1.0,
        "counted by reason"
    );
}

/// A hub stops once it has had no subscribers for `hub_idle_secs` (here 0):
/// a client that comes back is served by a new hub, under a new epoch, with
/// a snapshot every time. (A subscribe that reaches a hub in the instant it
/// stops is retried on the next one; that window is too narrow to hit here.)
#[actix_web::test]
async fn a_channel_whose_hub_stopped_is_served_by_a_new_one() {
    let app = sqlite_app(|s| s.realtime.hub_idle_secs = 0).await;
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 10).await;
    let channel = format!("event:{event}");
    let mut socket = connect(&app).await;
    let mut epochs = std::collections::HashSet::new();
    let mut last = None;
    for _ in 0..5 {
        // The idle check runs every 100 ms; on a busy machine later: come
        // back until a new hub answers.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let epoch = loop {
            let snapshot = subscribe(&mut socket, &channel, None).await;
            assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
            let epoch = snapshot["epoch"].as_str().unwrap().to_owned();
            send(
                &mut socket,
                json!({ "type": "unsubscribe", "channel": channel }),
            )
            .await;
            assert_eq!(next(&mut socket).await["type"], "unsubscribed");
            if last.as_ref() != Some(&epoch) {
                break epoch;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the idle hub never stopped"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        epochs.insert(epoch.clone());
        last = Some(epoch);
    }
    assert_eq!(epochs.len(), 5, "each return met a new hub");
}

/// Behind a trusted proxy, the per-address limit counts the clients it
/// forwards for, not the proxy.
#[actix_web::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_connection_limit() {
    let app = sqlite_app(|s| {
        s.realtime.max_connections_per_ip = 1;
        s.rate_limits.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let url = app.address.replace("http://", "ws://") + "/v1/ws";
    let forwarded_for = |client: &str| {
        let mut request = url.clone().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("X-Forwarded-For", client.parse().unwrap());
        connect_async(request)
    };
    let _first = forwarded_for("203.0.113.7").await.expect("one client");
    let _second = forwarded_for("203.0.113.8").await.expect("another client");
    match forwarded_for("203.0.113.7").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            crate::helpers::assert_connections_refused_to_the_client(&response, 1)
        }
        other => panic!("the first client's second connection must be refused: {other:?}"),
    }
}

/// Twenty `feed?tag=…` channels whose snapshots are about 300 KB each: a
/// client that subscribes to all of them and reads nothing overflows any
/// reasonable queue.
async fn twenty_big_feeds(app: &TestApp) -> Vec<String> {
    let owner = app.register("owner@example.com").await;
    let venue = app.venue(&owner).await;
    let tags: Vec<String> = (0..20).map(|i| format!("tag{i}")).collect();
    let description = "x".repeat(4000);
    let soon = chrono::Utc::now() + chrono::Duration::days(2);
    for i in 0..60 {
        let created = app
            .as_user(&owner, Method::POST, "/v1/events")
            .json(
                &json!({ "title": format!("Show {i}"), "venue_id": venue, "starts_at": soon,
                           "capacity": 5, "tags": tags, "description": description }),
            )
            .send()
            .await
            .unwrap();
        let id = crate::helpers::id_of(&body(created).await);
        app.as_user(&owner, Method::POST, &format!("/v1/events/{id}/publish"))
            .send()
            .await
            .unwrap();
    }
    tags.iter().map(|tag| format!("feed?tag={tag}")).collect()
}

/// A client that stops reading is closed with 4008 once its queue passes the
/// byte budget, instead of the server buffering for it without bound, and
/// counted. (A server of its own: the count is the process's.)
#[tokio::test]
async fn a_slow_consumer_is_closed_with_4008() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(Backend::Sqlite, &dir).await.unwrap();
    let budget = (256 * 1024).to_string();
    let server = ServerProcess::start(
        &url,
        dir.path(),
        &[("TURNOUT_REALTIME__MAX_QUEUED_BYTES", budget.as_str())],
    )
    .await;
    let app = TestApp::attach(&server.address, crate::helpers::JWT_KEY);
    let feeds = twenty_big_feeds(&app).await;
    let mut socket = connect(&app).await;
    for channel in &feeds {
        send(
            &mut socket,
            json!({ "type": "subscribe", "channel": channel }),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let code = close_frame(&mut socket).await.map(|f| u16::from(f.code));
    assert_eq!(code, Some(4008));
    let closed = metric(&app.metrics().await, "turnout_ws_slow_consumers_total");
    assert_eq!(closed, Some(1.0));
}

/// A client that never reads again, with its receive window full, cannot
/// even be sent its close frame; the kernel's user timeout then drops the
/// connection, and with it the client's place within the limits.
#[cfg(target_os = "linux")]
#[actix_web::test]
async fn a_client_that_never_reads_again_loses_its_place() {
    let app = sqlite_app(|s| {
        s.realtime.max_queued_bytes = 256 * 1024;
        s.realtime.max_connections_per_ip = 1;
        s.http.tcp_user_timeout_secs = 2;
    })
    .await;
    let feeds = twenty_big_feeds(&app).await;
    let url = app.address.replace("http://", "ws://") + "/v1/ws";
    // A small receive buffer: the twenty snapshots (~6 MB) then fill the
    // window and the server's send buffer long before they are written.
    let stream = {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let address = app.address.trim_start_matches("http://").parse().unwrap();
        MaybeTlsStream::Plain(socket.connect(address).await.unwrap())
    };
    let (mut stuck, _) = tokio_tungstenite::client_async(url.clone(), stream)
        .await
        .expect("the first connection is admitted");
    for channel in &feeds {
        send(
            &mut stuck,
            json!({ "type": "subscribe", "channel": channel }),
        )
        .await;
    }
    let admitted = || async {
        match connect_async(url.clone()).await {
            Ok(_) => true,
            Err(tokio_tungstenite::tungstenite::Error::Http(response))
                if response.status().as_u16() == 429 =>
            {
                false
            }
            other => panic!("neither admitted nor refused with 429: {other:?}"),
        }
    };
    assert!(
        !admitted().await,
        "the stuck client still holds the only place"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !admitted().await {
        assert!(
            std::time::Instant::now() < deadline,
            "the stuck connection was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(stuck);
}

/// A client that stops answering is closed once it has been silent for the
/// timeout; one that answers the server's pings stays.
#[actix_web::test]
async fn a_silent_client_is_closed_after_the_heartbeat_timeout() {
    let app = sqlite_app(|s| {
        s.realtime.heartbeat_secs = 1;
        s.realtime.client_timeout_secs = 2;
    })
    .await;
    let mut silent = connect(&app).await;
    let mut lively = connect(&app).await;
    let started = std::time::Instant::now();
    // The lively client reads (tungstenite answers pings while reading) and
    // pings now and then; the silent one does nothing for 4 s.
    while started.elapsed() < Duration::from_secs(4) {
        send(&mut lively, json!({ "type": "ping" })).await;
        assert_eq!(next(&mut lively).await["type"], "pong");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let closed = close_frame(&mut silent).await;
    assert_eq!(closed.unwrap().reason.as_str(), "heartbeat timeout");
    send(&mut lively, json!({ "type": "ping" })).await;
    assert_eq!(next(&mut lively).await["type"], "pong");
}

#[actix_web::test]
async fn a_radius_feed_hears_only_about_venues_inside_the_circle() {
    let app = sqlite_app(|_| {}).await;
    let owner = app.register("owner@example.com").await;
    let mut socket = connect(&app).await;
    // Centred on Amsterdam, 10 km.
    let snapshot = subscribe(&mut socket, "feed?near=52.3676,4.9041,10", None).await;
    assert_eq!(snapshot["data"]["events"], json!([]));

    let far_venue = app
        .venue_at(&owner, "Rotterdam hall", (51.9244, 4.4777))
        .await;
    let soon = chrono::Utc::now() + chrono::Duration::days(2);
    app.published_as(
        &owner,
        json!({ "title": "Far away", "venue_id": far_venue, "starts_at": soon, "capacity": 5 }),
    )
    .await;

    let near = app.published_event(&owner, 5).await; // at the Blue Room, in Amsterdam
    let update = next(&mut socket).await;
    assert_eq!(
        update["data"]["event"]["id"],
        near.to_string(),
        "the far event was never sent"
    );
    assert_eq!(
        update["offset"].as_u64().unwrap(),
        snapshot["offset"].as_u64().unwrap() + 1
    );
}

/// A radius feed lists the soonest events inside its circle, however many
/// sooner ones are elsewhere: 500 events at a venue just outside the
/// circle (inside the box the database selects by) start before the one
/// inside it.
#[actix_web::test]
async fn a_radius_feed_lists_its_circles_events_however_many_start_sooner_elsewhere() {
    let app = sqlite_app(|_| {}).await;
    let owner = app.register("owner@example.com").await;
    // 10 km around (52.37, 4.90); this venue is 7.8 km north and 7.5 km
    // east of the centre: 10.8 km away.
    let corner = app.venue_at(&owner, "Corner hall", (52.44, 5.01)).await;
    let soon = chrono::Utc::now() + chrono::Duration::days(1);
    futures_util::stream::iter(0..500)
        .for_each_concurrent(16, |i| {
            let starts_at = soon + chrono::Duration::minutes(i);
            let draft = json!({ "title": format!("Corner {i}"), "venue_id": corner,
                                "starts_at": starts_at, "capacity": 5 });
            let (app, owner) = (&app, &owner);
            async move {
                app.published_as(owner, draft).await;
            }
        })
        .await;
    let inside = app.published_event(&owner, 5).await; // at the Blue Room, 0.7 km away, in a week

    let mut socket = connect(&app).await;
    let snapshot = subscribe(&mut socket, "feed?near=52.37,4.90,10", None).await;
    let listed: Vec<&str> = snapshot["data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [inside.to_string()]);
    let city = subscribe(&mut socket, "feed", None).await;
    assert_eq!(
        city["data"]["events"].as_array().unwrap().len(),
        500,
        "the city feed lists the 500 soonest, all at the corner"
    );
}

/// A raw connection to the server, for what a WebSocket client library
/// would not send: bytes written as they are, read until the server closes.
async fn raw(app: &TestApp) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap()
}

fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A client may send its first frames right behind the upgrade request,
/// before it has read the 101: the server read them with the request, and
/// answers them once the socket is the session's.
#[actix_web::test]
async fn frames_sent_with_the_upgrade_request_are_answered() {
    use actix_codec::{Decoder, Encoder};
    use actix_http::ws::{Codec, Frame, Message as WsMessage};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = sqlite_app(|_| {}).await;
    let mut stream = raw(&app).await;
    let mut bytes = actix_web::web::BytesMut::from(upgrade_request("/v1/ws").as_bytes());
    let mut codec = Codec::new().client_mode();
    for _ in 0..2 {
        codec
            .encode(
                WsMessage::Text(json!({ "type": "ping" }).to_string().into()),
                &mut bytes,
            )
            .unwrap();
    }
    stream.write_all(&bytes).await.unwrap();

    let mut read = actix_web::web::BytesMut::new();
    let head_end = loop {
        if let Some(at) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        assert!(stream.read_buf(&mut read).await.unwrap() > 0);
    };
    let head = String::from_utf8_lossy(&read[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("x-request-id:"),
        "the API's middleware answered the upgrade: {head}"
    );
    let _ = read.split_to(head_end);
    let mut pongs = 0;
    while pongs < 2 {
        match codec.decode(&mut read).unwrap() {
            Some(Frame::Text(text)) => {
                let frame: Value = serde_json::from_slice(&text).unwrap();
                assert_eq!(frame["type"], "pong");
                pongs += 1;
            }
            Some(_) => {}
            None => {
                let n = tokio::time::timeout(Duration::from_secs(10), stream.read_buf(&mut read))
                    .await
                    .expect("the server answers")
                    .unwrap();
                assert!(n > 0, "the server closed before answering");
            }
        }
    }
}

/// An upgrade request anywhere but `/v1/ws` is answered as that path would
/// answer it, and the connection is closed: only the socket route upgrades.
#[actix_web::test]
async fn an_upgrade_request_elsewhere_is_answered_as_usual_then_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = sqlite_app(|_| {}).await;
    for (path, status) in [("/health", "200"), ("/v1/nowhere", "404")] {
        let mut stream = raw(&app).await;
        stream
            .write_all(upgrade_request(path).as_bytes())
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("the server closes the connection")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer).to_lowercase();
        assert!(
            answer.starts_with(&format!("http/1.1 {status}")),
            "{path}: {answer}"
        );
        let head = &answer[..answer.find("\r\n\r\n").expect("a whole head")];
        assert!(head.contains("\r\nconnection: close"), "{path}: {head}");
        assert!(!head.contains("upgrade"), "{path}: {head}");
    }
}

/// With hubs on several threads (`realtime.hub_threads`), each channel's
/// hub lives on one of them and writes to its subscribers from there: every
/// subscriber hears its own channel's updates, in order.
#[actix_web::test]
async fn hubs_on_several_threads_each_serve_their_channels() {
    let app = sqlite_app(|s| s.realtime.hub_threads = 3).await;
    let owner = app.register("owner@example.com").await;
    let mut watched = Vec::new();
    for _ in 0..6 {
        let event = app.published_event(&owner, 10).await;
        let mut socket = connect(&app).await;
        let snapshot = subscribe(&mut socket, &format!("event:{event}"), None).await;
        assert_eq!(snapshot["type"], "snapshot");
        watched.push((event, socket, snapshot["offset"].as_u64().unwrap()));
    }
    for round in 1..=2 {
        for (event, _, _) in &watched {
            app.join(&app.user(), *event).await;
        }
        for (event, socket, offset) in &mut watched {
            let update = next(socket).await;
            assert_eq!(update["channel"], format!("event:{event}"));
            assert_eq!(update["offset"].as_u64(), Some(*offset + round));
            assert_eq!(members(&update["data"]["event"]), round as i64);
        }
    }
}

/// Every frame a hub writes counts in `turnout_ws_messages_sent_total`, and
/// each delivery once in `turnout_ws_fanout_seconds` (timed in groups), so
/// three subscribers of one venue add three of each. (A server of its own:
/// the metrics are the process's.)
#[tokio::test]
async fn each_delivery_of_an_update_is_counted_and_timed() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(Backend::Sqlite, &dir).await.unwrap();
    let server = ServerProcess::start(&url, dir.path(), &[]).await;
    let app = TestApp::attach(&server.address, crate::helpers::JWT_KEY);
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 10).await;
    let venue = app.event(event).await["venue_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut socket = connect(&app).await;
        subscribe(&mut socket, &format!("venue:{venue}"), None).await;
        sockets.push(socket);
    }
    let counts = |page: &str| {
        (
            metric(page, "turnout_ws_messages_sent_total").unwrap_or(0.0),
            metric(page, "turnout_ws_fanout_seconds_count").unwrap_or(0.0),
        )
    };
    // A snapshot is counted just after it is written, so perhaps after the
    // client read it: the three are counted before the count is taken.
    let mut before = counts(&app.metrics().await);
    for _ in 0..100 {
        if before.0 >= 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        before = counts(&app.metrics().await);
    }
    let (sent, timed) = before;

    app.join(&app.user(), event).await;
    for socket in &mut sockets {
        assert_eq!(next(socket).await["type"], "update");
    }
    // The hub records the fan-out once it has written to every subscriber:
    // just after the frames are on the wire.
    let expected = (sent + 3.0, timed + 3.0);
    let mut seen = counts(&app.metrics().await);
    for _ in 0..100 {
        if seen == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = counts(&app.metrics().await);
    }
    assert_eq!(seen, expected, "a frame and an observation per subscriber");
}
