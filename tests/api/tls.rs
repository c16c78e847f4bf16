//! TLS terminated by the server itself, from PEM files in config.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
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

/// A server with TLS on, its client trusting the certificate, and one event.
async fn wss_app(dir: &tempfile::TempDir) -> (crate::helpers::TestApp, Wss, uuid::Uuid) {
    let tls = certificate(dir);
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
    let wss = Wss::trusting(&pem, app.address.trim_start_matches("https://"));
    (app, wss, event)
}

type WssSocket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens WebSockets over TLS to the test server.
struct Wss {
    connector: tokio_rustls::TlsConnector,
    address: String,
}

impl Wss {
    fn trusting(pem: &[u8], address: &str) -> Self {
        use tokio_rustls::rustls::pki_types::{CertificateDer, pem::PemObject};
        use tokio_rustls::rustls::{ClientConfig, RootCertStore};

        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pem).unwrap())
            .unwrap();
        let config = ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            address: address.to_owned(),
        }
    }

    async fn connect(
        &self,
    ) -> (
        WssSocket,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ) {
        use tokio_rustls::rustls::pki_types::ServerName;

        let tcp = tokio::net::TcpStream::connect(&self.address).await.unwrap();
        let stream = self
            .connector
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .expect("a TLS session");
        tokio_tungstenite::client_async(format!("wss://{}/v1/ws", self.address), stream)
            .await
            .expect("the upgrade is accepted over TLS")
    }

    /// A socket subscribed to the event, its snapshot read.
    async fn subscribed(&self, event: uuid::Uuid) -> WssSocket {
        let (mut socket, _) = self.connect().await;
        send(
            &mut socket,
            json!({ "type": "subscribe", "channel": format!("event:{event}") }),
        )
        .await;
        assert_eq!(next(&mut socket).await["type"], "snapshot");
        socket
    }
}

/// Reads until the server ends the connection; the close frames seen.
async fn until_the_end(socket: &mut WssSocket) -> Vec<Option<u16>> {
    let mut closes = Vec::new();
    while let Some(message) =
        tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .expect("the server ends the connection")
    {
        if let Message::Close(frame) = message.expect("a clean end") {
            closes.push(frame.map(|f| u16::from(f.code)));
        }
    }
    closes
}

/// Over TLS the server cannot hand a hub the bare socket, so the
/// connection's own task encrypts and writes every frame: snapshots,
/// updates and answers all arrive, and the close goes out cleanly.
#[actix_web::test]
async fn live_updates_flow_over_wss() {
    let dir = tempfile::tempdir().unwrap();
    let (app, wss, event) = wss_app(&dir).await;
    let (mut socket, response) = wss.connect().await;
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000",
        "the API's middleware answered the upgrade"
    );
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
    assert!(
        !until_the_end(&mut socket).await.is_empty(),
        "the server's close frame arrived"
    );
}

/// A close the server decides goes out over TLS and ends the connection,
/// and a TLS WebSocket holds one descriptor in the server, its socket's,
/// open or closing.
#[cfg(target_os = "linux")]
#[actix_web::test]
async fn the_server_closes_a_wss_connection_and_holds_one_socket_each() {
    let dir = tempfile::tempdir().unwrap();
    let (app, wss, event) = wss_app(&dir).await;
    let port = app.address.rsplit(':').next().unwrap().parse().unwrap();
    // The test client's HTTP connections, kept alive.
    let http = server_sockets(port).len();
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(wss.subscribed(event).await);
    }
    let open = server_sockets(port);
    assert!(open.len() >= sockets.len(), "{open:?}");
    assert!(
        open.iter().all(|&fds| fds == 1),
        "descriptors per socket: {open:?}"
    );

    // Over the 4 KiB frame limit: the server closes with 1009, and ends
    // the connection after its linger, reading what the client still sends
    // on a handle of its own, let go with the connection.
    sockets[0]
        .send(Message::text("x".repeat(8 * 1024)))
        .await
        .unwrap();
    assert_eq!(until_the_end(&mut sockets[0]).await, [Some(1009)]);
    for socket in &mut sockets[1..] {
        socket.close(None).await.unwrap();
        until_the_end(socket).await;
    }
    drop(sockets);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server_sockets(port).len() > http && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let left = server_sockets(port);
    assert!(left.len() <= http, "after the closes: {left:?}");
}

/// How many descriptors this process holds on each TCP connection accepted
/// on `port` (the in-process server's side; the other tests' servers
/// listen elsewhere), from Linux's `/proc`: a socket's inode is in
/// `/proc/net/tcp` and behind each of its descriptors in `/proc/self/fd`.
#[cfg(target_os = "linux")]
fn server_sockets(port: u16) -> Vec<usize> {
    const LISTEN: &str = "0A";
    let table = std::fs::read_to_string("/proc/net/tcp").expect("Linux's /proc");
    let mut accepted: std::collections::HashMap<String, usize> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields[1].rsplit(':').next()?, 16).ok()?;
            (local_port == port && fields[3] != LISTEN)
                .then(|| (format!("socket:[{}]", fields[9]), 0))
        })
        .collect();
    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(target) = std::fs::read_link(fd.path())
            && let Some(fds) = accepted.get_mut(target.to_string_lossy().as_ref())
        {
            *fds += 1;
        }
    }
    // A connection closed by both sides lingers in the table (TIME_WAIT)
    // with no descriptor.
    accepted.into_values().filter(|&fds| fds > 0).collect()
}
