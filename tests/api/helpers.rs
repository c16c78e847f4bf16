//! Spawns the real application on a random port against a fresh database,
//! and talks to it over HTTP.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use turnout::app::Application;
use turnout::auth::TokenKeys;
use turnout::config::{Overrides, Settings};
use turnout_actors::domain::UserId;
use uuid::Uuid;

pub const JWT_KEY: &str = "test-key-test-key-test-key-test-key";

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// Empty for a server attached from elsewhere.
    pub database_url: String,
    tokens: Arc<TokenKeys>,
    _dir: Option<Arc<tempfile::TempDir>>,
}

/// Where the Postgres suite runs: `TURNOUT_TEST_POSTGRES_URL`. Unset means
/// the Postgres tests are skipped (a bare machine); set but unreachable
/// means they fail.
pub fn postgres_base_url() -> Option<String> {
    std::env::var("TURNOUT_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// `TURNOUT_TEST_REDIS_URL`, if set; `what` names the tests skipped without.
pub fn redis_test_url(what: &str) -> Option<String> {
    let url = std::env::var("TURNOUT_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        eprintln!("TURNOUT_TEST_REDIS_URL is not set: skipping {what}");
    }
    url
}

/// Where Redis listens, for a proxy in front of it.
pub fn redis_address(url: &str) -> std::net::SocketAddr {
    let info = redis::Client::open(url)
        .unwrap()
        .get_connection_info()
        .clone();
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}").parse().unwrap(),
        other => panic!("a TCP Redis URL is needed, not {other:?}"),
    }
}

/// A connection to the test Redis at `url`, to check what the server wrote.
pub async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("TURNOUT_TEST_REDIS_URL is set but Redis does not answer")
}

static ONCE_NOTICE: LazyLock<()> = LazyLock::new(|| {
    eprintln!("TURNOUT_TEST_POSTGRES_URL is not set: skipping the Postgres variants");
});

/// A database URL nobody else uses: a temp SQLite file, or a new Postgres
/// database created from the base URL.
pub async fn fresh_database(backend: Backend, dir: &tempfile::TempDir) -> Option<String> {
    match backend {
        Backend::Sqlite => Some(format!(
            "sqlite://{}/turnout.db?mode=rwc",
            dir.path().display()
        )),
        Backend::Postgres => {
            let Some(base) = postgres_base_url() else {
                LazyLock::force(&ONCE_NOTICE);
                return None;
            };
            Some(turnout::testing::scratch_postgres_database(&base).await)
        }
    }
}

pub fn test_settings(database_url: &str, dir: &tempfile::TempDir) -> Settings {
    let mut settings = Settings::load(&Overrides {
        bind: Some("127.0.0.1:0".into()),
        database_url: Some(database_url.into()),
        ..Overrides::default()
    })
    .expect("default settings load");
    settings.jwt_secrets = Some(SecretString::from(JWT_KEY.to_owned()));
    settings.data_dir = dir.path().display().to_string();
    settings.http.workers = 2;
    settings.actors.threads = 2;
    // Many apps run at once against one Postgres (max_connections 100).
    settings.database.max_connections = 4;
    settings.database.min_connections = 0;
    // Tests drive many writes from one address; the limits have their own tests.
    settings.rate_limits.enabled = false;
    settings.http.max_connections_per_ip = 0;
    settings.realtime.max_connections_per_ip = 0;
    // Apps given Redis share it with every other test: each hears only its
    // own changes and relays its outbox to streams of its own, unless a
    // test links nodes on names of its choosing.
    let own = format!("turnout:test:{}", Uuid::new_v4());
    settings.outbox.stream_prefix = format!("{own}:");
    settings.realtime.redis_channel = own;
    settings
}

/// Starts the app; `None` when the backend is not configured here.
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(
    backend: Backend,
    tweak: impl FnOnce(&mut Settings),
) -> Option<TestApp> {
    let dir = tempfile::tempdir().expect("temp dir");
    let database_url = fresh_database(backend, &dir).await?;
    let mut settings = test_settings(&database_url, &dir);
    tweak(&mut settings);
    Some(start(settings, dir).await)
}

/// Starts another app on an existing database, as a second node would.
pub async fn spawn_node(database_url: &str, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = test_settings(database_url, &dir);
    tweak(&mut settings);
    start(settings, dir).await
}

async fn start(settings: Settings, dir: tempfile::TempDir) -> TestApp {
    let database_url = settings.database_url.expose_secret().to_owned();
    let tokens = TokenKeys::new(&settings.jwt_keys(), settings.auth.issuer.clone(), 3600);
    turnout::memory::read_heap_with(turnout::memory::jemalloc_heap);
    let app = Application::build(settings).await.expect("the app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        address,
        database_url,
        client: test_client(),
        tokens: Arc::new(tokens),
        _dir: Some(Arc::new(dir)),
    }
}

/// The tests' HTTP client. It lets go of an idle connection well before
/// the server's keep-alive (5 s) closes it: reused just as the server
/// closed it, a request would fail with no answer at all (a test that
/// slept about that long between two requests did, under load).
fn test_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// The database at `url` through the store's own port, for checks the API
/// does not show (of a server in another process, too).
pub async fn store_at(url: &str) -> Arc<dyn turnout::store::Store> {
    let pool = turnout::store::PoolSettings {
        max_connections: 2,
        min_connections: 0,
        acquire_timeout_ms: 3000,
        idle_timeout_secs: 60,
    };
    turnout::store::connect(url, &pool, Duration::from_secs(5))
        .await
        .unwrap()
}

/// A user as the tests drive one: an id and a token.
#[derive(Clone)]
pub struct User {
    pub id: Uuid,
    pub token: String,
}

impl TestApp {
    /// Talks to a server running elsewhere (a child process).
    pub fn attach(address: &str, jwt_key: &str) -> Self {
        Self {
            address: address.to_owned(),
            client: test_client(),
            database_url: String::new(),
            tokens: Arc::new(TokenKeys::new(
                &[SecretString::from(jwt_key.to_owned())],
                "turnout".into(),
                3600,
            )),
            _dir: None,
        }
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{}", self.address, path))
    }

    pub fn as_user(&self, user: &User, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path).bearer_auth(&user.token)
    }

    /// A token-only identity, as an identity provider or the load tester mints.
    pub fn user(&self) -> User {
        let id = UserId::new();
        User {
            id: id.as_uuid(),
            token: self.tokens.issue(id, None),
        }
    }

    /// A token claiming a role, as an identity provider would issue it.
    pub fn token_with_role(&self, role: &str) -> String {
        self.tokens.issue(UserId::new(), Some(role.to_owned()))
    }

    pub async fn register(&self, email: &str) -> User {
        self.register_with(email, json!({})).await
    }

    /// Registers with extra profile fields (`interests`, `home`).
    pub async fn register_with(&self, email: &str, profile: Value) -> User {
        let body = self.registered(email, profile).await;
        User {
            id: body["data"]["user"]["id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
            token: body["data"]["token"].as_str().unwrap().to_owned(),
        }
    }

    /// Registers `email` (password `correct horse`) and keeps the sign-in
    /// pass the answer gives.
    pub async fn register_for_pass(&self, email: &str) -> String {
        let body = self.registered(email, json!({})).await;
        body["data"]["sign_in_pass"].as_str().unwrap().to_owned()
    }

    /// The answer of a registration (password `correct horse`).
    async fn registered(&self, email: &str, profile: Value) -> Value {
        let mut account =
            json!({ "email": email, "password": "correct horse", "display_name": "Test" });
        if let (Some(account), Some(profile)) = (account.as_object_mut(), profile.as_object()) {
            account.extend(profile.clone());
        }
        let response = self
            .request(Method::POST, "/v1/auth/register")
            .json(&account)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        body(response).await
    }

    /// A login from client address `from` (believed when the server
    /// trusts this machine as a proxy), with a sign-in pass if given.
    pub async fn login_from(
        &self,
        from: &str,
        email: &str,
        password: &str,
        pass: Option<&str>,
    ) -> Response {
        let mut login = json!({ "email": email, "password": password });
        if let Some(pass) = pass {
            login["sign_in_pass"] = json!(pass);
        }
        self.request(Method::POST, "/v1/auth/login")
            .header("X-Forwarded-For", from)
            .json(&login)
            .send()
            .await
            .unwrap()
    }

    /// Answers the offer `user` holds (`accept` or `decline`), under an
    /// idempotency key if given.
    pub async fn answer_offer(
        &self,
        user: &User,
        event: Uuid,
        answer: &str,
        key: Option<&str>,
    ) -> Response {
        let path = format!("/v1/events/{event}/offer/{answer}");
        let mut request = self.as_user(user, Method::POST, &path);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }

    pub async fn venue(&self, owner: &User) -> Uuid {
        self.venue_at(owner, "Blue Room", (52.37, 4.89)).await
    }

    /// A venue of `owner`'s named `name`, at `(lat, lon)`.
    pub async fn venue_at(&self, owner: &User, name: &str, (lat, lon): (f64, f64)) -> Uuid {
        let response = self
            .as_user(owner, Method::POST, "/v1/venues")
            .json(&json!({ "name": name, "lat": lat, "lon": lon }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        id_of(&body(response).await)
    }

    /// A published event starting in a week.
    pub async fn published_event(&self, owner: &User, capacity: i64) -> Uuid {
        self.published_event_with(owner, capacity, json!({})).await
    }

    /// A published event starting in a week, with these settings besides
    /// (`waitlist_mode`, `offer_hold_secs`, …).
    pub async fn published_event_with(&self, owner: &User, capacity: i64, settings: Value) -> Uuid {
        let event = self.draft_event_with(owner, capacity, settings).await;
        self.publish(owner, event).await;
        event
    }

    /// The event `draft` describes (title, venue, start, capacity, …),
    /// created by `owner` and published.
    pub async fn published_as(&self, owner: &User, draft: Value) -> Uuid {
        let event = self.create_event(owner, &draft).await;
        self.publish(owner, event).await;
        event
    }

    async fn create_event(&self, owner: &User, draft: &Value) -> Uuid {
        let response = self
            .as_user(owner, Method::POST, "/v1/events")
            .json(draft)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        id_of(&body(response).await)
    }

    async fn publish(&self, owner: &User, event: Uuid) {
        let response = self
            .as_user(owner, Method::POST, &format!("/v1/events/{event}/publish"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    pub async fn draft_event(&self, owner: &User, capacity: i64) -> Uuid {
        self.draft_event_with(owner, capacity, json!({})).await
    }

    async fn draft_event_with(&self, owner: &User, capacity: i64, settings: Value) -> Uuid {
        let venue = self.venue(owner).await;
        let starts_at = chrono::Utc::now() + chrono::Duration::days(7);
        let mut event = json!({
            "title": "Late jazz", "venue_id": venue, "starts_at": starts_at,
            "capacity": capacity, "tags": ["jazz"]
        });
        event
            .as_object_mut()
            .unwrap()
            .extend(settings.as_object().cloned().unwrap_or_default());
        self.create_event(owner, &event).await
    }

    pub async fn join(&self, user: &User, event: Uuid) -> Response {
        self.join_with_key(user, event, &Uuid::new_v4().to_string())
            .await
    }

    pub async fn join_with_key(&self, user: &User, event: Uuid, key: &str) -> Response {
        self.as_user(user, Method::POST, &format!("/v1/events/{event}/join"))
            .header("Idempotency-Key", key)
            .send()
            .await
            .unwrap()
    }

    /// A join that may fail to connect (the server may be gone).
    pub async fn try_join(&self, user: &User, event: Uuid) -> reqwest::Result<Response> {
        self.as_user(user, Method::POST, &format!("/v1/events/{event}/join"))
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .send()
            .await
    }

    pub async fn leave(&self, user: &User, event: Uuid) -> Response {
        self.as_user(user, Method::DELETE, &format!("/v1/events/{event}/join"))
            .send()
            .await
            .unwrap()
    }

    pub async fn event(&self, event: Uuid) -> Value {
        let response = self
            .request(Method::GET, &format!("/v1/events/{event}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        body(response).await["data"].clone()
    }

    /// The app's database through the store's own port, for checks the
    /// API does not show.
    pub async fn store(&self) -> Arc<dyn turnout::store::Store> {
        store_at(&self.database_url).await
    }

    /// `GET /v1/admin/cluster`, as an admin.
    pub async fn cluster(&self) -> Value {
        let response = self
            .request(Method::GET, "/v1/admin/cluster")
            .bearer_auth(self.token_with_role("admin"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        body(response).await["data"].clone()
    }

    /// Waits until the cluster's `nodes` live nodes each hold the shards
    /// placement gives them, every shard held once.
    pub async fn wait_for_placement(&self, nodes: usize) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let view = self.cluster().await;
            let live: Vec<&Value> = view["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["live"] == true)
                .collect();
            let settled = live.len() == nodes
                && live.iter().all(|n| n["shards"] == n["shards_held"])
                && live
                    .iter()
                    .map(|n| n["shards_held"].as_u64().unwrap())
                    .sum::<u64>()
                    == view["shards"].as_u64().unwrap();
            if settled {
                return view;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "placement never settled on {nodes} nodes: {view}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's `/metrics` page.
    pub async fn metrics(&self) -> String {
        self.request(Method::GET, "/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Every attendee, following cursors.
    pub async fn attendees(&self, owner: &User, event: Uuid) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/events/{event}/attendees?limit=37");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let response = self
                .as_user(owner, Method::GET, &path)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let page = body(response).await;
            all.extend(page["data"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return all,
            }
        }
    }
}

/// An unlabelled metric's value on a `/metrics` page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

/// A metric with one label set (`kind="venue"`), 0 when not yet exported.
pub fn labelled(page: &str, name: &str, label: &str) -> f64 {
    let prefix = format!("{name}{{{label}}} ");
    page.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0.0, |value| value.parse().unwrap())
}

pub async fn body(response: Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
}

pub fn id_of(body: &Value) -> Uuid {
    body["data"]["id"].as_str().unwrap().parse().unwrap()
}

/// Asserts an error response: status, the envelope, and its code.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "expected {status} {code}");
    let request_id = response.headers().get("x-request-id").cloned();
    let body = body(response).await;
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_no_leak(&body);
    assert_eq!(
        body["error"]["request_id"].as_str(),
        request_id.as_ref().and_then(|h| h.to_str().ok()),
        "the envelope carries the response's request id"
    );
    body
}

/// Generates a SQLite and a Postgres variant of each scenario.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[actix_web::test]
                async fn $name() {
                    let app = $crate::helpers::spawn_app($crate::helpers::Backend::Sqlite).await.unwrap();
                    super::$name(app).await;
                }
            )*
        }
        mod postgres {
            $(
                #[actix_web::test]
                async fn $name() {
                    if let Some(app) = $crate::helpers::spawn_app($crate::helpers::Backend::Postgres).await {
                        super::$name(app).await;
                    }
                }
            )*
        }
    };
}

/// An error body must not leak internals: SQL, file paths, panics, Rust type
/// paths or driver names. Every error the suite checks passes through here.
pub fn assert_no_leak(body: &Value) {
    assert_no_leak_but_echo(body, "");
}

/// [`assert_no_leak`] for an answer that may quote what the client sent
/// (a JSON parser's message does): a word the client sent itself is no leak.
pub fn assert_no_leak_but_echo(body: &Value, sent: &str) {
    let text = body.to_string();
    let lowered = text.to_lowercase();
    let sent = sent.to_lowercase();
    for leak in [
        "select ",
        "insert ",
        "update ",
        "delete from",
        "sqlx",
        "sqlite",
        "postgres",
        "constraint",
        "/src/",
        ".rs:",
        "panicked",
        "backtrace",
        "::",
        "actix",
        "serde",
    ] {
        assert!(
            !lowered.contains(leak) || sent.contains(leak),
            "error body leaks {leak:?}: {text}"
        );
    }
}

/// A TCP proxy in front of a server (Redis, Postgres) that a test breaks as
/// a network would. Switched off, it cuts every connection and refuses new
/// ones until switched on again. Frozen, the connections open then go
/// silent — held open, carrying nothing either way, as over a dead network
/// — while connections made afterwards flow.
pub struct TcpProxy {
    pub port: u16,
    link: tokio::sync::watch::Sender<Link>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Link {
    on: bool,
    freezes: u64,
}

impl TcpProxy {
    pub async fn to(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (link, _) = tokio::sync::watch::channel(Link {
            on: true,
            freezes: 0,
        });
        let links = link.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut link = links.subscribe();
                let at_start = *link.borrow_and_update();
                if !at_start.on {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let changed = |now: &Link| !now.on || now.freezes != at_start.freezes;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        frozen = async { link.wait_for(changed).await.is_ok_and(|now| now.on) } => {
                            if frozen {
                                // Held open, never read or written again.
                                std::future::pending::<()>().await;
                            }
                        }
                    }
                });
            }
        });
        Self { port, link }
    }

    pub fn off(&self) {
        self.link.send_modify(|link| link.on = false);
    }

    pub fn on(&self) {
        self.link.send_modify(|link| link.on = true);
    }

    pub fn freeze(&self) {
        self.link.send_modify(|link| link.freezes += 1);
    }
}

/// An upgrade refused for its address's cap: the client's own doing, so
/// `429 rate_limited` (never a 5xx, which would page an operator), naming the
/// cap and when to try again.
pub fn assert_connections_refused_to_the_client(
    response: &tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>,
    cap: usize,
) {
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "5");
    let body: serde_json::Value =
        serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("at most {cap}")), "{message}");
}

/// How long a test waits for what happens eventually (a stream drained, a
/// breaker probed): long enough for a busy shared machine.
pub const EVENTUALLY: Duration = Duration::from_secs(30);

/// Polls `done` every 100 ms until it holds; fails naming `what` if it
/// does not within `within`.
pub async fn wait_until<F: std::future::Future<Output = bool>>(
    within: Duration,
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
