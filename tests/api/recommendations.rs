//! Recommendations over HTTP and on the `recs` WebSocket channel.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Backend, TestApp, User, assert_error, body, id_of, spawn_app};
use crate::on_both_backends;
use crate::realtime::{Socket, authenticate, connect, next, send, subscribe};

on_both_backends!(recommendations_are_ranked_explained_and_exclude_what_they_must);

const HOME: (f64, f64) = (52.3700, 4.8900);

async fn register_with(app: &TestApp, email: &str, interests: &[&str]) -> User {
    app.register_with(
        email,
        json!({ "interests": interests, "home": { "lat": HOME.0, "lon": HOME.1 } }),
    )
    .await
}

async fn venue_at(app: &TestApp, owner: &User, lat: f64, lon: f64) -> Uuid {
    let response = app
        .as_user(owner, Method::POST, "/v1/venues")
        .json(&json!({ "name": "Hall", "lat": lat, "lon": lon }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    id_of(&body(response).await)
}

/// An event starting in `days`, published if `publish`.
async fn event(
    app: &TestApp,
    owner: &User,
    venue: Uuid,
    title: &str,
    tags: &[&str],
    days: i64,
    publish: bool,
) -> Uuid {
    let starts_in = chrono::Duration::days(days);
    event_starting_in(app, owner, venue, title, tags, starts_in, publish).await
}

async fn event_starting_in(
    app: &TestApp,
    owner: &User,
    venue: Uuid,
    title: &str,
    tags: &[&str],
    starts_in: chrono::Duration,
    publish: bool,
) -> Uuid {
    let starts_at = chrono::Utc::now() + starts_in;
    let response = app
        .as_user(owner, Method::POST, "/v1/events")
        .json(&json!({
            "title": title, "venue_id": venue, "starts_at": starts_at,
            "capacity": 20, "tags": tags
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let id = id_of(&body(response).await);
    if publish {
        let response = app
            .as_user(owner, Method::POST, &format!("/v1/events/{id}/publish"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    id
}

async fn recommendations(app: &TestApp, user: &User, query: &str) -> Vec<Value> {
    let response = app
        .as_user(user, Method::GET, &format!("/v1/me/recommendations{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    body(response).await["data"].as_array().unwrap().clone()
}

fn ids(items: &[Value]) -> Vec<Uuid> {
    items
        .iter()
        .map(|i| i["event"]["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// The catalog follows commits a moment later: waits (up to 10 s) until the
/// list satisfies `done`.
async fn recommendations_until(
    app: &TestApp,
    user: &User,
    query: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let items = recommendations(app, user, query).await;
        if done(&items) {
            return items;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "recommendations never settled: {items:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A recommended event counts its seats as its details do: `active_count`
/// the active parties' seats; a seat held on offer is taken, in
/// `places_left`, but not active.
#[actix_web::test]
async fn a_recommended_event_counts_its_seats_as_its_details_do() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let owner = app.register("owner@example.org").await;
    let offers = json!({ "waitlist_mode": "offer", "offer_hold_secs": 600 });
    let event = app.published_event_with(&owner, 3, offers).await;
    let [x, y, z, w] = [(); 4].map(|_| app.user());
    for user in [&x, &y, &z, &w] {
        app.join(user, event).await;
    }
    // x's seat is offered to w; y's stays free, nobody waiting.
    app.leave(&x, event).await;
    app.leave(&y, event).await;
    let details = app.event(event).await;
    let counts = |e: &Value| (e["active_count"].clone(), e["places_left"].clone());
    assert_eq!(counts(&details), (json!(1), json!(1)), "{details}");

    // The catalog hears of each commit on its next tick, so a poll may
    // still show an earlier true state (after y joined: 2 active, 1 left);
    // a card that miscounts never settles and the wait fails with the list.
    let fan = register_with(&app, "fan@example.org", &["jazz"]).await;
    recommendations_until(&app, &fan, "", |items| {
        items.iter().any(|i| {
            i["event"]["id"] == event.to_string() && counts(&i["event"]) == counts(&details)
        })
    })
    .await;
}

async fn recommendations_are_ranked_explained_and_exclude_what_they_must(app: TestApp) {
    let organizer = app.register("organizer@example.org").await;
    let fan = register_with(&app, "fan@example.org", &["jazz"]).await;
    let near = venue_at(&app, &organizer, HOME.0 + 0.01, HOME.1).await;
    let far = venue_at(&app, &organizer, 53.2, 6.5).await;

    let jazz = event(&app, &organizer, near, "Late jazz", &["jazz"], 3, true).await;
    let rock = event(&app, &organizer, far, "Loud rock", &["rock"], 3, true).await;
    let draft = event(&app, &organizer, near, "Draft jazz", &["jazz"], 3, false).await;
    let cancelled = event(&app, &organizer, near, "Off jazz", &["jazz"], 3, true).await;
    let response = app
        .as_user(
            &organizer,
            Method::POST,
            &format!("/v1/events/{cancelled}/cancel"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let own_venue = venue_at(&app, &fan, HOME.0, HOME.1).await;
    let own = event(&app, &fan, own_venue, "My jazz", &["jazz"], 3, true).await;
    let joined = event(&app, &organizer, near, "Joined jazz", &["jazz"], 3, true).await;
    assert_eq!(app.join(&fan, joined).await.status(), StatusCode::CREATED);

    // The catalog learns a venue's position after the venue's first event
    // (a lookup of its own), so the distance may come a tick later; and it
    // takes the cancel and the join on its 100 ms tick, so their
    // exclusions may too. An exclusion that never comes times out here.
    let excluded = [draft, cancelled, own, joined];
    let items = recommendations_until(&app, &fan, "", |items| {
        let ids = ids(items);
        ids.contains(&jazz)
            && ids.contains(&rock)
            && !excluded.iter().any(|excluded| ids.contains(excluded))
            && items[0]["reasons"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|r| r.as_str().is_some_and(|r| r.ends_with("km from home")))
            })
    })
    .await;
    assert_eq!(ids(&items)[0], jazz, "{items:#?}");
    let top = &items[0];
    let reasons: Vec<&str> = top["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(
        reasons.contains(&"matches your interest: jazz"),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.ends_with("km from home")),
        "{reasons:?}"
    );
    assert!(top["score"].as_f64().unwrap() > items[1]["score"].as_f64().unwrap());
    assert_eq!(top["event"]["places_left"], 20);
    assert_eq!(top["event"]["title"], "Late jazz");

    // Leaving makes an event recommendable again.
    assert_eq!(app.leave(&fan, joined).await.status(), StatusCode::OK);
    recommendations_until(&app, &fan, "", |items| ids(items).contains(&joined)).await;

    assert_eq!(recommendations(&app, &fan, "?limit=1").await.len(), 1);
    for bad in ["?limit=0", "?limit=101", "?limit=ten", "?page=2"] {
        let response = app
            .as_user(&fan, Method::GET, &format!("/v1/me/recommendations{bad}"))
            .send()
            .await
            .unwrap();
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_query").await;
    }
    let anonymous = app
        .request(Method::GET, "/v1/me/recommendations")
        .send()
        .await
        .unwrap();
    assert_error(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[actix_web::test]
async fn co_attendance_recommends_what_similar_people_joined_and_says_so() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let organizer = app.register("organizer@example.org").await;
    let venue = venue_at(&app, &organizer, HOME.0, HOME.1).await;
    let liked = event(&app, &organizer, venue, "Late jazz", &[], 2, true).await;
    let also = event(&app, &organizer, venue, "Poetry night", &[], 4, true).await;
    let decoy = event(&app, &organizer, venue, "Quiz night", &[], 4, true).await;
    let mut similar_people = Vec::new();
    for _ in 0..2 {
        let similar = app.user();
        similar_people.push(similar.clone());
        assert_eq!(
            app.join(&similar, liked).await.status(),
            StatusCode::CREATED
        );
        assert_eq!(app.join(&similar, also).await.status(), StatusCode::CREATED);
        // The decoy is just as popular, but with other people.
        let other = app.user();
        assert_eq!(app.join(&other, decoy).await.status(), StatusCode::CREATED);
    }
    let fan = register_with(&app, "fan@example.org", &[]).await;
    assert_eq!(app.join(&fan, liked).await.status(), StatusCode::CREATED);

    let items = recommendations_until(&app, &fan, "", |items| {
        items.first().is_some_and(|top| {
            top["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == "people who joined Late jazz joined this")
        })
    })
    .await;
    assert_eq!(ids(&items)[0], also, "{items:#?}");
    assert!(ids(&items).contains(&decoy));

    // A token-only identity (no local account) is ranked too: what it joined
    // is left out.
    let items = recommendations(&app, &similar_people[0], "").await;
    assert_eq!(ids(&items), vec![decoy], "{items:#?}");
}

/// Frames until one on the `recs` channel.
async fn next_recs(socket: &mut Socket) -> Value {
    loop {
        let frame = next(socket).await;
        if frame["channel"] == "recs" {
            return frame;
        }
    }
}

/// Authenticates the socket as `user` and subscribes to `recs`: the
/// channel's first frame.
pub async fn recs_as(socket: &mut Socket, user: &User) -> Value {
    authenticate(socket, &user.token).await;
    send(socket, json!({ "type": "subscribe", "channel": "recs" })).await;
    next_recs(socket).await
}

fn listed(frame: &Value) -> Vec<Uuid> {
    frame["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["event"]["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[actix_web::test]
async fn the_recs_channel_pushes_a_new_list_when_the_top_changes() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let organizer = app.register("organizer@example.org").await;
    let venue = venue_at(&app, &organizer, HOME.0, HOME.1).await;
    let rock = event(&app, &organizer, venue, "Loud rock", &["rock"], 5, true).await;
    let fan = register_with(&app, "fan@example.org", &["jazz"]).await;

    let mut socket = connect(&app).await;
    let refused = subscribe(&mut socket, "recs", None).await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "unauthorized");
    // The snapshot may or may not have seen the rock event yet; wait for it.
    let mut frame = recs_as(&mut socket, &fan).await;
    assert_eq!(frame["type"], "snapshot");
    let epoch = frame["epoch"].as_str().unwrap().to_owned();
    while !listed(&frame).contains(&rock) {
        frame = next_recs(&mut socket).await;
    }
    let mut offset = frame["offset"].as_u64().unwrap();

    // A new event matching the fan's interest moves to the top.
    let jazz = event(&app, &organizer, venue, "Late jazz", &["jazz"], 5, true).await;
    loop {
        frame = next_recs(&mut socket).await;
        assert_eq!(frame["type"], "update");
        assert_eq!(frame["epoch"], epoch.as_str());
        assert_eq!(frame["offset"].as_u64().unwrap(), offset + 1, "no gap");
        offset += 1;
        if listed(&frame).first() == Some(&jazz) {
            break;
        }
    }
    let top = &frame["data"]["items"][0];
    assert!(
        top["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "matches your interest: jazz")
    );

    // Joining it takes it off the list.
    assert_eq!(app.join(&fan, jazz).await.status(), StatusCode::CREATED);
    loop {
        frame = next_recs(&mut socket).await;
        assert_eq!(frame["offset"].as_u64().unwrap(), offset + 1, "no gap");
        offset += 1;
        if !listed(&frame).contains(&jazz) {
            break;
        }
    }

    // Changing interests re-ranks the live list.
    let other = event(&app, &organizer, venue, "Blues", &["blues"], 6, true).await;
    let response = app
        .as_user(&fan, Method::PATCH, "/v1/me")
        .json(&json!({ "interests": ["blues"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    loop {
        frame = next_recs(&mut socket).await;
        offset = frame["offset"].as_u64().unwrap();
        if listed(&frame).first() == Some(&other) {
            break;
        }
    }

    // Resuming at the current revision sends nothing again; an old one gets
    // the current list as a fresh snapshot.
    drop(socket);
    let mut socket = connect(&app).await;
    authenticate(&mut socket, &fan.token).await;
    let fresh = subscribe(
        &mut socket,
        "recs",
        Some(json!({ "epoch": epoch, "offset": offset - 1 })),
    )
    .await;
    assert_eq!(fresh["type"], "snapshot");
    assert_eq!(fresh["recovered"], false);
    let (epoch, offset) = (fresh["epoch"].clone(), fresh["offset"].clone());
    send(
        &mut socket,
        json!({ "type": "unsubscribe", "channel": "recs" }),
    )
    .await;
    assert_eq!(next(&mut socket).await["type"], "unsubscribed");
    let resumed = subscribe(
        &mut socket,
        "recs",
        Some(json!({ "epoch": epoch, "offset": offset })),
    )
    .await;
    assert_eq!(resumed["type"], "resumed", "{resumed}");
}

/// An event that starts leaves the live lists that show it at once, not at
/// the next full re-rank minutes later.
#[actix_web::test]
async fn an_event_that_starts_leaves_the_recs_channel() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let organizer = app.register("organizer@example.org").await;
    let venue = venue_at(&app, &organizer, HOME.0, HOME.1).await;
    // Far enough ahead that setting up never reaches it, near enough that
    // each wait for a frame stays inside 10 s.
    let soon = event_starting_in(
        &app,
        &organizer,
        venue,
        "Jazz at once",
        &["jazz"],
        chrono::Duration::seconds(8),
        true,
    )
    .await;
    let later = event(&app, &organizer, venue, "Jazz later", &["jazz"], 5, true).await;
    let fan = register_with(&app, "fan@example.org", &["jazz"]).await;

    let mut socket = connect(&app).await;
    let mut frame = recs_as(&mut socket, &fan).await;
    while !listed(&frame).contains(&soon) {
        frame = next_recs(&mut socket).await;
    }

    let started = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let frame = next_recs(&mut socket).await;
            if !listed(&frame).contains(&soon) {
                return frame;
            }
        }
    })
    .await
    .expect("the started event stayed on the list");
    assert_eq!(listed(&started), vec![later], "the rest stays");
}
