//! A real browser for the pages the server serves: headless Chromium
//! (Debian's package), driven over the DevTools protocol.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The browser test runs where Chromium is installed; CI sets
/// TURNOUT_TEST_BROWSER=1 so that a missing browser fails instead of skipping.
pub fn browser_available() -> bool {
    let present = std::path::Path::new(CHROMIUM).exists();
    if !present && std::env::var_os("TURNOUT_TEST_BROWSER").is_some() {
        panic!("TURNOUT_TEST_BROWSER is set but {CHROMIUM} is missing (apt-get install chromium)");
    }
    if !present {
        eprintln!("{CHROMIUM} not found: skipping the browser test");
    }
    present
}

pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts headless Chromium on `url`; returns it and its DevTools endpoint.
#[allow(
    clippy::zombie_processes,
    reason = "the Browser guard kills and waits on drop"
)]
pub fn launch(url: &str, width: u32, height: u32) -> (Browser, String) {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--remote-debugging-port=0",
            &format!("--window-size={width},{height}"),
            &format!("--user-data-dir={}", profile.path().display()),
            url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let stderr = child.stderr.take().unwrap();
    let browser = Browser {
        child,
        _profile: profile,
    };
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if let Some(endpoint) = line.strip_prefix("DevTools listening on ") {
            let port = endpoint
                .split(':')
                .nth(2)
                .and_then(|p| p.split('/').next())
                .unwrap()
                .to_owned();
            return (browser, format!("127.0.0.1:{port}"));
        }
    }
    panic!("chromium did not report its DevTools endpoint");
}

/// Headless Chromium on `url` at `width`×`height`, its page attached; the
/// browser lives as long as the guard.
pub async fn open(url: &str, width: u32, height: u32) -> (Browser, Page) {
    let (browser, devtools) = launch(url, width, height);
    (browser, Page::attach(&devtools).await)
}

/// A DevTools session on the page.
pub struct Page {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    /// Events that arrived while a call waited for its reply.
    events: std::collections::VecDeque<Value>,
}

impl Page {
    pub async fn attach(devtools: &str) -> Self {
        let targets: Value = reqwest::get(format!("http://{devtools}/json/list"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target");
        let url = page["webSocketDebuggerUrl"].as_str().unwrap();
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Self {
            socket,
            next_id: 1,
            events: std::collections::VecDeque::new(),
        }
    }

    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::text(request.to_string()))
            .await
            .unwrap();
        loop {
            let message = self.receive().await;
            if message["id"] == id {
                return message["result"].clone();
            }
            if message.get("method").is_some() {
                self.events.push_back(message);
            }
        }
    }

    /// The next event named `method` (e.g. `Fetch.requestPaused`), within
    /// 20 s; other events are dropped.
    pub async fn event(&mut self, method: &str) -> Value {
        if let Some(at) = self.events.iter().position(|e| e["method"] == method) {
            let event = self.events.remove(at).unwrap();
            self.events.drain(..at);
            return event["params"].clone();
        }
        self.events.clear();
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let message = self.receive().await;
                if message["method"] == method {
                    return message["params"].clone();
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {method} within 20 s"))
    }

    async fn receive(&mut self) -> Value {
        let Some(Ok(Message::Text(text))) = self.socket.next().await else {
            panic!("devtools closed")
        };
        serde_json::from_str(&text).unwrap()
    }

    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Polls an expression until it yields `expected`, for up to 20 s.
    pub async fn wait_for(&mut self, expression: &str, expected: &str) {
        self.wait_for_within(expression, expected, Duration::from_secs(20))
            .await;
    }

    pub async fn wait_for_within(&mut self, expression: &str, expected: &str, within: Duration) {
        let deadline = Instant::now() + within;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            last = self.eval(expression).await;
            if last == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{expression} stayed {last}, expected {expected:?}");
    }

    pub async fn screenshot(&mut self, path: &str) {
        use base64::Engine;
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}
