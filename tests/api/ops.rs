use reqwest::{Method, StatusCode};

use std::time::{Duration, Instant};

use crate::helpers::{Backend, TestApp, assert_error, body, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(health_ready_metrics_and_openapi);

async fn health_ready_metrics_and_openapi(app: TestApp) {
    assert_eq!(
        app.request(Method::GET, "/health")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let ready = app.request(Method::GET, "/ready").send().await.unwrap();
    let ready = body(ready).await;
    assert_eq!(ready["data"]["status"], "ready");
    assert_eq!(
        ready["data"]["fanout"], "local",
        "no Redis: one node's updates"
    );

    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 3).await;
    app.join(&app.user(), event).await;
    let metrics = app.metrics().await;
    for name in [
        "turnout_joins_total",
        "turnout_journal_batch_size_bucket",
        "turnout_journal_commit_seconds_bucket",
        "turnout_journal_step_seconds_bucket",
        "turnout_live_actors",
        "turnout_actor_mailbox_depth",
        "turnout_http_request_duration_seconds_bucket",
        "turnout_log_lines_dropped_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    // Latency is labelled by the route's pattern, whatever the path, and a
    // path no route matches is `unmatched`: a client cannot add labels.
    // Each path is asked twice (the second answer comes from the worker's
    // memory of it).
    let made_up = format!("/made-up/{}", uuid::Uuid::new_v4());
    for _ in 0..2 {
        let missing = app.request(Method::GET, &made_up).send().await.unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        app.event(event).await;
    }
    let metrics = app.metrics().await;
    for route in ["/v1/events/{id}/join", "/v1/events/{id}", "unmatched"] {
        assert!(
            metrics.contains(&format!("route=\"{route}\"")),
            "no latency labelled {route}"
        );
    }
    assert!(!metrics.contains(&made_up), "a path became a label");
    assert!(
        !metrics.contains(&event.to_string()),
        "an id became a label"
    );

    let spec = body(
        app.request(Method::GET, "/openapi.json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let schemas = &spec["components"]["schemas"];
    assert_eq!(
        schemas["Role"]["enum"],
        serde_json::json!(["attendee", "organizer", "admin"]),
        "roles are an enum generated clients can match on"
    );
    for (schema, field) in [
        ("CreateEventRequest", "title"),
        ("RegisterRequest", "email"),
        ("LoginRequest", "password"),
        ("EventEnvelope", "data"),
        ("JoinEnvelope", "data"),
        ("ErrorBody", "error"),
    ] {
        assert!(
            schemas[schema]["example"].get(field).is_some(),
            "{schema} has an example: {}",
            schemas[schema]
        );
    }
    for path in [
        "/v1/events/{id}/join",
        "/v1/me/joins",
        "/v1/auth/register",
        "/ready",
    ] {
        assert!(spec["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    let docs = app.request(Method::GET, "/docs").send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK, "/docs leads to the page");
    assert!(docs.text().await.unwrap().contains("swagger-ui"));
    let setup = app
        .request(Method::GET, "/docs/swagger-initializer.js")
        .send()
        .await
        .unwrap();
    assert!(setup.text().await.unwrap().contains("/openapi.json"));
}

/// A request id is believed only from a trusted proxy, and only in a sane
/// format; otherwise the server makes one.
#[actix_web::test]
async fn request_ids_are_kept_from_a_trusted_proxy_or_made() {
    let client = crate::helpers::spawn_app(crate::helpers::Backend::Sqlite)
        .await
        .unwrap();
    let ignored = client
        .request(Method::GET, "/health")
        .header("X-Request-ID", "abc-123")
        .send()
        .await
        .unwrap();
    assert_ne!(
        ignored.headers()["x-request-id"],
        "abc-123",
        "a client's id is not believed"
    );

    let app = crate::helpers::spawn_app_with(crate::helpers::Backend::Sqlite, |s| {
        s.rate_limits.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await
    .unwrap();
    let echoed = app
        .request(Method::GET, "/health")
        .header("X-Request-ID", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "abc-123");
    let hostile = app
        .request(Method::GET, "/health")
        .header("X-Request-ID", "a\tb{}")
        .send()
        .await
        .unwrap();
    assert_ne!(hostile.headers()["x-request-id"], "a\tb{}");
    let made = app.request(Method::GET, "/health").send().await.unwrap();
    assert!(uuid::Uuid::parse_str(made.headers()["x-request-id"].to_str().unwrap()).is_ok());
}

#[actix_web::test]
async fn cors_allows_only_listed_origins_and_never_credentials() {
    let app = crate::helpers::spawn_app_with(crate::helpers::Backend::Sqlite, |s| {
        s.http.cors_origins = vec!["https://app.example.org".into()];
    })
    .await
    .unwrap();
    let preflight = app
        .request(Method::OPTIONS, "/v1/events")
        .header("Origin", "https://app.example.org")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type, idempotency-key",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example.org"
    );
    assert!(
        preflight
            .headers()
            .get("access-control-allow-credentials")
            .is_none()
    );

    let allowed = app
        .request(Method::GET, "/health")
        .header("Origin", "https://app.example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.org"
    );

    let foreign = app
        .request(Method::GET, "/health")
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let foreign_preflight = app
        .request(Method::OPTIONS, "/v1/events")
        .header("Origin", "https://evil.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert!(
        foreign_preflight
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    // Refused in the API's error body (not actix-cors's plain text), with
    // its request id; a listed origin asking for a method not allowed is
    // refused for that, not for its origin.
    assert!(foreign_preflight.headers().contains_key("x-request-id"));
    assert_eq!(
        foreign_preflight.headers()["x-content-type-options"],
        "nosniff"
    );
    let refused = assert_error(
        foreign_preflight,
        StatusCode::BAD_REQUEST,
        "origin_not_allowed",
    )
    .await;
    assert!(!refused["error"]["request_id"].as_str().unwrap().is_empty());
    let unlisted_method = app
        .request(Method::OPTIONS, "/v1/events")
        .header("Origin", "https://app.example.org")
        .header("Access-Control-Request-Method", "PUT")
        .send()
        .await
        .unwrap();
    // Answered before the routes, each still carries the security headers.
    for answer in [&preflight, &unlisted_method] {
        assert_eq!(answer.headers()["x-content-type-options"], "nosniff");
        assert_eq!(answer.headers()["x-frame-options"], "DENY");
        assert_eq!(answer.headers()["referrer-policy"], "no-referrer");
    }
    let refused = assert_error(unlisted_method, StatusCode::BAD_REQUEST, "cors_refused").await;
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("method"),
        "{refused}"
    );
}

/// `/docs` works on a machine without internet: Swagger UI and its assets
/// come from the server itself, and the page lists the API's operations.
#[actix_web::test]
async fn the_docs_page_works_offline_in_a_real_browser() {
    use crate::browser::{browser_available, open};
    if !browser_available() {
        return;
    }
    let app = crate::helpers::spawn_app(crate::helpers::Backend::Sqlite)
        .await
        .unwrap();
    let (_browser, mut page) = open(&format!("{}/docs", app.address), 1280, 900).await;
    page.wait_for(
        "String(document.querySelectorAll('.opblock').length > 20)",
        "true",
    )
    .await;
    let listed = page
        .eval("Array.from(document.querySelectorAll('.opblock-summary-path')).map(e => e.textContent).join(' ')")
        .await;
    assert!(
        listed.as_str().unwrap().contains("/v1/events/{id}/join"),
        "{listed}"
    );
    let elsewhere = page
        .eval(
            "JSON.stringify(performance.getEntriesByType('resource')
               .map(r => r.name).filter(n => !n.startsWith(location.origin)))",
        )
        .await;
    assert_eq!(elsewhere, "[]", "the page loaded nothing from elsewhere");
}

/// Every metric the alert rules (deploy/prometheus) and the dashboard
/// (deploy/grafana) read is one a running server exports — from its start,
/// so that `rate()` and `increase()` see the first event too.
#[actix_web::test]
async fn the_alert_rules_and_the_dashboard_read_only_exported_metrics() {
    let redis = std::env::var("TURNOUT_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let backend = if crate::helpers::postgres_base_url().is_some() {
        crate::helpers::Backend::Postgres
    } else {
        crate::helpers::Backend::Sqlite
    };
    let app = crate::helpers::spawn_app_with(backend, |s| {
        if let Some(url) = &redis {
            s.redis_url = Some(secrecy::SecretString::from(url.clone()));
        }
    })
    .await
    .unwrap();
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 3).await;
    app.join(&app.user(), event).await;
    let mut socket = crate::realtime::connect(&app).await;
    crate::realtime::subscribe(&mut socket, &format!("event:{event}"), None).await;
    app.join(&app.user(), event).await;
    crate::realtime::next(&mut socket).await;
    // A person's recommendations are ranked once they are asked for.
    let fan = app.register("fan@example.com").await;
    let mut recs = crate::realtime::connect(&app).await;
    crate::recommendations::recs_as(&mut recs, &fan).await;

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut named = std::collections::BTreeSet::new();
    for file in ["prometheus/turnout.rules.yml", "grafana/turnout.json"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("turnout_") {
            let name: String = rest[start..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            // Recording rules (`turnout:…`) are made from these.
            if !rest[..start].ends_with(':') {
                named.insert(name.clone());
            }
            rest = &rest[start + name.len()..];
        }
    }
    assert!(named.len() > 25, "found only {named:?}");
    if redis.is_none() {
        eprintln!("TURNOUT_TEST_REDIS_URL is not set: not checking turnout_fanout_connected");
        named.remove("turnout_fanout_connected");
    }
    let page = app.metrics().await;
    let exported: std::collections::BTreeSet<&str> = page
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = named
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not on /metrics: {missing:?}"
    );
}

/// The real binary reports its memory — the kernel's resident set and the
/// allocator's account of the heap — and runs jemalloc's background thread,
/// which hands freed pages back while the server idles.
#[tokio::test]
async fn the_server_reports_its_heap_and_frees_pages_from_a_background_thread() {
    let dir = tempfile::tempdir().unwrap();
    let url = crate::helpers::fresh_database(crate::helpers::Backend::Sqlite, &dir)
        .await
        .unwrap();
    let server = crate::process::ServerProcess::start(&url, dir.path(), &[]).await;
    let app = TestApp::attach(&server.address, crate::helpers::JWT_KEY);
    let page = app.metrics().await;
    let gauge = |name: &str| -> f64 {
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} on /metrics"))
            .parse()
            .unwrap()
    };
    let (allocated, active, resident) = (
        gauge("turnout_heap_allocated_bytes"),
        gauge("turnout_heap_active_bytes"),
        gauge("turnout_heap_resident_bytes"),
    );
    assert!(0.0 < allocated && allocated <= active && active <= resident);
    let metadata = gauge("turnout_heap_metadata_bytes");
    assert!(0.0 < metadata && metadata < resident, "metadata {metadata}");
    assert!(gauge("turnout_heap_retained_bytes") >= 0.0);
    let rss = gauge("turnout_process_resident_bytes");
    assert!(rss >= 1024.0 * 1024.0, "resident set {rss}");
    let anonymous = gauge("turnout_process_resident_anonymous_bytes");
    assert!(
        0.0 < anonymous && anonymous <= rss,
        "anonymous {anonymous} of {rss}"
    );

    let threads = std::fs::read_dir(format!("/proc/{}/task", server.child.id())).unwrap();
    let names: Vec<String> = threads
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("jemalloc_bg_thd")),
        "no jemalloc background thread among {names:?}"
    );
}

mod idle_connections {
    use crate::helpers::Backend;

    #[actix_web::test]
    async fn sqlite() {
        super::connections_a_burst_opened_close_once_idle(Backend::Sqlite).await;
    }

    #[actix_web::test]
    async fn postgres() {
        super::connections_a_burst_opened_close_once_idle(Backend::Postgres).await;
    }
}

/// Connections a burst of requests opened close once they sit idle, while
/// the outbox relay keeps polling the database every 100 ms: the timers'
/// queries go through a pool of their own, or they would keep touching
/// every connection the burst left and none would ever close.
async fn connections_a_burst_opened_close_once_idle(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| s.database.idle_timeout_secs = 5).await else {
        return;
    };
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 3).await;
    app.join(&app.user(), event).await;
    // Roster pages are read from the database, each through a connection.
    futures_util::future::join_all((0..32).map(|_| app.attendees(&owner, event))).await;
    // None closes before it has been idle for five seconds.
    let after_burst = open_connections(&app.metrics().await, "requests");
    assert!(
        after_burst > 1,
        "the burst opened several connections ({after_burst})"
    );
    assert!(open_connections(&app.metrics().await, "background") >= 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open = open_connections(&app.metrics().await, "requests");
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} connections still open 30 s after the burst"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `turnout_db_connections` of one pool, from /metrics.
fn open_connections(metrics: &str, pool: &str) -> u32 {
    let series = format!("turnout_db_connections{{pool=\"{pool}\"}} ");
    let line = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("/metrics lacks the {pool} pool"));
    line.parse().unwrap()
}
