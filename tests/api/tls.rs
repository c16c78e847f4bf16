//! TLS terminated by the server itself, from PEM files in config.

use reqwest::StatusCode;
use turnout::config::TlsSettings;

use crate::helpers::{Backend, fresh_database, spawn_app_with, test_settings};

/// A self-signed certificate for 127.0.0.1 (rcgen), written as PEM files.
fn certificate(dir: &tempfile::TempDir) -> TlsSettings {
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("a certificate");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    TlsSettings {
        cert_path: cert.display().to_string(),
        key_path: key.display().to_string(),
    }
}

#[actix_web::test]
async fn the_server_speaks_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let tls = certificate(&dir);
    let pem = std::fs::read(&tls.cert_path).unwrap();
    let app = spawn_app_with(Backend::Sqlite, |s| s.http.tls = Some(tls))
        .await
        .unwrap();
    let https = app.address.replace("http://", "https://");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let health = client.get(format!("{https}/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(
        health.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    assert_eq!(health.headers()["x-content-type-options"], "nosniff");

    // Plain HTTP to the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("{}/health", app.address))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

#[actix_web::test]
async fn unreadable_certificates_stop_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(Backend::Sqlite, &dir).await.unwrap();
    let mut settings = test_settings(&url, &dir);
    settings.http.tls = Some(TlsSettings {
        cert_path: dir.path().join("missing.pem").display().to_string(),
        key_path: dir.path().join("missing.key").display().to_string(),
    });
    let error = turnout::app::Application::build(settings)
        .await
        .err()
        .expect("no start without a certificate");
    assert!(
        format!("{error:#}").contains("cannot read the TLS certificate"),
        "{error:#}"
    );
}
