//! Writes are rate limited per user and per client address; 429 says when to
//! retry and changes nothing; reads are not limited.

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
    let app = spawn_app_with(Backend::Sqlite, |s| s.rate_limits.per_user_per_minute = 3)
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
    assert_eq!(
        app.event(event).await["active_count"],
        1,
        "the refused leaves changed nothing"
    );

    // Another user has their own budget; reads are never limited.
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
    assert!(metrics.contains("turnout_rate_limited_total{scope=\"user\"}"));
}

#[actix_web::test]
async fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
    let trusted = spawn_app_with(Backend::Sqlite, |s| {
        s.rate_limits.per_ip_per_minute = 3;
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
    let untrusted = spawn_app_with(Backend::Sqlite, |s| s.rate_limits.per_ip_per_minute = 3)
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
