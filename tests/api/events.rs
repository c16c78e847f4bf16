use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, TestApp, assert_error, body, id_of, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(
    event_lifecycle_and_live_counts,
    drafts_are_private_and_not_listed,
    listing_filters_and_pages_without_gaps,
    only_the_owner_manages_an_event,
    cancelling_ends_every_membership,
);

async fn event_lifecycle_and_live_counts(app: TestApp) {
    let owner = app.register("owner@example.com").await;
    let event = app.draft_event(&owner, 2).await;
    assert_eq!(app_event_as(&app, &owner, event).await["status"], "draft");

    let published = app
        .as_user(&owner, Method::POST, &format!("/v1/events/{event}/publish"))
        .send()
        .await
        .unwrap();
    assert_eq!(body(published).await["data"]["status"], "published");

    let patched = app
        .as_user(&owner, Method::PATCH, &format!("/v1/events/{event}"))
        .json(&json!({ "title": "Later jazz", "description": "Bring friends", "tags": ["jazz", "late"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);

    let a = app.user();
    app.join(&a, event).await;
    let seen = app.event(event).await;
    assert_eq!(seen["title"], "Later jazz");
    assert_eq!(seen["description"], "Bring friends");
    assert_eq!(seen["tags"], json!(["jazz", "late"]));
    assert_eq!(seen["active_count"], 1);
    assert_eq!(seen["places_left"], 1);
    // The read model too (the answer above may come from memory): the
    // join's commit writes the counts alone and keeps what the edit wrote.
    let row = app
        .store()
        .await
        .event(turnout_actors::domain::EventId::from(event))
        .await
        .unwrap()
        .expect("the event's row");
    assert_eq!(row.title, "Later jazz");
    assert_eq!(row.description.as_deref(), Some("Bring friends"));
    assert_eq!(row.status, turnout_actors::domain::Lifecycle::Published);
    assert_eq!((row.capacity, row.active_count), (2, 1));

    let cleared = app
        .as_user(&owner, Method::PATCH, &format!("/v1/events/{event}"))
        .json(&json!({ "description": null }))
        .send()
        .await
        .unwrap();
    assert_eq!(body(cleared).await["data"]["description"], json!(null));
}

async fn app_event_as(
    app: &TestApp,
    user: &crate::helpers::User,
    event: uuid::Uuid,
) -> serde_json::Value {
    let response = app
        .as_user(user, Method::GET, &format!("/v1/events/{event}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    body(response).await["data"].clone()
}

async fn drafts_are_private_and_not_listed(app: TestApp) {
    let owner = app.register("owner@example.com").await;
    let draft = app.draft_event(&owner, 5).await;
    let anyone = app
        .request(Method::GET, &format!("/v1/events/{draft}"))
        .send()
        .await
        .unwrap();
    assert_error(anyone, StatusCode::NOT_FOUND, "not_found").await;
    let listed = body(app.request(Method::GET, "/v1/events").send().await.unwrap()).await;
    assert!(
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["id"] != draft.to_string())
    );
}

async fn listing_filters_and_pages_without_gaps(app: TestApp) {
    let owner = app.register("owner@example.com").await;
    let venue = app.venue(&owner).await;
    let other_venue = app.venue(&owner).await;
    // Many events share a start time: only the id tie-breaker orders them.
    let same_time = chrono::Utc::now() + chrono::Duration::days(3);
    let mut created = Vec::new();
    for i in 0..13 {
        let tag = if i % 2 == 0 { "jazz" } else { "rock" };
        let at_venue = if i < 10 { venue } else { other_venue };
        let response = app
            .as_user(&owner, Method::POST, "/v1/events")
            .json(
                &json!({ "title": format!("Show {i}"), "venue_id": at_venue, "starts_at": same_time,
                           "capacity": 10, "tags": [tag] }),
            )
            .send()
            .await
            .unwrap();
        let id = id_of(&body(response).await);
        app.as_user(&owner, Method::POST, &format!("/v1/events/{id}/publish"))
            .send()
            .await
            .unwrap();
        created.push(id);
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/events?venue_id={venue}&limit=3");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = body(app.request(Method::GET, &path).send().await.unwrap()).await;
        for e in page["data"].as_array().unwrap() {
            seen.push(e["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut expected: Vec<_> = created[..10].to_vec();
    expected.sort();
    assert_eq!(seen, expected, "every event once, in (starts_at, id) order");

    let jazz = body(
        app.request(Method::GET, "/v1/events?tag=jazz&limit=100")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(jazz["data"].as_array().unwrap().len(), 7);

    let window = body(
        app.request(
            Method::GET,
            &format!(
                "/v1/events?limit=100&to={}",
                (same_time - chrono::Duration::hours(1))
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert!(window["data"].as_array().unwrap().is_empty());
}

/// A draft is not found by anyone but its owner, whatever they ask; once
/// published, a stranger is told it is not theirs.
async fn only_the_owner_manages_an_event(app: TestApp) {
    let owner = app.register("owner@example.com").await;
    let stranger = app.user();
    let event = app.draft_event(&owner, 5).await;
    let attempts = |event: uuid::Uuid| {
        [
            (Method::POST, format!("/v1/events/{event}/publish"), None),
            (Method::POST, format!("/v1/events/{event}/cancel"), None),
            (
                Method::PATCH,
                format!("/v1/events/{event}"),
                Some(json!({ "capacity": 9 })),
            ),
            (Method::GET, format!("/v1/events/{event}/attendees"), None),
            (Method::GET, format!("/v1/events/{event}"), None),
            (Method::DELETE, format!("/v1/events/{event}/join"), None),
        ]
    };
    for (method, path, body) in attempts(event) {
        let mut request = app.as_user(&stranger, method, &path);
        if let Some(b) = body {
            request = request.json(&b);
        }
        assert_error(
            request.send().await.unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    assert_error(
        app.join(&stranger, event).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(app_event_as(&app, &owner, event).await["status"], "draft");

    let published = app.published_event(&owner, 5).await;
    for (method, path, body) in attempts(published).into_iter().skip(1).take(3) {
        let mut request = app.as_user(&stranger, method, &path);
        if let Some(b) = body {
            request = request.json(&b);
        }
        assert_error(
            request.send().await.unwrap(),
            StatusCode::FORBIDDEN,
            "not_owner",
        )
        .await;
    }
}

async fn cancelling_ends_every_membership(app: TestApp) {
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 1).await;
    let (a, b) = (app.user(), app.user());
    app.join(&a, event).await;
    app.join(&b, event).await;

    let cancelled = app
        .as_user(&owner, Method::POST, &format!("/v1/events/{event}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(body(cancelled).await["data"]["status"], "cancelled");

    let seen = app.event(event).await;
    assert_eq!(
        (
            seen["active_count"].as_i64(),
            seen["waitlist_count"].as_i64()
        ),
        (Some(0), Some(0))
    );
    let mine = body(
        app.as_user(&b, Method::GET, "/v1/me/joins")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(mine["data"][0]["status"], "cancelled");
    assert_error(
        app.join(&a, event).await,
        StatusCode::CONFLICT,
        "event_cancelled",
    )
    .await;
}

/// Every listing read of `/metrics` so far, by where it was answered from.
fn listing_reads(metrics: &str, source: &str) -> u64 {
    let series = format!(r#"turnout_event_reads_total{{read="listing",source="{source}"}} "#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Every page of `query`, following cursors, `limit` at a time.
async fn whole_listing(app: &TestApp, query: &str, limit: usize) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/events?limit={limit}{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = body(app.request(Method::GET, &path).send().await.unwrap()).await;
        all.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return all,
        }
    }
}

/// A node alone answers the listing from memory once it has loaded it: the
/// same pages, byte for byte in meaning, as the read model's query gives —
/// after joins, a cancellation, a move and events created after the load.
#[actix_web::test]
async fn the_listing_from_memory_is_the_listing_of_the_read_model() {
    use crate::helpers::{Backend, JWT_KEY, fresh_database};
    use turnout::store::EventFilter;

    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(Backend::Sqlite, &dir).await.unwrap();
    let server = crate::process::ServerProcess::start(&url, dir.path(), &[]).await;
    let app = TestApp::attach(&server.address, JWT_KEY);
    let owner = app.register("owner@example.com").await;
    let venues = [app.venue(&owner).await, app.venue(&owner).await];
    let soon = chrono::Utc::now() + chrono::Duration::days(2);
    let mut events = Vec::new();
    for i in 0..14i64 {
        let created = app
            .as_user(&owner, Method::POST, "/v1/events")
            .json(&json!({
                "title": format!("Show {i}"), "venue_id": venues[(i % 2) as usize],
                // Some share a start: the id breaks the tie.
                "starts_at": soon + chrono::Duration::hours(i / 3), "capacity": 3,
                "tags": if i % 3 == 0 { json!(["jazz"]) } else { json!(["quiz", "kids"]) },
            }))
            .send()
            .await
            .unwrap();
        let id = id_of(&body(created).await);
        if i != 13 {
            let published = app
                .as_user(&owner, Method::POST, &format!("/v1/events/{id}/publish"))
                .send()
                .await
                .unwrap();
            assert_eq!(published.status(), StatusCode::OK);
        }
        events.push(id);
    }
    // Served from memory once the load is in.
    for _ in 0..100 {
        app.request(Method::GET, "/v1/events").send().await.unwrap();
        if listing_reads(&app.metrics().await, "memory") > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Changes after the load: joins (one event full, with a waitlist), a
    // cancellation, a move to later, a new event.
    for _ in 0..4 {
        assert!(app.join(&app.user(), events[0]).await.status().is_success());
    }
    assert!(app.join(&app.user(), events[1]).await.status().is_success());
    let cancelled = app
        .as_user(
            &owner,
            Method::POST,
            &format!("/v1/events/{}/cancel", events[2]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    let moved = app
        .as_user(&owner, Method::PATCH, &format!("/v1/events/{}", events[3]))
        .json(&json!({ "starts_at": soon + chrono::Duration::days(1) }))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), StatusCode::OK);
    app.published_event(&owner, 5).await;

    let from_database_before = listing_reads(&app.metrics().await, "database");
    let store = crate::helpers::store_at(&url).await;
    let tag = |t: &str| Some(t.to_owned());
    let to = soon + chrono::Duration::hours(3);
    let queries = [
        (String::new(), EventFilter::default()),
        (
            format!("&venue_id={}", venues[0]),
            EventFilter {
                venue_id: Some(venues[0].into()),
                ..EventFilter::default()
            },
        ),
        (
            "&tag=kids".to_owned(),
            EventFilter {
                tag: tag("kids"),
                ..EventFilter::default()
            },
        ),
        (
            format!(
                "&to={}",
                to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            EventFilter {
                to: Some(chrono::SubsecRound::trunc_subsecs(to, 0)),
                ..EventFilter::default()
            },
        ),
    ];
    for (query, filter) in queries {
        let filter = EventFilter {
            from: Some(chrono::Utc::now()),
            limit: 1000,
            ..filter
        };
        let expected: Vec<serde_json::Value> = store
            .list_events(&filter)
            .await
            .unwrap()
            .into_iter()
            .map(|e| serde_json::to_value(turnout::views::EventView::from(e)).unwrap())
            .collect();
        assert!(!expected.is_empty(), "{query}");
        for limit in [1, 4, 100] {
            assert_eq!(
                whole_listing(&app, &query, limit).await,
                expected,
                "{query} by {limit}"
            );
        }
    }
    assert_eq!(
        listing_reads(&app.metrics().await, "database"),
        from_database_before,
        "every page came from memory"
    );
    drop(server);
}

/// An account owns a bounded number of venues and of upcoming events (a
/// stranger's account must not grow every node's catalog without bound),
/// and a venue names a bounded number of organisers; a cancelled event
/// gives its place back, and other accounts are apart.
async fn an_account_owns_a_bounded_number_of_venues_and_events(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| {
        s.rate_limits.enabled = true;
        s.quotas.venues_per_owner = 2;
        s.quotas.upcoming_events_per_owner = 2;
        s.quotas.organizers_per_venue = 1;
    })
    .await
    else {
        return;
    };
    let (owner, other) = (app.user(), app.user());
    let venue = app.venue(&owner).await;
    app.venue(&owner).await;
    let refused = app
        .as_user(&owner, Method::POST, "/v1/venues")
        .json(&json!({ "name": "Third Room", "lat": 52.37, "lon": 4.89 }))
        .send()
        .await
        .unwrap();
    let error = assert_error(refused, StatusCode::CONFLICT, "quota_reached").await;
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 venues")
    );
    // A bad body is told what is wrong with it, quota or not.
    let blank = app
        .as_user(&owner, Method::POST, "/v1/venues")
        .json(&json!({ "name": "   ", "lat": 52.37, "lon": 4.89 }))
        .send()
        .await
        .unwrap();
    assert_error(blank, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    app.venue(&other).await;

    let name = |organizer: uuid::Uuid| {
        app.as_user(
            &owner,
            Method::POST,
            &format!("/v1/venues/{venue}/organizers"),
        )
        .json(&json!({ "user_id": organizer }))
    };
    let first_organizer = uuid::Uuid::now_v7();
    let named = name(first_organizer).send().await.unwrap();
    assert_eq!(named.status(), StatusCode::CREATED);
    let named = body(named).await;
    assert_eq!(named["data"]["user_id"], json!(first_organizer));
    let again = name(first_organizer).send().await.unwrap();
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "naming one again is no new place"
    );
    assert_eq!(
        body(again).await["data"]["added_at"],
        named["data"]["added_at"],
        "the answer says when they were first named"
    );
    assert_error(
        name(uuid::Uuid::now_v7()).send().await.unwrap(),
        StatusCode::CONFLICT,
        "quota_reached",
    )
    .await;

    let create = || {
        app.as_user(&owner, Method::POST, "/v1/events")
            .json(&json!({
                "title": "Late jazz", "venue_id": venue, "capacity": 5,
                "starts_at": chrono::Utc::now() + chrono::Duration::days(7),
            }))
    };
    let first = id_of(&body(create().send().await.unwrap()).await);
    assert_eq!(create().send().await.unwrap().status(), StatusCode::CREATED);
    assert_error(
        create().send().await.unwrap(),
        StatusCode::CONFLICT,
        "quota_reached",
    )
    .await;
    let cancelled = app
        .as_user(&owner, Method::POST, &format!("/v1/events/{first}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    assert_eq!(
        create().send().await.unwrap().status(),
        StatusCode::CREATED,
        "a cancelled event gives its place back"
    );
}

#[actix_web::test]
async fn sqlite_an_account_owns_a_bounded_number_of_venues_and_events() {
    an_account_owns_a_bounded_number_of_venues_and_events(Backend::Sqlite).await;
}

#[actix_web::test]
async fn postgres_an_account_owns_a_bounded_number_of_venues_and_events() {
    an_account_owns_a_bounded_number_of_venues_and_events(Backend::Postgres).await;
}

/// Creates sent all at once by one account stop at its quota exactly: each
/// count and its create are one step, so no two count the same free place.
async fn creates_at_once_stop_at_the_quota(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| {
        s.rate_limits.enabled = true;
        s.quotas.venues_per_owner = 3;
        s.quotas.upcoming_events_per_owner = 3;
        s.quotas.organizers_per_venue = 3;
    })
    .await
    else {
        return;
    };
    let owner = app.user();
    let statuses = |requests: Vec<reqwest::RequestBuilder>| async {
        let answers = futures_util::future::join_all(requests.into_iter().map(|r| r.send())).await;
        let mut created = 0;
        for answer in answers {
            let answer = answer.unwrap();
            match answer.status() {
                StatusCode::CREATED => created += 1,
                _ => {
                    assert_error(answer, StatusCode::CONFLICT, "quota_reached").await;
                }
            }
        }
        created
    };

    let venues = (0..12)
        .map(|i| {
            app.as_user(&owner, Method::POST, "/v1/venues")
                .json(&json!({ "name": format!("Room {i}"), "lat": 52.37, "lon": 4.89 }))
        })
        .collect();
    assert_eq!(statuses(venues).await, 3, "venues past the quota");

    let host = app.user();
    let venue = app.venue(&host).await;
    let organizers = (0..12)
        .map(|_| {
            app.as_user(
                &host,
                Method::POST,
                &format!("/v1/venues/{venue}/organizers"),
            )
            .json(&json!({ "user_id": uuid::Uuid::now_v7() }))
        })
        .collect();
    assert_eq!(statuses(organizers).await, 3, "organisers past the quota");

    let starts_at = chrono::Utc::now() + chrono::Duration::days(7);
    let events = (0..12)
        .map(|i| {
            app.as_user(&host, Method::POST, "/v1/events").json(&json!({
                "title": format!("Show {i}"), "venue_id": venue, "capacity": 5,
                "starts_at": starts_at,
            }))
        })
        .collect();
    assert_eq!(statuses(events).await, 3, "events past the quota");
}

#[actix_web::test]
async fn sqlite_creates_at_once_stop_at_the_quota() {
    creates_at_once_stop_at_the_quota(Backend::Sqlite).await;
}

#[actix_web::test]
async fn postgres_creates_at_once_stop_at_the_quota() {
    creates_at_once_stop_at_the_quota(Backend::Postgres).await;
}
