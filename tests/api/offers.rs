//! The grown-up waitlist over HTTP: parties, offers that pass on (declined,
//! left, run out) until one is accepted, the views that count offered
//! places, and an offer's deadline kept across a `kill -9`.

use std::time::Duration;

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    Backend, JWT_KEY, TestApp, User, assert_error, body, fresh_database, metric, spawn_app_with,
    wait_until,
};
use crate::process::ServerProcess;
use crate::realtime::{self, me_socket};

/// An event of capacity 1 that holds a freed place for `hold_secs`.
pub(crate) async fn offer_event(app: &TestApp, owner: &User, hold_secs: i64) -> Uuid {
    app.published_event_with(
        owner,
        1,
        json!({ "waitlist_mode": "offer", "offer_hold_secs": hold_secs }),
    )
    .await
}

async fn join_party(app: &TestApp, user: &User, event: Uuid, seats: Value) -> Response {
    app.as_user(user, Method::POST, &format!("/v1/events/{event}/join"))
        .header("Idempotency-Key", Uuid::new_v4().to_string())
        .json(&json!({ "seats": seats }))
        .send()
        .await
        .unwrap()
}

/// The caller's membership of `event`, from their list of joins.
pub(crate) async fn membership(app: &TestApp, user: &User, event: Uuid) -> Value {
    let mine = body(
        app.as_user(user, Method::GET, "/v1/me/joins")
            .send()
            .await
            .unwrap(),
    )
    .await;
    mine["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["event_id"] == event.to_string())
        .cloned()
        .unwrap_or(Value::Null)
}

async fn an_offer_passes_on_until_someone_accepts_it(app: TestApp) {
    let owner = app.register("owner@example.com").await;
    let event = offer_event(&app, &owner, 600).await;
    let [a, b, c, d, e] = [(); 5].map(|_| app.user());
    for u in [&a, &b, &c, &d] {
        app.join(u, event).await;
    }
    assert_error(
        app.answer_offer(&b, event, "accept", None).await,
        StatusCode::CONFLICT,
        "no_offer",
    )
    .await;

    // A leave makes an offer to the first waiter, and holds the place.
    let before = chrono::Utc::now();
    assert_eq!(app.leave(&a, event).await.status(), StatusCode::OK);
    let offered = membership(&app, &b, event).await;
    assert_eq!(offered["status"], "offered");
    let expires_at: chrono::DateTime<chrono::Utc> = offered["offer_expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(expires_at >= before + chrono::Duration::seconds(600));
    assert!(expires_at <= chrono::Utc::now() + chrono::Duration::seconds(600));
    let seen = app.event(event).await;
    assert_eq!(
        (
            &seen["active_count"],
            &seen["offered_seats"],
            &seen["places_left"],
            &seen["waitlist_mode"]
        ),
        (&json!(0), &json!(1), &json!(0), &json!("offer"))
    );
    let roster = app.attendees(&owner, event).await;
    let statuses: Vec<(&str, &Value)> = roster
        .iter()
        .map(|m| (m["status"].as_str().unwrap(), &m["position"]))
        .collect();
    assert_eq!(
        statuses,
        [
            ("offered", &Value::Null),
            ("waitlisted", &json!(1)),
            ("waitlisted", &json!(2))
        ]
    );
    let late = body(app.join(&e, event).await).await;
    assert_eq!(
        (&late["data"]["status"], &late["data"]["position"]),
        (&json!("waitlisted"), &json!(3)),
        "a held place is not free"
    );

    // Declined: the next waiter has it at once. A replay answers the same.
    let decline = || {
        app.as_user(
            &b,
            Method::POST,
            &format!("/v1/events/{event}/offer/decline"),
        )
        .header("Idempotency-Key", "decline-1")
        .send()
    };
    let declined = decline().await.unwrap();
    assert_eq!(declined.status(), StatusCode::OK);
    assert_eq!(body(declined).await["data"]["status"], "declined");
    let again = decline().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["Idempotent-Replayed"], "true");
    assert_eq!(body(again).await["data"]["status"], "declined");
    assert_eq!(membership(&app, &c, event).await["status"], "offered");

    // Accepted: active; accepting again changes nothing; nobody else may.
    let accepted = body(app.answer_offer(&c, event, "accept", None).await).await;
    assert_eq!(accepted["data"]["status"], "active");
    let twice = app.answer_offer(&c, event, "accept", None).await;
    assert_eq!(twice.status(), StatusCode::OK);
    assert_eq!(body(twice).await["data"]["status"], "active");
    assert_error(
        app.answer_offer(&d, event, "accept", None).await,
        StatusCode::CONFLICT,
        "no_offer",
    )
    .await;
    let seen = app.event(event).await;
    assert_eq!(
        (&seen["active_count"], &seen["offered_seats"]),
        (&json!(1), &json!(0))
    );

    // Leaving with an offer in hand passes it on too.
    app.leave(&c, event).await;
    assert_eq!(membership(&app, &d, event).await["status"], "offered");
    app.leave(&d, event).await;
    assert_eq!(membership(&app, &e, event).await["status"], "offered");

    // The history tells it all, in order, page by page and as CSV.
    let history = history_of(&app, &owner, event).await;
    let told: Vec<(&str, Option<Uuid>)> = history
        .iter()
        .map(|h| {
            let who = h["user_id"].as_str().map(|u| u.parse().unwrap());
            (h["what"].as_str().unwrap(), who)
        })
        .collect();
    assert_eq!(
        told,
        [
            ("created", None),
            ("published", None),
            ("joined", Some(a.id)),
            ("waitlisted", Some(b.id)),
            ("waitlisted", Some(c.id)),
            ("waitlisted", Some(d.id)),
            ("left", Some(a.id)),
            ("offered", Some(b.id)),
            ("waitlisted", Some(e.id)),
            ("declined", Some(b.id)),
            ("offered", Some(c.id)),
            ("accepted", Some(c.id)),
            ("left", Some(c.id)),
            ("offered", Some(d.id)),
            ("left", Some(d.id)),
            ("offered", Some(e.id)),
        ]
    );
    assert_eq!(
        history[7]["why"],
        "served from the waitlist when a member left"
    );
    assert_eq!(
        history[10]["why"],
        "served from the waitlist when an offer was declined"
    );
    assert_eq!(history[7]["seats"], 1);
    assert!(history[7]["offer_expires_at"].is_string());
    let versions: Vec<i64> = history
        .iter()
        .map(|h| h["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, (1..=16).collect::<Vec<_>>());

    let csv = app
        .as_user(
            &owner,
            Method::GET,
            &format!("/v1/events/{event}/history?limit=100"),
        )
        .header("Accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = csv.text().await.unwrap();
    let mut rows = text.lines();
    assert_eq!(
        rows.next(),
        Some("version,at,what,user_id,seats,why,offer_expires_at,capacity")
    );
    let rows: Vec<Vec<&str>> = rows.map(|r| r.split(',').collect()).collect();
    assert_eq!(rows.len(), 16);
    assert_eq!(
        (rows[7][2], rows[7][3]),
        ("offered", b.id.to_string().as_str())
    );

    assert_error(
        app.as_user(&b, Method::GET, &format!("/v1/events/{event}/history"))
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
        "not_owner",
    )
    .await;
}

/// Every entry of an event's history, through pages of five.
async fn history_of(app: &TestApp, owner: &User, event: Uuid) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut path = format!("/v1/events/{event}/history?limit=5");
    loop {
        let page = app.as_user(owner, Method::GET, &path).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let next = page
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_owned());
        let page = body(page).await;
        entries.extend(page["data"].as_array().unwrap().iter().cloned());
        match (next, page["next_cursor"].as_str()) {
            (Some(link), Some(cursor)) => {
                assert!(link.contains(cursor), "{link}");
                path = link
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_owned();
            }
            (None, None) => return entries,
            other => panic!("the Link header and next_cursor disagree: {other:?}"),
        }
    }
}

async fn parties_take_seats_in_order(app: TestApp) {
    let owner = app.register("owner@example.com").await;
    let event = app
        .published_event_with(&owner, 4, json!({ "max_party": 3 }))
        .await;
    let [a, b, c] = [(); 3].map(|_| app.user());

    for (seats, status, code) in [
        (
            json!(4),
            StatusCode::UNPROCESSABLE_ENTITY,
            "party_too_large",
        ),
        (
            json!(0),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!(21),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!("two"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
    ] {
        assert_error(join_party(&app, &a, event, seats).await, status, code).await;
    }
    let junk = app
        .as_user(&a, Method::POST, &format!("/v1/events/{event}/join"))
        .header("Idempotency-Key", "junk")
        .header("content-type", "application/json")
        .body("{seats")
        .send()
        .await
        .unwrap();
    assert_error(junk, StatusCode::BAD_REQUEST, "malformed_json").await;
    assert_eq!(app.event(event).await["active_count"], 0, "nothing changed");

    let joined = body(join_party(&app, &a, event, json!(3)).await).await;
    assert_eq!(
        (&joined["data"]["status"], &joined["data"]["seats"]),
        (&json!("active"), &json!(3))
    );
    let waiting = body(join_party(&app, &b, event, json!(2)).await).await;
    assert_eq!(waiting["data"]["status"], "waitlisted");
    let behind = body(join_party(&app, &c, event, json!(1)).await).await;
    assert_eq!(
        behind["data"]["position"], 2,
        "strict order: one place free, but a party waits ahead"
    );

    let first_fit = app
        .as_user(&owner, Method::PATCH, &format!("/v1/events/{event}"))
        .json(&json!({ "waitlist_fill": "first_fit" }))
        .send()
        .await
        .unwrap();
    assert_eq!(first_fit.status(), StatusCode::OK);
    let seen = body(first_fit).await["data"].clone();
    assert_eq!(
        (
            &seen["waitlist_fill"],
            &seen["active_count"],
            &seen["waitlist_count"]
        ),
        (&json!("first_fit"), &json!(4), &json!(2)),
        "the party of one behind took the place the party of two could not use"
    );
    assert_eq!(membership(&app, &c, event).await["status"], "active");

    for (patch, code) in [
        (json!({ "offer_hold_secs": 59 }), "validation_failed"),
        (json!({ "max_party": 21 }), "validation_failed"),
        (json!({ "waitlist_mode": "lottery" }), "validation_failed"),
        (json!({ "capacity": 3 }), "capacity_below_active"),
    ] {
        let refused = app
            .as_user(&owner, Method::PATCH, &format!("/v1/events/{event}"))
            .json(&patch)
            .send()
            .await
            .unwrap();
        let status = refused.status();
        assert!(status.is_client_error(), "{patch}: {status}");
        assert_error(refused, status, code).await;
    }
}

/// The `me` channel follows one person's place: its position, the offer,
/// the warning before the offer runs out, and the acceptance.
async fn the_me_channel_follows_my_place(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |settings| {
        settings.offers.warn_before_secs = 57;
    })
    .await
    else {
        return;
    };
    let owner = app.register("owner@example.com").await;
    let event = offer_event(&app, &owner, 60).await;
    let [a, b, me] = [(); 3].map(|_| app.user());
    let mut anonymous = realtime::connect(&app).await;
    let refused = realtime::subscribe(&mut anonymous, "me", None).await;
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    let (mut socket, snapshot) = me_socket(&app, &me).await;
    assert_eq!(snapshot["data"]["places"], json!([]));

    app.join(&a, event).await;
    app.join(&b, event).await;
    app.join(&me, event).await;
    let update = realtime::next(&mut socket).await;
    // The one read the watcher makes after its snapshot may, on a slow
    // machine, see the join before the change arrives: then it is told as
    // `refreshed`, and the change, older, is not told twice.
    let reason = update["data"]["reason"].as_str().unwrap();
    assert!(["waitlisted", "refreshed"].contains(&reason), "{update}");
    assert_eq!(update["data"]["place"]["status"], "waitlisted");
    assert_eq!(update["data"]["place"]["position"], 2);
    assert_eq!(update["offset"], 1);

    app.leave(&b, event).await;
    let moved = realtime::next(&mut socket).await;
    // The read the watcher makes once it follows the event it joined may
    // run after this leave: then the move is told as `refreshed`, once.
    let reason = moved["data"]["reason"].as_str().unwrap();
    assert!(["position", "refreshed"].contains(&reason), "{moved}");
    assert_eq!(moved["data"]["place"]["position"], 1, "{moved}");
    assert_eq!(moved["offset"], 2, "{moved}");

    app.leave(&a, event).await;
    let offered = realtime::next(&mut socket).await;
    assert_eq!(offered["data"]["reason"], "offered", "{offered}");
    assert_eq!(offered["data"]["place"]["status"], "offered");
    let deadline = offered["data"]["place"]["offer_expires_at"].clone();
    assert!(deadline.is_string());

    // 60 s hold, warned 57 s before: about 3 s after the offer.
    let warning = realtime::next(&mut socket).await;
    assert_eq!(warning["data"]["reason"], "offer_expiring", "{warning}");
    assert_eq!(warning["data"]["place"]["offer_expires_at"], deadline);

    app.answer_offer(&me, event, "accept", None).await;
    let accepted = realtime::next(&mut socket).await;
    assert_eq!(
        (
            &accepted["data"]["reason"],
            &accepted["data"]["place"]["status"]
        ),
        (&json!("accepted"), &json!("active")),
        "{accepted}"
    );
    assert_eq!(accepted["offset"], 5);

    // A new subscription starts from the place as it stands.
    let (_again, snapshot) = me_socket(&app, &me).await;
    let places = snapshot["data"]["places"].as_array().unwrap();
    assert_eq!(places.len(), 1);
    assert_eq!(
        (
            &places[0]["event_id"],
            &places[0]["status"],
            &places[0]["seats"]
        ),
        (&json!(event), &json!("active"), &json!(1))
    );
}

#[actix_web::test]
async fn sqlite_the_me_channel_follows_my_place() {
    the_me_channel_follows_my_place(Backend::Sqlite).await;
}

#[actix_web::test]
async fn postgres_the_me_channel_follows_my_place() {
    the_me_channel_follows_my_place(Backend::Postgres).await;
}

crate::on_both_backends!(
    an_offer_passes_on_until_someone_accepts_it,
    parties_take_seats_in_order,
    a_cancellation_reaches_every_place_holder_on_me,
);

/// A cancellation names nobody, yet it ends every place: the active
/// member's, the offered one's and the waiter's `me` feeds each hear it.
async fn a_cancellation_reaches_every_place_holder_on_me(app: TestApp) {
    let owner = app.register("owner@example.com").await;
    let event = app
        .published_event_with(
            &owner,
            2,
            json!({ "waitlist_mode": "offer", "offer_hold_secs": 600 }),
        )
        .await;
    let [leaver, active, offered, waiting] = [(); 4].map(|_| app.user());
    for u in [&leaver, &active, &offered, &waiting] {
        app.join(u, event).await;
    }
    assert_eq!(app.leave(&leaver, event).await.status(), StatusCode::OK);
    let mut sockets = Vec::new();
    for (user, status) in [
        (&active, "active"),
        (&offered, "offered"),
        (&waiting, "waitlisted"),
    ] {
        let (socket, snapshot) = me_socket(&app, user).await;
        assert_eq!(
            snapshot["data"]["places"][0]["status"], status,
            "{snapshot}"
        );
        sockets.push(socket);
    }

    let cancelled = app
        .as_user(&owner, Method::POST, &format!("/v1/events/{event}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);

    for socket in &mut sockets {
        let update = realtime::next(socket).await;
        assert_eq!(
            (
                &update["data"]["place"]["status"],
                &update["data"]["place"]["event_id"]
            ),
            (&json!("cancelled"), &json!(event)),
            "{update}"
        );
        // The one read the watcher makes after its snapshot may, on a slow
        // machine, find the place cancelled before the change arrives: then
        // it is told as `refreshed`, and the change, no newer, not again.
        let reason = update["data"]["reason"].as_str().unwrap();
        assert!(["cancelled", "refreshed"].contains(&reason), "{update}");
    }
}

/// An offer made before a `kill -9` still runs out on time after the
/// restart: the deadline is in the event's state, the sweep wakes the
/// event, and its timer passes the offer on. Before the kill, the idle
/// actor leaves memory though it holds the offer: its deadline is a minute
/// off, further than the sweep is sure to wake it for.
async fn an_offer_runs_out_on_time_across_a_kill_9(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(backend, &dir).await else {
        return;
    };
    let env = [
        ("TURNOUT_OFFERS__SWEEP_SECS", "1"),
        ("TURNOUT_ACTORS__IDLE_TIMEOUT_SECS", "1"),
    ];
    let mut server = ServerProcess::start(&url, dir.path(), &env).await;
    let app = TestApp::attach(&server.address, JWT_KEY);
    let owner = app.register("owner@example.com").await;
    let event = offer_event(&app, &owner, 60).await;
    let [a, b, c] = [(); 3].map(|_| app.user());
    for u in [&a, &b, &c] {
        app.join(u, event).await;
    }
    app.leave(&a, event).await;
    let offered = membership(&app, &b, event).await;
    assert_eq!(offered["status"], "offered");
    let expires_at: chrono::DateTime<chrono::Utc> = offered["offer_expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    wait_until(
        Duration::from_secs(20),
        "the idle actor holding a far-off offer leaves memory",
        || async { metric(&app.metrics().await, "turnout_live_actors") == Some(0.0) },
    )
    .await;
    assert_eq!(membership(&app, &b, event).await["status"], "offered");

    server.child.kill().expect("SIGKILL");
    server.child.wait().unwrap();
    let restarted = ServerProcess::start(&url, dir.path(), &env).await;
    let app = TestApp::attach(&restarted.address, JWT_KEY);
    let (mut socket, snapshot) = me_socket(&app, &b).await;
    assert_eq!(
        snapshot["data"]["places"][0]["status"], "offered",
        "{snapshot}"
    );

    // Nothing touches the event: only its own clock can move the offer on.
    let passed_on = loop {
        let now = chrono::Utc::now();
        let mine = membership(&app, &b, event).await;
        if mine["status"] == "expired" {
            break now;
        }
        assert_eq!(mine["status"], "offered", "{mine}");
        // The bound is for a slow machine; the clock wakes at the deadline.
        assert!(
            now < expires_at + chrono::Duration::seconds(30),
            "the offer outlived its deadline"
        );
        // The socket waits unread: a ping keeps it from timing out.
        realtime::send(&mut socket, json!({ "type": "ping" })).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(passed_on >= expires_at, "never before the deadline");
    let expired = loop {
        let frame = realtime::next(&mut socket).await;
        if frame["type"] != "pong" {
            break frame;
        }
    };
    assert_eq!(
        (
            &expired["data"]["reason"],
            &expired["data"]["place"]["status"]
        ),
        (&json!("expired"), &json!("expired")),
        "the me channel tells the holder: {expired}"
    );
    assert_eq!(membership(&app, &c, event).await["status"], "offered");
    let seen = app.event(event).await;
    assert_eq!(
        (&seen["offered_seats"], &seen["places_left"]),
        (&json!(1), &json!(0))
    );
    let history = body(
        app.as_user(&owner, Method::GET, &format!("/v1/events/{event}/history"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let last: Vec<(&Value, &Value)> = history["data"].as_array().unwrap()[7..]
        .iter()
        .map(|h| (&h["what"], &h["user_id"]))
        .collect();
    assert_eq!(
        last,
        [
            (&json!("expired"), &json!(b.id)),
            (&json!("offered"), &json!(c.id))
        ],
        "the log says the offer ran out and passed on"
    );
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_offer_runs_out_on_time_across_a_kill_9() {
    an_offer_runs_out_on_time_across_a_kill_9(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_offer_runs_out_on_time_across_a_kill_9() {
    an_offer_runs_out_on_time_across_a_kill_9(Backend::Postgres).await;
}
