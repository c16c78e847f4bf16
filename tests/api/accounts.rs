use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, assert_error, body};
use crate::on_both_backends;

on_both_backends!(
    register_login_and_profile,
    duplicate_email_is_a_conflict,
    wrong_password_is_401
);

async fn register_login_and_profile(app: TestApp) {
    let user = app.register("Ada@Example.com").await;

    let login = app
        .request(Method::POST, "/v1/auth/login")
        .json(&json!({ "email": "ada@example.com", "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    assert_eq!(
        login.headers()["cache-control"],
        "no-store",
        "tokens are never cached"
    );
    let login = body(login).await;
    assert_eq!(login["data"]["user"]["id"], user.id.to_string());
    assert!(login["data"]["user"].get("password_hash").is_none());

    let patched = app
        .as_user(&user, Method::PATCH, "/v1/me")
        .json(&json!({ "interests": ["Jazz", "open-air"], "home": { "lat": 52.1, "lon": 5.1 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);

    let me = body(
        app.as_user(&user, Method::GET, "/v1/me")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(me["data"]["email"], "ada@example.com");
    assert_eq!(me["data"]["interests"], json!(["jazz", "open-air"]));
    assert_eq!(me["data"]["home"], json!({ "lat": 52.1, "lon": 5.1 }));
}

async fn duplicate_email_is_a_conflict(app: TestApp) {
    app.register("bo@example.com").await;
    let again = app
        .request(Method::POST, "/v1/auth/register")
        .json(
            &json!({ "email": "BO@example.com", "password": "another one", "display_name": "Bo" }),
        )
        .send()
        .await
        .unwrap();
    assert_error(again, StatusCode::CONFLICT, "email_taken").await;
}

async fn wrong_password_is_401(app: TestApp) {
    app.register("cy@example.com").await;
    for (email, password) in [
        ("cy@example.com", "wrong horse"),
        ("nobody@example.com", "correct horse"),
    ] {
        let response = app
            .request(Method::POST, "/v1/auth/login")
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .unwrap();
        let body = assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
        assert_eq!(body["error"]["message"], "wrong email or password");
    }
}

/// Guesses sent all at once count as they are let in, not once each is
/// checked: twenty in parallel from one address get no more wrong answers
/// than `lock_after`, as twenty in turn would.
#[actix_web::test]
async fn parallel_guesses_get_no_more_tries_than_guesses_in_turn() {
    let app = crate::helpers::spawn_app_with(crate::helpers::Backend::Sqlite, |s| {
        s.auth.lockout.lock_after = 3;
        s.auth.hashing.concurrency = 20;
        s.auth.hashing.queue = 20;
    })
    .await
    .unwrap();
    app.register("dee@example.com").await;
    let guesses = (0..20).map(|i| {
        app.request(Method::POST, "/v1/auth/login")
            .json(&json!({ "email": "dee@example.com", "password": format!("guess number {i}") }))
            .send()
    });
    let answers = futures_util::future::join_all(guesses).await;
    let mut checked = 0;
    for answer in answers {
        match answer.unwrap().status() {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("a guess answered {other}"),
        }
    }
    assert_eq!(checked, 3, "guesses checked, with lock_after = 3");
}

#[actix_web::test]
async fn repeated_failed_logins_lock_the_account_for_a_while() {
    let app = crate::helpers::spawn_app_with(crate::helpers::Backend::Sqlite, |s| {
        s.auth.lockout.slow_after = 1;
        s.auth.lockout.lock_after = 3;
    })
    .await
    .unwrap();
    app.register("dee@example.com").await;
    app.register("eve@example.com").await;
    let attempt = |email: &'static str, password: &'static str| {
        app.request(Method::POST, "/v1/auth/login")
            .json(&json!({ "email": email, "password": password }))
            .send()
    };
    for _ in 0..3 {
        let wrong = attempt("dee@example.com", "not the password")
            .await
            .unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    }
    // Locked: even the right password is refused, and says when to come back.
    let locked = attempt("dee@example.com", "correct horse").await.unwrap();
    assert!(
        locked.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 800
    );
    assert_error(locked, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Malformed emails are refused without counting: no account has one,
    // and a stranger's 20 KB of junk must not be kept for the lock window.
    // Counted, these 31 would lock the address (ten times `lock_after`).
    let junk = "j".repeat(20_000);
    for i in 0..31 {
        let wrong = app
            .request(Method::POST, "/v1/auth/login")
            .json(&json!({ "email": format!("{junk}{i}"), "password": "x" }))
            .send()
            .await
            .unwrap();
        let body = assert_error(wrong, StatusCode::UNAUTHORIZED, "unauthorized").await;
        assert_eq!(body["error"]["message"], "wrong email or password");
    }
    // Another account is not affected.
    assert_eq!(
        attempt("eve@example.com", "correct horse")
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}
