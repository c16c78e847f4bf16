//! Each kind of request has its own budget, per user and/or per client
//! address; 429 says which budget and when to retry, and changes nothing.

use std::net::IpAddr;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, TestApp, assert_error, spawn_app_with};

async fn login(app: &TestApp, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut request = app
        .request(Method::POST, "/v1/auth/login")
        .json(&json!({ "email": "nobody@example.com", "password": "wrong password" }));
    if let Some(ip) = forwarded_for {
        request = request.header("X-Forwarded-For", format!("203.0.113.9, {ip}"));
    }
    request.send().await.unwrap()
}

#[actix_web::test]
async fn each_user_gets_a_budget_of_writes() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.rate_limits.enabled = true;
        s.rate_limits.joins_per_user_per_minute = 3;
    })
    .await
    .unwrap();
    let owner = app.user();
    let event = app.published_event(&owner, 5).await; // the owner's three writes
    let user = app.user();
    assert_eq!(app.join(&user, event).await.status(), StatusCode::CREATED);
    assert_eq!(app.leave(&user, event).await.status(), StatusCode::OK);
    assert_eq!(app.join(&user, event).await.status(), StatusCode::CREATED);

    let limited = app.leave(&user, event).await;
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_error(limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // The scheme is case-insensitive for the limit as for authentication.
    let lower_case = app
        .request(Method::DELETE, &format!("/v1/events/{event}/join"))
        .header("Authorization", format!("bearer {}", user.token))
        .send()
        .await
        .unwrap();
    assert_error(lower_case, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // A path with escapes is the same route, to the router and the limit.
    let escaped = app
        .request(Method::DELETE, &format!("/v1/events/{event}/j%6Fin"))
        .header("Authorization", format!("Bearer {}", user.token))
        .send()
        .await
        .unwrap();
    assert_error(escaped, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(
        app.event(event).await["active_count"],
        1,
        "the refused leaves changed nothing"
    );

    // Another user has their own budget; reads have one of their own.
    assert_eq!(
        app.join(&app.user(), event).await.status(),
        StatusCode::CREATED
    );
    for _ in 0..10 {
        assert_eq!(
            app.request(Method::GET, &format!("/v1/events/{event}"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let metrics = app.metrics().await;
    assert!(metrics.contains("turnout_rate_limited_total{scope=\"joins_user\"}"));
}

/// An answer to an offer may carry a fresh idempotency key, and every key
/// answered is a stored row, even for an accept that changed nothing (an
/// active member's): so offer answers spend the joins budget, like joins,
/// and the rows one user can make are bounded by it.
#[actix_web::test]
async fn offer_answers_spend_the_joins_budget() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.rate_limits.enabled = true;
        s.rate_limits.joins_per_user_per_minute = 3;
    })
    .await
    .unwrap();
    let owner = app.user();
    let event = app.published_event(&owner, 5).await;
    let member = app.user();
    assert_eq!(app.join(&member, event).await.status(), StatusCode::CREATED);
    let accept = |key| app.answer_offer(&member, event, "accept", Some(key));
    for key in ["accept-1", "accept-2"] {
        assert_eq!(accept(key).await.status(), StatusCode::OK, "{key}");
    }
    let limited = accept("accept-3").await;
    assert_error(limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    let store = app.store().await;
    let member_id = turnout_actors::domain::UserId::from(member.id);
    for key in ["accept-1", "accept-2"] {
        assert!(
            store.stored_answer(member_id, key).await.unwrap().is_some(),
            "{key}"
        );
    }
    assert!(
        store
            .stored_answer(member_id, "accept-3")
            .await
            .unwrap()
            .is_none()
    );
}

#[actix_web::test]
async fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
    let trusted = spawn_app_with(Backend::Sqlite, |s| {
        s.rate_limits.enabled = true;
        s.rate_limits.accounts_per_ip_per_minute = 3;
        s.rate_limits.trusted_proxies = vec!["127.0.0.1".parse::<IpAddr>().unwrap()];
    })
    .await
    .unwrap();
    for _ in 0..3 {
        assert_eq!(
            login(&trusted, Some("198.51.100.1")).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_error(
        login(&trusted, Some("198.51.100.1")).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
    // Another client behind the same proxy has its own budget.
    assert_eq!(
        login(&trusted, Some("198.51.100.2")).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Without trust, X-Forwarded-For is ignored: every request is the peer's.
    let untrusted = spawn_app_with(Backend::Sqlite, |s| {
        s.rate_limits.enabled = true;
        s.rate_limits.accounts_per_ip_per_minute = 3;
    })
    .await
    .unwrap();
    for i in 0..3 {
        let forged = format!("198.51.100.{}", 10 + i);
        assert_eq!(
            login(&untrusted, Some(&forged)).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_error(
        login(&untrusted, Some("198.51.100.99")).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
}

/// With the default budgets an organiser publishes a festival's 30 events in
/// a minute, while joins keep the audit's 10 a minute; the 429 names the
/// budget that was spent.
#[actix_web::test]
async fn each_kind_of_request_spends_its_own_budget() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.rate_limits = turnout::config::Settings::load(&Default::default())
            .unwrap()
            .rate_limits;
    })
    .await
    .unwrap();
    let organiser = app.user();
    let venue = app.venue(&organiser).await;
    let starts = chrono::Utc::now() + chrono::Duration::days(9);
    let mut festival = Vec::new();
    for i in 0..30 {
        let created = app
            .as_user(&organiser, Method::POST, "/v1/events")
            .json(&json!({ "title": format!("Stage {i}"), "venue_id": venue, "starts_at": starts, "capacity": 50 }))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED, "event {i}");
        festival.push(crate::helpers::id_of(&crate::helpers::body(created).await));
    }
    for event in &festival[..20] {
        let published = app
            .as_user(
                &organiser,
                Method::POST,
                &format!("/v1/events/{event}/publish"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(published.status(), StatusCode::OK);
    }

    let fan = app.user();
    for event in &festival[..10] {
        assert_eq!(app.join(&fan, *event).await.status(), StatusCode::CREATED);
    }
    let spent = app.join(&fan, festival[10]).await;
    let body = assert_error(spent, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("joins per user"), "{message}");
    // The fan's other budgets are untouched.
    let profile = app
        .as_user(&fan, Method::GET, "/v1/me/joins")
        .send()
        .await
        .unwrap();
    assert_eq!(profile.status(), StatusCode::OK);
}

/// Reads have a budget per address too; `enabled = false` lifts them all.
#[actix_web::test]
async fn reads_are_bounded_and_everything_can_be_switched_off() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.rate_limits.enabled = true;
        s.rate_limits.reads_per_ip_per_minute = 5;
    })
    .await
    .unwrap();
    for _ in 0..5 {
        let read = app.request(Method::GET, "/v1/events").send().await.unwrap();
        assert_eq!(read.status(), StatusCode::OK);
    }
    let spent = app.request(Method::GET, "/v1/events").send().await.unwrap();
    let body = assert_error(spent, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reads per address")
    );

    let off = spawn_app_with(Backend::Sqlite, |s| {
        s.rate_limits.enabled = false;
        s.rate_limits.reads_per_ip_per_minute = 1;
        s.rate_limits.joins_per_user_per_minute = 1;
    })
    .await
    .unwrap();
    let owner = off.user();
    let event = off.published_event(&owner, 5).await;
    let user = off.user();
    for _ in 0..3 {
        assert_eq!(
            off.request(Method::GET, "/v1/events")
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
        off.join(&user, event).await;
        off.leave(&user, event).await;
    }
}

/// The kiosk page reads its venue from the store: it spends the address's
/// read budget as `/v1` reads do, so made-up venue ids cannot be asked for
/// without end.
#[actix_web::test]
async fn the_kiosk_page_spends_the_read_budget() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.rate_limits.enabled = true;
        s.rate_limits.reads_per_ip_per_minute = 3;
    })
    .await
    .unwrap();
    for _ in 0..3 {
        let page = app
            .request(Method::GET, &format!("/kiosk/{}", uuid::Uuid::now_v7()))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::NOT_FOUND);
    }
    let spent = app
        .request(Method::GET, &format!("/kiosk/{}", uuid::Uuid::now_v7()))
        .send()
        .await
        .unwrap();
    assert_error(spent, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}
