//! Real Turnout servers for the load tester's tests: SQLite in a temp dir
//! (or a cluster on a fresh Postgres database), a known JWT key, on random
//! ports.

use secrecy::SecretString;
use turnout::app::Application;
use turnout::config::{Overrides, Settings};

/// Starts the server and returns its address; `rate_limited` keeps the
/// default write limits, otherwise they are off (load from one address).
pub async fn server(dir: &tempfile::TempDir, key: &str, rate_limited: bool) -> String {
    let url = format!("sqlite://{}/turnout.db?mode=rwc", dir.path().display());
    start(&url, dir, key, rate_limited, |_| {}).await
}

/// `nodes` servers forming a cluster on a fresh Postgres database, their
/// addresses; `None` when `TURNOUT_TEST_POSTGRES_URL` is not set. With
/// [`redis_url`], they hear each other's changes through Redis, as a
/// production cluster's nodes do, on a channel of their own.
#[allow(dead_code, reason = "not every test file runs a cluster")]
pub async fn cluster(dir: &tempfile::TempDir, key: &str, nodes: usize) -> Option<Vec<String>> {
    let base = std::env::var("TURNOUT_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    let url = turnout::testing::scratch_postgres_database(&base).await;
    let own = format!("turnout:loadtest:{}", uuid::Uuid::new_v4());
    let link = |settings: &mut Settings| {
        if let Some(redis) = redis_url() {
            settings.redis_url = Some(SecretString::from(redis));
            settings.outbox.stream_prefix = format!("{own}:");
            settings.realtime.redis_channel = own.clone();
        }
    };
    let mut addresses = Vec::new();
    for _ in 0..nodes {
        addresses.push(start(&url, dir, key, false, link).await);
    }
    Some(addresses)
}

/// `TURNOUT_TEST_REDIS_URL`, when set.
#[allow(dead_code, reason = "not every test file runs a cluster")]
pub fn redis_url() -> Option<String> {
    std::env::var("TURNOUT_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

async fn start(
    url: &str,
    dir: &tempfile::TempDir,
    key: &str,
    rate_limited: bool,
    configure: impl FnOnce(&mut Settings),
) -> String {
    let mut settings = Settings::load(&Overrides {
        bind: Some("127.0.0.1:0".into()),
        database_url: Some(url.into()),
        ..Overrides::default()
    })
    .unwrap();
    settings.jwt_secrets = Some(SecretString::from(key.to_owned()));
    settings.data_dir = dir.path().display().to_string();
    if !rate_limited {
        settings.rate_limits.enabled = false;
    }
    // Every connection comes from this one address.
    settings.http.max_connections_per_ip = 0;
    settings.realtime.max_connections_per_ip = 0;
    configure(&mut settings);
    let app = Application::build(settings).await.unwrap();
    let target = format!("http://127.0.0.1:{}", app.port());
    actix_web::rt::spawn(app.run_until_stopped());
    target
}
