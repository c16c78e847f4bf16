//! Roles and the admin API: the first admin is made with `turnout set-role`,
//! and every admin route answers to admins only.

use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, User, assert_error, body};
use crate::on_both_backends;

on_both_backends!(admin_routes_answer_to_admins_only);

/// Sets a role through the real binary, then logs in again for a token
/// carrying it.
async fn promote(app: &TestApp, email: &str, role: &str) -> User {
    let output = Command::new(env!("CARGO_BIN_EXE_turnout"))
        .args(["set-role", email, role])
        .env("TURNOUT_DATABASE_URL", &app.database_url)
        .env("TURNOUT_LOG_LEVEL", "warn")
        .output()
        .expect("the binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let response = app
        .request(Method::POST, "/v1/auth/login")
        .json(&json!({ "email": email, "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let session = body(response).await;
    assert_eq!(session["data"]["user"]["role"], role);
    User {
        id: session["data"]["user"]["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
        token: session["data"]["token"].as_str().unwrap().to_owned(),
    }
}

const ROUTES: [(&str, &str); 2] = [
    ("GET", "/v1/admin/outbox/dead"),
    ("POST", "/v1/admin/outbox/1/replay"),
];

async fn admin_routes_answer_to_admins_only(app: TestApp) {
    let attendee = app.register("attendee@example.org").await;
    app.register("organizer@example.org").await;
    app.register("admin@example.org").await;
    let organizer = promote(&app, "organizer@example.org", "organizer").await;
    let admin = promote(&app, "admin@example.org", "admin").await;

    for (method, path) in ROUTES {
        let method: Method = method.parse().unwrap();
        let anonymous = app.request(method.clone(), path).send().await.unwrap();
        assert_error(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
        for who in [&attendee, &organizer] {
            let refused = app.as_user(who, method.clone(), path).send().await.unwrap();
            assert_error(refused, StatusCode::FORBIDDEN, "admin_only").await;
        }
        // A token minted elsewhere claims no role: not an admin either.
        let minted = app.user();
        let refused = app
            .as_user(&minted, method.clone(), path)
            .send()
            .await
            .unwrap();
        assert_error(refused, StatusCode::FORBIDDEN, "admin_only").await;
    }

    let listed = app
        .as_user(&admin, Method::GET, "/v1/admin/outbox/dead")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
    assert_eq!(body(listed).await["data"], json!([]));
    let missing = app
        .as_user(&admin, Method::POST, "/v1/admin/outbox/1/replay")
        .send()
        .await
        .unwrap();
    assert_error(missing, StatusCode::NOT_FOUND, "not_found").await;
    for bad in ["/v1/admin/outbox/0/replay", "/v1/admin/outbox/abc/replay"] {
        let response = app.as_user(&admin, Method::POST, bad).send().await.unwrap();
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_path").await;
    }
    let response = app
        .as_user(&admin, Method::GET, "/v1/admin/outbox/dead?limit=0")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_query").await;

    let unknown_role = Command::new(env!("CARGO_BIN_EXE_turnout"))
        .args(["set-role", "admin@example.org", "emperor"])
        .env("TURNOUT_DATABASE_URL", &app.database_url)
        .output()
        .unwrap();
    assert!(!unknown_role.status.success());
    let unknown_email = Command::new(env!("CARGO_BIN_EXE_turnout"))
        .args(["set-role", "nobody@example.org", "admin"])
        .env("TURNOUT_DATABASE_URL", &app.database_url)
        .output()
        .unwrap();
    assert!(!unknown_email.status.success());
}
