//! A real Turnout server for the load tester's tests: SQLite in a temp dir,
//! a known JWT key, on a random port.

use secrecy::SecretString;
use turnout::app::Application;
use turnout::config::{Overrides, Settings};

/// Starts the server and returns its address; `rate_limited` keeps the
/// default write limits, otherwise they are off (load from one address).
pub async fn server(dir: &tempfile::TempDir, key: &str, rate_limited: bool) -> String {
    let mut settings = Settings::load(&Overrides {
        bind: Some("127.0.0.1:0".into()),
        database_url: Some(format!(
            "sqlite://{}/turnout.db?mode=rwc",
            dir.path().display()
        )),
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
    let app = Application::build(settings).await.unwrap();
    let target = format!("http://127.0.0.1:{}", app.port());
    actix_web::rt::spawn(app.run_until_stopped());
    target
}
