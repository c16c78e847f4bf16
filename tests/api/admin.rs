//! Roles and the admin API: the first admin is made with `turnout set-role`,
//! and every admin route answers to admins only.

use std::process::{Command, Output};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, User, assert_error, body};
use crate::on_both_backends;

on_both_backends!(
    admin_routes_answer_to_admins_only,
    a_demoted_admin_is_refused_at_once
);

/// Runs the real binary with these arguments and settings (as variables).
fn turnout(args: &[&str], settings: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_turnout"));
    command.args(args).env_remove("TURNOUT_JWT_SECRETS");
    for (name, value) in settings {
        command.env(name, value);
    }
    command.output().expect("the binary runs")
}

/// What a run of the binary wrote on stdout, once it succeeded.
fn succeeded(output: Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// What a run of the binary wrote on stderr, once it failed.
fn failed(output: Output) -> String {
    assert!(!output.status.success());
    String::from_utf8(output.stderr).unwrap()
}

/// The server's settings for the binary, as variables.
fn settings_of(app: &TestApp) -> [(&str, &str); 2] {
    [
        ("TURNOUT_DATABASE_URL", &app.database_url),
        ("TURNOUT_JWT_SECRETS", crate::helpers::JWT_KEY),
    ]
}

/// Sets a role through the real binary, with the server's settings.
fn set_role(app: &TestApp, email: &str, role: &str) {
    succeeded(turnout(&["set-role", email, role], &settings_of(app)));
}

/// Sets a role through the real binary, then logs in again for a token
/// carrying it.
async fn promote(app: &TestApp, email: &str, role: &str) -> User {
    set_role(app, email, role);
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

const ROUTES: [(&str, &str); 3] = [
    ("GET", "/v1/admin/stats"),
    ("GET", "/v1/admin/outbox/dead"),
    ("POST", "/v1/admin/outbox/1/replay"),
];

/// The role is in the token, but an admin's account is looked at too: a
/// demoted admin's token, still valid for hours, opens no admin route and
/// no venue of someone else's. A token from a trusted issuer for a user
/// with no account here is what it says.
async fn a_demoted_admin_is_refused_at_once(app: TestApp) {
    let owner = app.register("owner@example.org").await;
    let venue = app.venue(&owner).await;
    app.register("admin@example.org").await;
    let admin = promote(&app, "admin@example.org", "admin").await;
    let organizers = format!("/v1/venues/{venue}/organizers");
    let as_admin = |path: &str| app.as_user(&admin, Method::GET, path).send();
    assert_eq!(
        as_admin("/v1/admin/stats").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        as_admin(&organizers).await.unwrap().status(),
        StatusCode::OK
    );
    let stats = app
        .request(Method::GET, "/v1/admin/stats")
        .bearer_auth(app.token_with_role("admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), StatusCode::OK, "no account here: the token");

    set_role(&app, "admin@example.org", "attendee");
    assert_error(
        as_admin("/v1/admin/stats").await.unwrap(),
        StatusCode::FORBIDDEN,
        "admin_only",
    )
    .await;
    let refused = as_admin(&organizers).await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}

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

    // The daily-facts consumer counts what was committed (through the
    // in-process delivery here: no Redis).
    let event = app.published_event(&attendee, 5).await;
    for _ in 0..3 {
        assert_eq!(
            app.join(&app.user(), event).await.status(),
            StatusCode::CREATED
        );
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let response = app
            .as_user(&admin, Method::GET, "/v1/admin/stats?days=2")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let stats = body(response).await["data"].clone();
        let count = |kind: &str| {
            stats
                .as_array()
                .unwrap()
                .iter()
                .filter(|row| row["event_type"] == kind)
                .map(|row| row["facts"].as_i64().unwrap())
                .sum::<i64>()
        };
        if count("joined") == 3 {
            assert_eq!(count("created"), 1);
            assert_eq!(count("published"), 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never counted: {stats}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Without Redis the count and the rows' mark as published are one
    // transaction: counted means published, and a row handed over again
    // counts nothing.
    let store = app.store().await;
    assert!(
        store
            .outbox(turnout::store::OutboxStatus::Pending, 0, 10)
            .await
            .unwrap()
            .is_empty(),
        "every counted row is published"
    );
    const PUBLISHED: &str = "SELECT id FROM outbox WHERE status = 'published'";
    let published: Vec<i64> = if app.database_url.starts_with("sqlite:") {
        let db = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
        sqlx::query_scalar(PUBLISHED).fetch_all(&db).await.unwrap()
    } else {
        let db = sqlx::PgPool::connect(&app.database_url).await.unwrap();
        sqlx::query_scalar(PUBLISHED).fetch_all(&db).await.unwrap()
    };
    assert_eq!(published.len(), 5, "created, published, three joins");
    let again: Vec<(i64, turnout::store::DailyFact)> = published
        .iter()
        .map(|id| {
            let fact = turnout::store::DailyFact {
                message_id: uuid::Uuid::now_v7(),
                day: "2026-01-02".into(),
                event_type: "joined".into(),
            };
            (*id, fact)
        })
        .collect();
    assert_eq!(
        store
            .count_daily_facts_and_publish(&again, 0)
            .await
            .unwrap(),
        0
    );
    assert!(
        !store
            .daily_facts("2026-01-02")
            .await
            .unwrap()
            .iter()
            .any(|(day, _, _)| day == "2026-01-02"),
        "nothing counted twice"
    );

    for bad in ["?days=0", "?days=367", "?days=x", "?weeks=1"] {
        let response = app
            .as_user(&admin, Method::GET, &format!("/v1/admin/stats{bad}"))
            .send()
            .await
            .unwrap();
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_query").await;
    }

    // The inbox: a message delivered again changes nothing.
    let fact = |message_id, event_type: &str| turnout::store::DailyFact {
        message_id,
        day: "2026-01-01".into(),
        event_type: event_type.into(),
    };
    let (first, second) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let batch = [
        fact(first, "joined"),
        fact(second, "left"),
        fact(first, "joined"),
    ];
    assert_eq!(
        store.count_daily_facts(&batch).await.unwrap(),
        2,
        "a repeat within the batch counts once"
    );
    assert_eq!(
        store.count_daily_facts(&batch[..1]).await.unwrap(),
        0,
        "a redelivery counts nothing"
    );
    // Once the retention has passed, the purge forgets the messages (a
    // redelivery then would count again: none can come that late).
    let later = chrono::Utc::now().timestamp_micros() + 1;
    assert_eq!(store.purge_inbox(later, 100).await.unwrap(), 2);
    assert_eq!(store.purge_inbox(later, 100).await.unwrap(), 0);
    let counted: Vec<_> = store
        .daily_facts("2026-01-01")
        .await
        .unwrap()
        .into_iter()
        .filter(|(day, _, _)| day == "2026-01-01")
        .collect();
    assert_eq!(
        counted,
        vec![
            ("2026-01-01".to_owned(), "joined".to_owned(), 1),
            ("2026-01-01".to_owned(), "left".to_owned(), 1)
        ]
    );

    let settings = settings_of(&app);
    let unknown_role = failed(turnout(
        &["set-role", "admin@example.org", "emperor"],
        &settings,
    ));
    assert!(
        unknown_role.contains("possible values: attendee, organizer, admin"),
        "the error names the roles: {unknown_role}"
    );
    let unknown_email = failed(turnout(
        &["set-role", "nobody@example.org", "admin"],
        &settings,
    ));
    assert!(
        unknown_email.contains("no account has the email"),
        "{unknown_email}"
    );
}

/// `turnout account-digest` prints, and only that on stdout, the digest
/// audit lines name an account by (`AccountDigests`, which the login guard
/// and the login route log with): of the normalised email, keyed by the
/// signing JWT key — not the email, and not a hash anyone could compute
/// from a list of addresses. Without a key it makes none up.
#[test]
fn account_digest_prints_the_keyed_digest_of_the_email() {
    let digest = |email: &str, key: &str| {
        let run = turnout(
            &["account-digest", email],
            &[("TURNOUT_JWT_SECRETS", key), ("RUST_LOG", "debug")],
        );
        succeeded(run).trim().to_owned()
    };
    let (key, other) = ("a".repeat(40), "b".repeat(40));
    let printed = digest("Ada@Example.org", &format!("{key},{other}"));
    let expected = turnout::auth::AccountDigests::new(&key.clone().into())
        .logged(&turnout::auth::Email::parse("ada@example.org").unwrap());
    assert_eq!(
        printed, expected,
        "the first key signs, and keys the digest"
    );
    assert_eq!(printed.len(), 16);
    assert_ne!(printed, digest("ada@example.org", &other), "another key");

    let refused = turnout(
        &["account-digest", "not-an-email"],
        &[("TURNOUT_JWT_SECRETS", &key)],
    );
    assert!(failed(refused).contains("not a valid email address"));

    let no_data = tempfile::tempdir().unwrap();
    let data_dir = no_data.path().to_str().unwrap();
    let keyless = failed(turnout(
        &["account-digest", "ada@example.org"],
        &[("TURNOUT_DATA_DIR", data_dir)],
    ));
    assert!(keyless.contains("no JWT key"), "{keyless}");
    assert!(
        std::fs::read_dir(no_data.path()).unwrap().next().is_none(),
        "no key made up"
    );
}

/// In development, with no key configured, a server makes a key of its own
/// in the data directory (its signing key, which keys its digests too),
/// and `turnout account-digest` finds it there and keys its digests with
/// it.
#[actix_web::test]
async fn in_development_account_digest_uses_the_key_the_server_made() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/turnout.db?mode=rwc", dir.path().display());
    let mut settings = crate::helpers::test_settings(&url, &dir);
    settings.jwt_secrets = None;
    let app = turnout::app::Application::build(settings).await.unwrap();
    drop(app);
    let made = std::fs::read_to_string(dir.path().join("jwt.key")).unwrap();
    let expected = turnout::auth::AccountDigests::new(&made.trim().to_owned().into())
        .logged(&turnout::auth::Email::parse("ada@example.org").unwrap());

    let data_dir = dir.path().to_str().unwrap();
    let printed = succeeded(turnout(
        &["account-digest", "ada@example.org"],
        &[("TURNOUT_DATA_DIR", data_dir)],
    ));
    assert_eq!(printed.trim(), expected);
}
