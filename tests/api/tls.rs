//! TLS terminated by the server itself, from PEM files in config.

use std::sync::Arc;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use turnout::config::TlsSettings;

use crate::helpers::{Backend, fresh_database, spawn_app_with, test_settings};
use crate::realtime::{next, send};

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

/// Over TLS the server cannot hand a hub the bare socket, so the
/// connection's own task encrypts and writes every frame: snapshots,
/// updates and answers all arrive, and the close goes out cleanly.
#[actix_web::test]
async fn live_updates_flow_over_wss() {
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    let dir = tempfile::tempdir().unwrap();
    let tls = certificate(&dir);
    let pem = std::fs::read(&tls.cert_path).unwrap();
    let mut app = spawn_app_with(Backend::Sqlite, |s| s.http.tls = Some(tls))
        .await
        .unwrap();
    app.address = app.address.replace("http://", "https://");
    app.client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 10).await;

    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&pem).unwrap())
        .unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let address = app.address.trim_start_matches("https://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("a TLS session");
    let (socket, response) =
        tokio_tungstenite::client_async(format!("wss://{address}/v1/ws"), stream)
            .await
            .expect("the upgrade is accepted over TLS");
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000",
        "the API's middleware answered the upgrade"
    );
    let mut socket = socket;
    send(
        &mut socket,
        json!({ "type": "subscribe", "channel": format!("event:{event}") }),
    )
    .await;
    let snapshot = next(&mut socket).await;
    assert_eq!(snapshot["type"], "snapshot");
    for expected in 1..=3 {
        app.join(&app.user(), event).await;
        let update = next(&mut socket).await;
        assert_eq!(update["data"]["event"]["active_count"], expected);
    }
    send(&mut socket, json!({ "type": "ping" })).await;
    assert_eq!(next(&mut socket).await["type"], "pong");
    socket.close(None).await.unwrap();
    // The server answers the close, and the connection ends without error.
    let mut answered = false;
    while let Some(message) =
        tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .expect("the server ends the connection")
    {
        answered |= matches!(message.expect("a clean end"), Message::Close(_));
    }
    assert!(answered, "the server's close frame arrived");
}
