//! Wiring: builds the application from settings in named steps — the store,
//! the core (journal, event actors, hubs, recommenders), the background
//! maintenance, and the HTTP server — and stops it in order. Tests build the
//! same [`Application`] on port 0.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_http::{HttpService, TlsAcceptorConfig};
use actix_service::{IntoServiceFactory, ServiceFactoryExt};
use actix_web::dev::{AppConfig, Server};
use actix_web::middleware::{DefaultHeaders, from_fn};
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::oneshot;
use turnout_actors::changes::ChangeSink;
use turnout_actors::recommend::Recommenders;
use turnout_actors::shards::HeldShards;
use turnout_actors::store::EventStore;
use turnout_actors::{ActorSettings, EventRegistry, Flush, Journal, JournalSettings};

use crate::auth::{AccountDigests, Hashing, LoginGuard, SignInPasses, TokenKeys};
use crate::background::{Background, every, purge_in_batches};
use crate::cluster::Node;
use crate::cluster::forward::{Commands, InternalKeys, Peers};
use crate::cluster::placement::Placement;
use crate::config::{Environment, Settings, redact_url};
use crate::event_cache::{EventCache, Serving};
use crate::fanout_link::FanoutLink;
use crate::http::client_limits::{self, BodyDeadline, HttpConnections};
use crate::http::drain::{self, Drain};
use crate::http::ops::MetricsAccess;
use crate::http::rate_limit::RateLimits;
use crate::http::upgrade::WorkerApp;
use crate::http::ws::Realtime;
use crate::http::{self, AppState, request_context};
use crate::realtime::{
    ConnectionLimits, FeedPlaces, Hubs, LocalFanout, MeFeeds, RedisFanout, Router,
};
use crate::recommendations::{StoreSource, load_catalog};
use crate::store::{self, Store};

pub struct Application {
    port: u16,
    server: Server,
    /// Set as the node stops accepting: answers close their connections.
    drain: Drain,
    /// The API's listening socket, to refuse new connections at a stop
    /// before the workers stop.
    listening: TcpListener,
    /// Open HTTP connections: a stop waits for them to close.
    connections: Arc<HttpConnections>,
    /// How long a stop waits for them at most.
    drain_for: Duration,
    /// `/metrics` on a listener of its own, when `metrics.bind` is set.
    metrics_server: Option<Server>,
    journal: Addr<Journal>,
    /// In a cluster: hands this node's shards over before it stops.
    placement: Option<Placement>,
    threads: OwnedThreads,
    /// Tasks on this thread (outbox relay, consumers, purges): signalled and
    /// awaited at shutdown while the runtime still runs, so none is dropped
    /// mid-query after it.
    background: Background,
    /// SQLite's file, this server's alone until it stops.
    _claim: store::ServerClaim,
}

/// The app's own threads (actors, hubs, recommenders, and on Postgres the
/// journal; on SQLite the journal runs on the store's thread, which stops
/// when the last handle to the store is dropped). They stop when this is
/// dropped — also when the app's future is dropped without a
/// shutdown (a test ending), so their connections are not left open.
#[derive(Default)]
struct OwnedThreads(Vec<Arbiter>);

impl OwnedThreads {
    fn start(&mut self) -> ArbiterHandle {
        let thread = Arbiter::new();
        let handle = thread.handle();
        handle.spawn_fn(crate::memory::give_back_when_idle);
        self.0.push(thread);
        handle
    }

    fn start_many(&mut self, count: usize) -> Vec<ArbiterHandle> {
        (0..count).map(|_| self.start()).collect()
    }
}

impl Drop for OwnedThreads {
    fn drop(&mut self) {
        for thread in &self.0 {
            thread.stop();
        }
    }
}

/// The core the HTTP layer drives: the journal, the event actors and
/// everything a committed change reaches.
struct Core {
    journal: Addr<Journal>,
    registry: EventRegistry,
    recommenders: Recommenders,
    realtime: Realtime,
    fanout: FanoutLink,
    events: EventCache,
}

/// What every HTTP worker shares, built once.
struct Shared {
    state: web::Data<AppState>,
    tokens: web::Data<TokenKeys>,
    realtime: web::Data<Realtime>,
    rate_limits: web::Data<RateLimits>,
    login_guard: web::Data<LoginGuard>,
    hashing: web::Data<Hashing>,
    internal_keys: web::Data<InternalKeys>,
    drain: web::Data<Drain>,
}

impl Application {
    /// Connects (and migrates) the database, starts the actors and the
    /// background tasks, and binds the listener. Must run inside an actix
    /// `System`.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        crate::telemetry::export_from_start();
        crate::memory::give_back_when_idle();
        let claim = store::ServerClaim::take(settings.database_url.expose_secret())?;
        let store = open_store(&settings).await?;
        let listener = TcpListener::bind(&settings.bind)
            .with_context(|| format!("cannot bind {}", settings.bind))?;
        let node = Node::join(
            &store,
            &settings.cluster,
            &listener.local_addr()?.to_string(),
        )
        .await?;
        // On SQLite the node is alone by construction (the file is locked):
        // it holds every shard and writes without leases.
        let alone = store::is_embedded(settings.database_url.expose_secret());
        let held = Arc::new(if alone {
            HeldShards::everything(node.shards)
        } else {
            HeldShards::none(node.shards)
        });
        metrics::gauge!("turnout_cluster_shards_held").set(held.held().len() as f64);
        let jwt_keys = jwt_keys(&settings)?;
        tracing::info!(target: "turnout::audit", keys = jwt_keys.len(), "jwt keys loaded; the first signs");
        let digests = AccountDigests::new(&jwt_keys[0]);
        let passes = SignInPasses::new(&jwt_keys);
        let tokens = TokenKeys::new(
            &jwt_keys,
            settings.auth.issuer.clone(),
            settings.auth.token_ttl_secs,
        )
        .with_max_lifetime(settings.auth.max_token_lifetime_secs);
        let internal_keys = Arc::new(InternalKeys::new(&match settings.cluster.internal_keys() {
            keys if keys.is_empty() => jwt_keys,
            keys => keys,
        }));
        let mut threads = OwnedThreads::default();
        let core = start_core(&settings, &store, &mut threads, Arc::clone(&held)).await?;
        node.register(&store).await?;
        let placement = (!alone).then(|| {
            Placement::new(
                node.clone(),
                store.clone(),
                Arc::clone(&held),
                core.registry.clone(),
                core.journal.clone(),
            )
        });
        let directory = match &placement {
            Some(placement) => {
                placement
                    .start()
                    .await
                    .context("cannot take this node's shards")?;
                placement.directory()
            }
            None => Arc::default(),
        };
        let peers = Peers::new(
            Arc::clone(&internal_keys),
            node.id,
            settings
                .http
                .tls
                .as_ref()
                .map(|tls| std::path::Path::new(&tls.cert_path)),
            settings.write_timeout(),
        )
        .context("cannot build the client nodes forward commands with")?;
        let commands = Arc::new(Commands::new(
            node.id,
            core.registry.clone(),
            held,
            directory,
            peers,
            core.events.clone(),
        ));
        let mut background = Background::default();
        let drain = Drain::default();
        let shared = Shared {
            tokens: web::Data::new(tokens),
            realtime: web::Data::new(core.realtime),
            rate_limits: web::Data::new(RateLimits::new(&settings.rate_limits)),
            login_guard: web::Data::new(LoginGuard::new(
                settings.auth.lockout.clone(),
                digests,
                passes,
            )),
            hashing: web::Data::new(Hashing::new(&settings.auth.hashing)),
            internal_keys: web::Data::from(internal_keys),
            drain: web::Data::new(drain.clone()),
            state: web::Data::new(AppState {
                store: store.clone(),
                registry: core.registry,
                recommenders: core.recommenders,
                metrics: crate::telemetry::metrics(),
                write_timeout: settings.write_timeout(),
                breaker: crate::http::breaker::Breaker::new(&settings.http.breaker),
                node: node.clone(),
                commands,
                fanout: core.fanout,
                events: core.events,
                drain: drain.clone(),
                quotas: crate::http::quotas::Quotas::new(settings.quotas_in_force()),
                readiness: Default::default(),
            }),
        };
        start_maintenance(&settings, &store, &shared, &mut background)?;
        node.keep_alive(
            store.clone(),
            settings.cluster.heartbeat_ms,
            &mut background,
        );
        if let Some(placement) = &placement {
            placement.clone().run(
                Duration::from_millis(settings.cluster.heartbeat_ms),
                &mut background,
            );
        }
        let metrics_server = match &settings.metrics.bind {
            Some(bind) => Some(metrics_listener(
                bind,
                shared.state.clone(),
                shared.realtime.clone(),
            )?),
            None => None,
        };
        let listening = listener
            .try_clone()
            .context("cannot keep a handle on the listener")?;
        let (server, port, connections) = serve_http(&settings, shared, listener)?;
        Ok(Self {
            port,
            server,
            drain,
            listening,
            connections,
            drain_for: Duration::from_secs(settings.http.drain_secs),
            metrics_server,
            journal: core.journal,
            placement,
            threads,
            background,
            _claim: claim,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM/SIGINT. Then, in a cluster, hands its shards
    /// over while it still serves (commands for them go to their new
    /// holders); then refuses new connections — a proxy sends those
    /// requests elsewhere — while it answers on the connections already
    /// open, each answer closing its connection, and `/ready` says 503 (a
    /// request already sent is answered; none is sent on a connection the
    /// node is closing); once they are closed, it flushes the journal.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let metrics = self.metrics_server.map(|server| {
            let handle = server.handle();
            (handle, actix_web::rt::spawn(server))
        });
        let http = self.server.handle();
        let mut serving = actix_web::rt::spawn(self.server);
        let superseded = async {
            match &self.placement {
                Some(placement) => placement.node().superseded().await,
                None => std::future::pending().await,
            }
        };
        let superseded = tokio::select! {
            stopped = &mut serving => return stopped?.map_err(Into::into),
            () = stop_requested() => false,
            () = superseded => true,
        };
        if let Some(placement) = &self.placement
            && tokio::time::timeout(Duration::from_secs(10), placement.leave())
                .await
                .is_err()
        {
            tracing::warn!(
                "handing the shards over took more than 10 s; the others take them when the leases run out"
            );
        }
        self.drain.start();
        // The acceptor stops first, so it never sees the shut listener fail.
        http.pause().await;
        refuse_new_connections(&self.listening);
        wait_for_connections_to_close(&self.connections, self.drain_for).await;
        http.stop(true).await;
        serving.await??;
        if let Some((handle, running)) = metrics {
            handle.stop(true).await;
            let _ = running.await;
        }
        tracing::info!("http stopped; flushing the journal");
        let (done, flushed) = oneshot::channel();
        self.journal.do_send(Flush(done));
        if tokio::time::timeout(Duration::from_secs(10), flushed)
            .await
            .is_err()
        {
            tracing::warn!("the journal did not flush within 10 s");
        }
        self.background.stop(Duration::from_secs(10)).await;
        drop(self.threads);
        tracing::info!("shutdown complete");
        anyhow::ensure!(
            !superseded,
            "another process registered under this node's id (cluster.node_id) while this one \
             was cut off from the database, and took its shards: this one stopped"
        );
        Ok(())
    }
}

/// Stops the listener taking connections: a proxy's next connect is
/// refused, so it sends that request to another node. The workers go on
/// serving the connections already accepted (a graceful stop would drop
/// those still queued, and a proxy that had sent a request on one could not
/// safely send it elsewhere).
fn refuse_new_connections(listener: &TcpListener) {
    if let Err(error) = socket2::SockRef::from(listener).shutdown(std::net::Shutdown::Read) {
        tracing::warn!(%error, "cannot stop the listener ahead of the workers");
    }
}

/// Until every connection has closed — each answer now closes its own, and
/// a proxy closes its idle ones after its keep-alive — or `limit` passed.
async fn wait_for_connections_to_close(connections: &HttpConnections, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    // A connection accepted just before the listener stopped may not be
    // counted yet: wait a moment before trusting a zero.
    tokio::time::sleep(Duration::from_millis(100)).await;
    while connections.open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(still_open = connections.open(), "stopping");
}

/// The database the settings name, its schema brought up to date.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    store::connect(
        settings.database_url.expose_secret(),
        &settings.database,
        settings.commit_timeout(),
    )
    .await
    .with_context(|| {
        format!(
            "cannot open the database at {}",
            redact_url(&settings.database_url)
        )
    })
}

/// The journal on the store's thread (SQLite) or one of its own, the event
/// actors on a pool, the hubs
/// and the recommenders each on one, and the path of a committed change to
/// them (and, with Redis, to the other nodes).
async fn start_core(
    settings: &Settings,
    store: &Arc<dyn Store>,
    threads: &mut OwnedThreads,
    held: Arc<HeldShards>,
) -> anyhow::Result<Core> {
    let event_store: Arc<dyn EventStore> = store.clone();
    let journal_settings = JournalSettings {
        max_pending: settings.journal.max_pending,
        max_batch: settings.journal.max_batch,
        commit_timeout: settings.commit_timeout(),
        linger: Duration::from_micros(settings.journal.linger_us),
    };
    let journal_thread = store.journal_thread().unwrap_or_else(|| threads.start());
    let journal = Journal::start_in_arbiter(&journal_thread, move |_| {
        Journal::new(event_store, journal_settings)
    });

    let hub_threads = threads.start_many(settings.realtime.hub_threads);
    let hubs = Hubs::new(store.clone(), &settings.realtime, hub_threads);
    let recs_settings = settings.recommendations.settings();
    let catalog = load_catalog(store.as_ref(), &recs_settings)
        .await
        .context("cannot load the recommendation catalog")?;
    let recommenders = Recommenders::start(
        catalog,
        Arc::new(StoreSource(store.clone())),
        recs_settings,
        threads.start(),
    );
    let fanout = match settings.redis_url {
        Some(_) => FanoutLink::unlinked(),
        None => FanoutLink::default(),
    };
    // A node alone (SQLite) hears every change; a cluster node only through
    // Redis (see `event_cache`).
    let serving = match (held.is_fenced(), &settings.redis_url) {
        (false, _) => Serving::Always,
        (true, Some(_)) => Serving::WhileLinked(fanout.clone()),
        (true, None) => Serving::Never,
    };
    let events = EventCache::new(settings.http.cached_events, serving);
    let me = MeFeeds::new(
        store.clone(),
        Duration::from_secs(settings.offers.warn_before_secs),
    );
    let router = Router::new(
        hubs.clone(),
        recommenders.clone(),
        me.clone(),
        events.clone(),
        store.clone(),
    );
    let changes: Arc<dyn ChangeSink> = match &settings.redis_url {
        Some(url) => {
            tracing::info!(redis = %redact_url(url), "cross-node fan-out through redis");
            Arc::new(RedisFanout::start(
                url,
                settings.realtime.redis_channel.clone(),
                router,
                fanout.clone(),
            )?)
        }
        None => Arc::new(LocalFanout(router)),
    };

    let actor_threads = match settings.actors.threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let registry = EventRegistry::new(
        store.clone(),
        journal.clone(),
        changes,
        ActorSettings {
            mailbox_capacity: settings.actors.mailbox_capacity,
            idle_timeout: Duration::from_secs(settings.actors.idle_timeout_secs),
            snapshot_every: settings.actors.snapshot_every,
            idempotency_ttl: chrono::Duration::hours(settings.idempotency.ttl_hours),
            offers_woken_within: Some(settings.offers.woken_within()),
        },
        threads.start_many(actor_threads),
        held,
    );
    let realtime = Realtime {
        hubs,
        me,
        recommenders: recommenders.clone(),
        limits: ConnectionLimits::new(
            settings.realtime.max_connections,
            settings.realtime.max_connections_per_ip,
            settings.rate_limits.ipv6_network_share,
            "turnout_ws_connections",
        ),
        filtered_feeds: FeedPlaces::new(settings.realtime.max_filtered_feeds_per_ip),
        settings: Arc::new(settings.realtime.clone()),
    };
    Ok(Core {
        journal,
        registry,
        recommenders,
        realtime,
        fanout,
        events,
    })
}

/// The background work: the outbox relay and its consumer, the load of the
/// event listing into memory, the offer clock, the purge of
/// expired idempotency keys, and the sweep of idle rate-limit and lockout
/// entries.
fn start_maintenance(
    settings: &Settings,
    store: &Arc<dyn Store>,
    shared: &Shared,
    background: &mut Background,
) -> anyhow::Result<()> {
    crate::outbox::start(
        store.clone(),
        settings.redis_url.as_ref(),
        settings.outbox.clone(),
        background,
    )?;
    let (events, listed, shutdown) = (
        shared.state.events.clone(),
        store.clone(),
        background.shutdown(),
    );
    background.spawn("event listing", async move {
        events.keep_listing(listed.as_ref(), shutdown).await;
    });
    if let Some(url) = &settings.redis_url {
        crate::consumers::start(
            store.clone(),
            url,
            format!(
                "{}{}",
                settings.outbox.stream_prefix,
                crate::outbox::EVENTS_TOPIC
            ),
            background,
        )?;
    }
    crate::offer_clock::start(
        &settings.offers,
        store.clone(),
        shared.state.commands.clone(),
        background,
    );
    let purged = store.clone();
    background.spawn(
        "idempotency purge",
        every(
            Duration::from_secs(settings.idempotency.purge_interval_secs),
            background.shutdown(),
            move |mut shutdown| {
                let store = purged.clone();
                async move {
                    let now = chrono::Utc::now();
                    let purge = purge_in_batches(&mut shutdown, |limit| {
                        store.purge_expired_replies(now, limit)
                    });
                    match purge.await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deleted = n, "purged expired idempotency records"),
                        Err(error) => {
                            tracing::warn!(%error, "could not purge idempotency records")
                        }
                    }
                }
            },
        ),
    );
    let (quiet, old) = (shared.rate_limits.clone(), shared.login_guard.clone());
    background.spawn(
        "limits sweep",
        every(Duration::from_secs(60), background.shutdown(), move |_| {
            quiet.forget_quiet_clients();
            old.forget_old();
            std::future::ready(())
        }),
    );
    Ok(())
}

/// Binds the API's listener (TLS if configured) and starts its workers;
/// returns the server and the port it got.
///
/// Built from actix-http's `HttpService` rather than actix-web's
/// `HttpServer` for one reason: `HttpServer` cannot hand a WebSocket its
/// socket ([`http::upgrade`]). The service is configured as `HttpServer`
/// configures it (its `listen` and `listen_rustls_0_23`), so ordinary
/// requests see no difference.
fn serve_http(
    settings: &Settings,
    shared: Shared,
    listener: TcpListener,
) -> anyhow::Result<(Server, u16, Arc<HttpConnections>)> {
    let max_body = settings.http.max_body_bytes;
    let body_deadline = (settings.http.body_timeout_secs > 0).then(|| {
        web::Data::new(BodyDeadline(Duration::from_secs(
            settings.http.body_timeout_secs,
        )))
    });
    // With a listener of its own, `/metrics` answers nobody here.
    let metrics_access = web::Data::new(MetricsAccess::From(match &settings.metrics.bind {
        Some(_) => Vec::new(),
        None => settings.metrics.allowed.clone(),
    }));
    let connections = Arc::new(HttpConnections::new(
        settings.http.max_connections_per_ip,
        settings.rate_limits.ipv6_network_share,
        settings.rate_limits.trusted_proxies.clone(),
    ));
    let https = settings.http.tls.is_some();
    let cors_origins = settings.http.cors_origins.clone();
    let address = listener.local_addr()?;
    drop_unresponsive_peers(&listener, settings.http.tcp_user_timeout_secs)?;
    let app = move || {
        // Called on each worker's thread as it starts.
        crate::memory::give_back_when_idle();
        let app = App::new();
        let app = match &body_deadline {
            Some(deadline) => app.app_data(deadline.clone()),
            None => app,
        };
        // Outermost last: the security headers go on every answer, a CORS
        // preflight's and a refusal the request context makes too.
        app.wrap(from_fn(client_limits::middleware))
            .wrap(from_fn(drain::middleware))
            .wrap(cors(&cors_origins))
            .wrap(from_fn(request_context::middleware))
            .wrap(security_headers(https))
            .app_data(shared.state.clone())
            .app_data(shared.tokens.clone())
            .app_data(shared.realtime.clone())
            .app_data(shared.rate_limits.clone())
            .app_data(shared.login_guard.clone())
            .app_data(shared.hashing.clone())
            .app_data(shared.internal_keys.clone())
            .app_data(shared.drain.clone())
            .app_data(metrics_access.clone())
            .app_data(http::route_memo::RouteMemo::default())
            .configure(http::configure(max_body))
    };
    // `run_until_stopped` hears the signals: a node hands its shards over
    // before it stops accepting.
    let mut builder = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(settings.http.shutdown_timeout_secs);
    if settings.http.workers > 0 {
        builder = builder.workers(settings.http.workers);
    }
    let graceful = builder.graceful_shutdown_signal();
    let counted = Arc::clone(&connections);
    // `HttpServer`'s defaults: a request's head within 5 s, and 1 s for a
    // closing connection to go.
    macro_rules! http_service {
        () => {{
            let graceful = graceful.clone();
            let counted = Arc::clone(&counted);
            let config = AppConfig::__priv_test_new(https, address.to_string(), address);
            let api = WorkerApp::new(app().into_factory(), config);
            HttpService::build()
                .graceful_shutdown_signal(move || {
                    let graceful = graceful.clone();
                    async move { graceful.notified().await }
                })
                .client_request_timeout(Duration::from_secs(5))
                .client_disconnect_timeout(Duration::from_secs(1))
                .local_addr(address)
                .on_connect_ext(move |io: &_, data: _| {
                    counted.on_connect(io as &dyn std::any::Any, data)
                })
                .upgrade(api.upgrades())
                .finish(api.requests().map_err(|error| error.error_response()))
        }};
    }
    builder = match &settings.http.tls {
        Some(tls) => {
            let tls = tls_config(tls)?;
            builder.listen("turnout-https", listener, move || {
                http_service!().rustls_0_23_with_config(tls.clone(), TlsAcceptorConfig::default())
            })?
        }
        None => builder.listen("turnout-http", listener, move || http_service!().tcp())?,
    };
    tracing::info!(
        bind = %settings.bind, port = address.port(), tls = https,
        database = %redact_url(&settings.database_url),
        "turnout listening"
    );
    Ok((builder.run(), address.port(), connections))
}

/// `/metrics` alone, on the operator's own address.
fn metrics_listener(
    bind: &str,
    state: web::Data<AppState>,
    realtime: web::Data<Realtime>,
) -> anyhow::Result<Server> {
    let listener =
        TcpListener::bind(bind).with_context(|| format!("cannot bind metrics.bind {bind}"))?;
    tracing::info!(bind, "metrics on a listener of their own");
    let access = web::Data::new(MetricsAccess::Anyone);
    Ok(HttpServer::new(move || {
        crate::memory::give_back_when_idle();
        App::new()
            .app_data(state.clone())
            .app_data(realtime.clone())
            .app_data(access.clone())
            .route("/metrics", web::get().to(http::ops::metrics))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run())
}

/// Sets `TCP_USER_TIMEOUT` on the listener; accepted connections inherit
/// it. A peer that acknowledges nothing (gone) or keeps its receive window
/// shut (no longer reading) then has its socket errored within `secs`, so
/// its connection, and a WebSocket's place within the limits, is released:
/// actix-http has no write timeout of its own. Linux only (and 5.11 or later
/// for the shut window); elsewhere the system's behaviour stays.
#[cfg(target_os = "linux")]
fn drop_unresponsive_peers(listener: &TcpListener, secs: u64) -> anyhow::Result<()> {
    if secs > 0 {
        socket2::SockRef::from(listener)
            .set_tcp_user_timeout(Some(Duration::from_secs(secs)))
            .context("cannot set TCP_USER_TIMEOUT on the listener")?;
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn drop_unresponsive_peers(_: &TcpListener, secs: u64) -> anyhow::Result<()> {
    if secs > 0 {
        tracing::warn!("http.tcp_user_timeout_secs needs Linux; ignored here");
    }
    Ok(())
}

/// The server's TLS identity from PEM files: the certificate chain (leaf
/// first) and its private key.
fn tls_config(tls: &crate::config::TlsSettings) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let chain = CertificateDer::pem_file_iter(&tls.cert_path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("cannot read the TLS certificate {}", tls.cert_path))?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in {}", tls.cert_path);
    let key = PrivateKeyDer::from_pem_file(&tls.key_path)
        .with_context(|| format!("cannot read the TLS private key {}", tls.key_path))?;
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("the TLS certificate and key do not match")?;
    Ok(config)
}

/// Headers on every response: no MIME sniffing, no framing, no referrer,
/// and over HTTPS, HSTS.
fn security_headers(https: bool) -> DefaultHeaders {
    let headers = DefaultHeaders::new()
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Referrer-Policy", "no-referrer"))
        .add(("Cross-Origin-Opener-Policy", "same-origin"));
    if https {
        headers.add(("Strict-Transport-Security", "max-age=31536000"))
    } else {
        headers
    }
}

/// CORS from the allowlist. Bearer tokens, not cookies, so never credentials.
fn cors(origins: &[String]) -> actix_cors::Cors {
    use actix_web::http::header;
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST", "PATCH", "DELETE"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("idempotency-key"),
            header::HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            header::HeaderName::from_static("x-request-id"),
            header::RETRY_AFTER,
            header::HeaderName::from_static("idempotent-replayed"),
        ])
        .max_age(3600);
    for origin in origins {
        cors = if origin == "*" {
            cors.allow_any_origin()
        } else {
            cors.allowed_origin(origin)
        };
    }
    cors
}

/// SIGTERM or SIGINT (Ctrl-C).
async fn stop_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
            },
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// How logs name accounts, keyed as the servers with these settings key
/// them: by their [`signing_key`]. None is made up: digests under a key no
/// server has would name nobody's lines.
pub fn account_digests(settings: &Settings) -> anyhow::Result<AccountDigests> {
    let key = signing_key(settings).ok_or_else(|| {
        anyhow::anyhow!(
            "no JWT key: set TURNOUT_JWT_SECRETS as the servers have it \
             (in development, start the server once to make {})",
            dev_key_path(settings).display()
        )
    })?;
    Ok(AccountDigests::new(&key))
}

/// The key that signs tokens and keys account digests, if there is one:
/// the first configured or, in development, the key a server made in the
/// data directory. [`jwt_keys`] puts it first, so a server and
/// `turnout account-digest` cannot pick different ones.
fn signing_key(settings: &Settings) -> Option<SecretString> {
    let configured = settings.jwt_keys().into_iter().next();
    configured.or_else(|| {
        (settings.env == Environment::Development)
            .then(|| dev_key(settings))
            .flatten()
            .map(SecretString::from)
    })
}

/// Where a development server keeps the JWT key it made.
fn dev_key_path(settings: &Settings) -> std::path::PathBuf {
    std::path::Path::new(&settings.data_dir).join("jwt.key")
}

/// The development key a server made, if there is one.
fn dev_key(settings: &Settings) -> Option<String> {
    let existing = std::fs::read_to_string(dev_key_path(settings)).ok()?;
    let key = existing.trim();
    (key.len() >= 32).then(|| key.to_owned())
}

/// The JWT keys, the [`signing_key`] first: the configured ones or, in
/// development, a key made and kept in the data directory so that tokens
/// survive restarts. Never empty.
fn jwt_keys(settings: &Settings) -> anyhow::Result<Vec<SecretString>> {
    let configured = settings.jwt_keys();
    if !configured.is_empty() {
        return Ok(configured);
    }
    debug_assert_eq!(
        settings.env,
        Environment::Development,
        "production settings require keys"
    );
    let path = dev_key_path(settings);
    let key = match signing_key(settings) {
        Some(existing) => existing,
        None => {
            std::fs::create_dir_all(&settings.data_dir)?;
            let key: String = {
                use rand::Rng;
                let bytes: [u8; 32] = rand::rng().random();
                bytes.iter().map(|b| format!("{b:02x}")).collect()
            };
            match write_private_new(&path, &key) {
                Ok(()) => SecretString::from(key),
                // Another process starting on this directory made one
                // first: theirs it is, so that both sign alike.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => signing_key(settings)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "{} exists but holds no key of 32 characters or more \
                             (unreadable or cut short): remove it to have one made",
                            path.display()
                        )
                    })?,
                Err(e) => {
                    let making = format!("could not make a development key at {}", path.display());
                    return Err(anyhow::Error::new(e).context(making));
                }
            }
        }
    };
    tracing::warn!(path = %path.display(), "no TURNOUT_JWT_SECRETS set: using a development key from the data directory");
    Ok(vec![key])
}

/// Makes a file only its owner may read, whole or not at all, unless it
/// exists (`AlreadyExists`): written and synced under a name of its own
/// beside it, then linked into place, so that another process starting on
/// the same data directory finds it whole or not at all, and only one of
/// two such processes makes it. Where the file system has no hard links,
/// it is made in place.
fn write_private_new(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let beside = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
    let make = |at: &std::path::Path| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(at)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()
    };
    make(&beside)?;
    let linked = std::fs::hard_link(&beside, path);
    let _ = std::fs::remove_file(&beside);
    match linked {
        // A file system without hard links (FAT, some shared folders):
        // made in place, which a reader might meet half written.
        Err(e) if no_hard_links(&e) => make(path),
        done => done,
    }
}

/// Whether a failed link says the file system has no hard links (`EPERM`
/// on Linux, `ENOTSUP` elsewhere).
fn no_hard_links(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::Unsupported | std::io::ErrorKind::PermissionDenied
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_development_key_is_made_once_whole_and_for_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt.key");
        write_private_new(&path, "first").unwrap();
        let second = write_private_new(&path, "second").unwrap_err();
        assert_eq!(second.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no file beside it is left behind");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
