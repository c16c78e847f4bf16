//! Every kind of bad input gets a clear 4xx in the error envelope and
//! changes nothing.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{JWT_KEY, TestApp, assert_error, body};
use crate::on_both_backends;

on_both_backends!(
    bad_event_bodies_are_refused_and_change_nothing,
    bad_tokens_ids_and_headers_are_refused
);

async fn bad_event_bodies_are_refused_and_change_nothing(app: TestApp) {
    let owner = app.register("owner@example.com").await;
    let venue = app.venue(&owner).await;
    let soon = chrono::Utc::now() + chrono::Duration::days(1);
    let valid =
        json!({ "title": "Late jazz", "venue_id": venue, "starts_at": soon, "capacity": 10 });
    let with = |field: &str, value: serde_json::Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };
    let without = |field: &str| {
        let mut body = valid.clone();
        body.as_object_mut().unwrap().remove(field);
        body
    };

    let cases: Vec<(serde_json::Value, StatusCode, &str)> = vec![
        (
            without("title"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            with("capacity", json!("ten")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            with("capacity", json!(0)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            with("capacity", json!(-3)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            with("capacity", json!(10_000_000_000i64)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            with("title", json!("x".repeat(201))),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            with("title", json!("   ")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            with("tags", json!(["no spaces allowed"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            with("venue_id", json!("not-a-uuid")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            with("venue_id", json!(uuid::Uuid::now_v7())),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_venue",
        ),
        (
            with("starts_at", json!("2001-01-01T00:00:00Z")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_schedule",
        ),
        (
            with("starts_at", json!("next tuesday")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            with("ends_at", json!("2001-01-01T00:00:00Z")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_schedule",
        ),
        (
            with("surprise", json!(true)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
    ];
    for (payload, status, code) in cases {
        let response = app
            .as_user(&owner, Method::POST, "/v1/events")
            .json(&payload)
            .send()
            .await
            .unwrap();
        let error = assert_error(response, status, code).await;
        let message = error["error"]["message"].as_str().unwrap();
        for leak in ["i64", "u32", "sqlx", "SELECT", "/src/", "panicked"] {
            assert!(!message.contains(leak), "{message} leaks {leak}");
        }
    }

    let raw = |body: &'static str| {
        app.as_user(&owner, Method::POST, "/v1/events")
            .header("content-type", "application/json")
            .body(body)
    };
    assert_error(
        raw("{\"title\": ").send().await.unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;
    assert_error(
        raw("not json").send().await.unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;
    // JSON sent as something else, or with no type at all: 415, before
    // anything is read.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = app
            .as_user(&owner, Method::POST, "/v1/events")
            .body(r#"{"title": "Quiz night", "capacity": 10}"#);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let error = assert_error(
            request.send().await.unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("application/json")
        );
    }
    let huge = format!("{{\"title\": \"{}\"}}", "x".repeat(70 * 1024));
    let response = app
        .as_user(&owner, Method::POST, "/v1/events")
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;

    let listed = body(
        app.request(Method::GET, "/v1/events?limit=100")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        listed["data"].as_array().unwrap().is_empty(),
        "nothing was created"
    );
    // A join reads its optional body raw: the same limit and envelope.
    let some_event = app.published_event(&owner, 5).await;
    let response = app
        .as_user(
            &owner,
            Method::POST,
            &format!("/v1/events/{some_event}/join"),
        )
        .header("content-type", "application/json")
        .body(format!(
            "{{\"seats\": 1, \"pad\": \"{}\"}}",
            "x".repeat(70 * 1024)
        ))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    // Its body must say it is JSON, as any other; left out, nothing to say.
    let join = || {
        app.as_user(
            &owner,
            Method::POST,
            &format!("/v1/events/{some_event}/join"),
        )
        .header("Idempotency-Key", uuid::Uuid::now_v7().to_string())
    };
    let response = join()
        .header("content-type", "text/plain")
        .body(r#"{"seats": 2}"#)
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    assert_eq!(
        app.event(some_event).await["active_count"],
        0,
        "nothing changed"
    );
    let response = join()
        .header("content-type", "application/problem+json")
        .body(r#"{"seats": 2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "a +json type is JSON: the owner's join is judged"
    );

    let bad_venue = app
        .as_user(&owner, Method::POST, "/v1/venues")
        .json(&json!({ "name": "Nowhere", "lat": 123.0, "lon": 0.0 }))
        .send()
        .await
        .unwrap();
    assert_error(
        bad_venue,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let bad_email = app
        .request(Method::POST, "/v1/auth/register")
        .json(&json!({ "email": "not-an-email", "password": "correct horse", "display_name": "X" }))
        .send()
        .await
        .unwrap();
    assert_error(
        bad_email,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let short_password = app
        .request(Method::POST, "/v1/auth/register")
        .json(&json!({ "email": "x@example.com", "password": "short", "display_name": "X" }))
        .send()
        .await
        .unwrap();
    assert_error(
        short_password,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

async fn bad_tokens_ids_and_headers_are_refused(app: TestApp) {
    let owner = app.register("owner@example.com").await;
    let venue = app.venue(&owner).await;
    let event = app.published_event(&owner, 5).await;
    let join_path = format!("/v1/events/{event}/join");

    let anonymous = app
        .request(Method::POST, &join_path)
        .header("Idempotency-Key", "k")
        .send()
        .await
        .unwrap();
    assert_error(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;

    let forged = mint(b"some-other-key-some-other-key-xx", 3600);
    let response = app
        .request(Method::POST, &join_path)
        .bearer_auth(forged)
        .header("Idempotency-Key", "k")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;

    let expired = mint(JWT_KEY.as_bytes(), -3600);
    let response = app
        .request(Method::POST, &join_path)
        .bearer_auth(expired)
        .header("Idempotency-Key", "k")
        .send()
        .await
        .unwrap();
    let body_json = assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(body_json["error"]["message"], "the token has expired");

    let garbage = app
        .request(Method::POST, &join_path)
        .header("Authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_error(garbage, StatusCode::UNAUTHORIZED, "unauthorized").await;

    let user = app.user();
    let no_key = app
        .as_user(&user, Method::POST, &join_path)
        .send()
        .await
        .unwrap();
    assert_error(no_key, StatusCode::BAD_REQUEST, "missing_idempotency_key").await;

    let bad_id = app
        .as_user(&user, Method::POST, "/v1/events/123/join")
        .header("Idempotency-Key", "k")
        .send()
        .await
        .unwrap();
    assert_error(bad_id, StatusCode::BAD_REQUEST, "invalid_path").await;
    let unknown_venue = app
        .request(Method::GET, &format!("/v1/venues/{}", uuid::Uuid::now_v7()))
        .send()
        .await
        .unwrap();
    assert_error(unknown_venue, StatusCode::NOT_FOUND, "not_found").await;
    let bad_limit = app
        .request(Method::GET, "/v1/events?limit=1000")
        .send()
        .await
        .unwrap();
    assert_error(bad_limit, StatusCode::BAD_REQUEST, "invalid_query").await;
    let bad_cursor = app
        .request(Method::GET, "/v1/events?cursor=%%%")
        .send()
        .await
        .unwrap();
    assert_error(bad_cursor, StatusCode::BAD_REQUEST, "invalid_cursor").await;
    let forged_cursor = app
        .request(Method::GET, "/v1/events?cursor=bm9wZQ")
        .send()
        .await
        .unwrap();
    assert_error(forged_cursor, StatusCode::BAD_REQUEST, "invalid_cursor").await;
    let no_route = app
        .request(Method::GET, "/v2/nothing")
        .send()
        .await
        .unwrap();
    assert_error(no_route, StatusCode::NOT_FOUND, "not_found").await;
    // Paths that serve several methods answer any other as a path nobody
    // serves, in the envelope, as paths serving one method do.
    for (method, path) in [
        (Method::PUT, join_path.clone()),
        (Method::DELETE, format!("/v1/events/{event}")),
        (Method::PUT, "/v1/me".to_owned()),
        (Method::DELETE, "/v1/events".to_owned()),
        (Method::POST, format!("/v1/events/{event}/attendees")),
        (Method::GET, format!("/v1/events/{event}/nothing")),
        (Method::PUT, format!("/v1/venues/{venue}")),
        (Method::DELETE, format!("/v1/venues/{venue}/organizers")),
        (Method::GET, format!("/v1/venues/{venue}/nothing")),
    ] {
        let response = app.as_user(&user, method, &path).send().await.unwrap();
        assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    }

    assert_eq!(app.event(event).await["active_count"], 0, "nothing joined");
}

fn mint(key: &[u8], ttl: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims =
        json!({ "sub": uuid::Uuid::now_v7(), "iat": now, "exp": now + ttl, "iss": "turnout" });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap()
}
