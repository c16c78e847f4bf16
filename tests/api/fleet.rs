//! A real cluster: `turnout` processes on loopback ports sharing the real
//! Postgres (and Redis, when its URL is set), with a real nginx round-robin
//! in front that passes requests as deploy/nginx/turnout-proxy.conf says.
//! Nodes are killed, paused, restarted and added under load; afterwards
//! every acknowledged join is there and no event is overbooked
//! (`invariants::assert_roster`).

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard};
use turnout_actors::domain::EventId;
use turnout_actors::placement::{ShardCount, shard_of};
use uuid::Uuid;

use crate::helpers::{Backend, JWT_KEY, TestApp, User, body, fresh_database};
use crate::invariants::assert_roster;
use crate::process::ServerProcess;
use turnout::testing::reserved_port;

/// One fleet at a time: each is several servers on a small machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// The lease TTL the nodes run with (the default).
const LEASE_TTL: Duration = Duration::from_millis(3000);

/// nginx in front of the nodes, on a port of its own.
struct Nginx {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// What nginx logged (warnings and errors): why a request failed.
    fn error_log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("error.log")).unwrap_or_default()
    }

    /// Round-robin over `upstreams` (loopback ports; a node not running is
    /// skipped, as a stopped node would be), with the site's proxy settings.
    #[allow(
        clippy::zombie_processes,
        reason = "the Nginx guard kills and waits on drop"
    )]
    fn start(upstreams: &[u16]) -> Self {
        let binary = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("the cluster tests need nginx (.ci/run installs Debian's nginx-light)");
        let dir = tempfile::tempdir().unwrap();
        let port = reserved_port();
        let servers: String = upstreams
            .iter()
            .map(|p| format!("server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;\n"))
            .collect();
        let proxy = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/nginx/turnout-proxy.conf"
        );
        let root = dir.path().display();
        let config = format!(
            "daemon off;
master_process off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    map $http_upgrade $turnout_connection {{
        default upgrade;
        '' '';
    }}
    upstream turnout {{
        {servers}
        keepalive 64;
        keepalive_timeout 2s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            include {proxy};
        }}
    }}
}}
"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx starts");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self {
                    child,
                    address: format!("http://127.0.0.1:{port}"),
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("nginx did not listen");
    }
}

/// Turnout nodes on one database behind nginx.
struct Fleet {
    url: String,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    nodes: Vec<Option<ServerProcess>>,
    nginx: Nginx,
    _turn: MutexGuard<'static, ()>,
}

impl Fleet {
    /// `running` nodes started, out of `ports` in nginx's list (the rest
    /// start later), and placement settled; `None` without Postgres.
    async fn start(running: usize, ports: usize) -> Option<Self> {
        Self::start_with(running, ports, &[]).await
    }

    /// Like [`Fleet::start`], every node with the settings `extra` too.
    async fn start_with(running: usize, ports: usize, extra: &[(&str, &str)]) -> Option<Self> {
        let turn = ONE_AT_A_TIME.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let url = fresh_database(Backend::Postgres, &dir).await?;
        // Offers held on a node that dies are looked for every second.
        let mut env = vec![("TURNOUT_OFFERS__SWEEP_SECS".to_owned(), "1".to_owned())];
        if let Some(redis) = std::env::var("TURNOUT_TEST_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty())
        {
            let prefix = format!("turnout:test:{}", Uuid::new_v4());
            env.push(("TURNOUT_REDIS_URL".to_owned(), redis));
            env.push(("TURNOUT_REALTIME__REDIS_CHANNEL".to_owned(), prefix.clone()));
            env.push((
                "TURNOUT_OUTBOX__STREAM_PREFIX".to_owned(),
                format!("{prefix}:"),
            ));
        }
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let ports: Vec<u16> = (0..ports).map(|_| reserved_port()).collect();
        let nginx = Nginx::start(&ports);
        let mut fleet = Self {
            url,
            env,
            dir,
            nodes: ports.iter().map(|_| None).collect(),
            ports,
            nginx,
            _turn: turn,
        };
        for node in 0..running {
            fleet.start_node(node).await;
        }
        fleet.front().wait_for_placement(running).await;
        Some(fleet)
    }

    async fn start_node(&mut self, node: usize) {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let data = self.dir.path().join(format!("node-{node}"));
        std::fs::create_dir_all(&data).unwrap();
        self.nodes[node] =
            Some(ServerProcess::start_on(self.ports[node], &self.url, &data, &env).await);
    }

    /// The running process of `node`, taken out of the fleet (to kill or stop).
    fn take(&mut self, node: usize) -> ServerProcess {
        self.nodes[node].take().expect("the node is running")
    }

    fn process(&self, node: usize) -> &ServerProcess {
        self.nodes[node].as_ref().expect("the node is running")
    }

    /// Through nginx.
    fn front(&self) -> TestApp {
        TestApp::attach(&self.nginx.address, JWT_KEY)
    }

    /// One node, directly.
    fn node(&self, node: usize) -> TestApp {
        TestApp::attach(&format!("http://127.0.0.1:{}", self.ports[node]), JWT_KEY)
    }

    /// The node (by index) whose lease holds each event's shard, as `via`
    /// sees the cluster.
    async fn holders(&self, via: &TestApp, events: &[Uuid]) -> HashMap<Uuid, usize> {
        let view = via.cluster().await;
        let port_of: HashMap<&str, u16> = view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let address = n["address"].as_str().unwrap();
                let port = address.rsplit(':').next().unwrap().parse().unwrap();
                (n["id"].as_str().unwrap(), port)
            })
            .collect();
        let leases = view["leases"].as_array().unwrap();
        events
            .iter()
            .filter_map(|&event| {
                let shard = shard_of(EventId::from(event), ShardCount::DEFAULT).get();
                let holder = leases[shard as usize]["node"].as_str()?;
                let port = port_of.get(holder)?;
                Some((event, self.ports.iter().position(|p| p == port)?))
            })
            .collect()
    }

    /// Published events, created until each of the `nodes` first nodes
    /// holds at least `each` of them.
    async fn events_on_every_node(
        &self,
        owner: &User,
        capacity: i64,
        nodes: usize,
        each: usize,
    ) -> Vec<Uuid> {
        let front = self.front();
        let mut events = Vec::new();
        for _ in 0..100 {
            events.push(front.published_event(owner, capacity).await);
            let holders = self.holders(&front, &events).await;
            if (0..nodes).all(|n| holders.values().filter(|h| **h == n).count() >= each) {
                return events;
            }
        }
        panic!("100 events and still a node without {each}");
    }
}

/// How a load's client treats a join that gets no answer or a 5xx.
#[derive(Clone, Copy)]
enum Retry {
    /// Counts it as failed and moves on.
    Never,
    /// Sends it again with its Idempotency-Key for up to 20 s, as a client
    /// would.
    WithKey,
}

/// What a load saw.
#[derive(Default)]
struct Tally {
    /// Event → user → the answer's `data`, for every 2xx.
    acknowledged: HashMap<Uuid, HashMap<Uuid, Value>>,
    /// Event → users answered 4xx.
    refused: HashMap<Uuid, HashSet<Uuid>>,
    /// Every answer that was not 2xx (including those retried), described,
    /// but for the 408s counted in `unread`.
    failures: Vec<String>,
    /// 408s: actix-http's own answer, without a body, when a request's
    /// head is late. A node woken from a pause (or starved of the CPU on a
    /// loaded machine) reads a stale clock for a moment and can give it to
    /// a connection that arrived while it slept: nothing was read, so
    /// nothing was decided, and the join is sent again with its key (for
    /// up to 20 s, whatever the load's `Retry`), not counted as an attempt.
    unread: usize,
    attempts: usize,
}

impl Tally {
    fn absorb(&mut self, other: Tally) {
        for (event, answers) in other.acknowledged {
            self.acknowledged.entry(event).or_default().extend(answers);
        }
        for (event, users) in other.refused {
            self.refused.entry(event).or_default().extend(users);
        }
        self.failures.extend(other.failures);
        self.unread += other.unread;
        self.attempts += other.attempts;
    }

    fn acknowledged(&self) -> usize {
        self.acknowledged.values().map(HashMap::len).sum()
    }
}

/// Joins by new users, spread over `events`, from `workers` clients at once
/// until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Load {
    fn start(app: &TestApp, events: &[Uuid], workers: usize, retry: Retry) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicUsize::new(0));
        let tasks = (0..workers)
            .map(|_| {
                let (app, stop, next) = (app.clone(), Arc::clone(&stop), Arc::clone(&next));
                let events = events.to_vec();
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    while !stop.load(Ordering::Relaxed) {
                        let event = events[next.fetch_add(1, Ordering::Relaxed) % events.len()];
                        join_once(&app, event, retry, &mut tally).await;
                    }
                    tally
                })
            })
            .collect();
        Self { stop, tasks }
    }

    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut tally = Tally::default();
        for task in self.tasks {
            tally.absorb(task.await.unwrap());
        }
        tally
    }
}

/// One new user's join, with its retries; recorded in `tally`.
async fn join_once(app: &TestApp, event: Uuid, retry: Retry, tally: &mut Tally) {
    let user = app.user();
    let key = Uuid::new_v4().to_string();
    let started = Instant::now();
    loop {
        let sent = app
            .as_user(
                &user,
                reqwest::Method::POST,
                &format!("/v1/events/{event}/join"),
            )
            .header("Idempotency-Key", &key)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let not_read = sent
            .as_ref()
            .is_ok_and(|r| r.status() == reqwest::StatusCode::REQUEST_TIMEOUT);
        if not_read && started.elapsed() < Duration::from_secs(20) {
            tally.unread += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        tally.attempts += 1;
        let failure = match sent {
            Ok(response) if response.status().is_success() => {
                let answer = body(response).await["data"].clone();
                tally
                    .acknowledged
                    .entry(event)
                    .or_default()
                    .insert(user.id, answer);
                return;
            }
            Ok(_) if not_read => "408: the request was not read for 20 s".to_owned(),
            Ok(response) if response.status().is_client_error() => {
                let status = response.status();
                tally
                    .failures
                    .push(format!("{status}: {}", body(response).await));
                tally.refused.entry(event).or_default().insert(user.id);
                return;
            }
            Ok(response) => {
                let status = response.status();
                format!("{status}: {}", response.text().await.unwrap_or_default())
            }
            Err(error) => format!("no answer: {error}"),
        };
        tally.failures.push(failure);
        match retry {
            Retry::WithKey if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => return,
        }
    }
}

/// A join through `app` by a new user, tried until answered 2xx; how long
/// that took.
async fn join_until_answered(app: &TestApp, event: Uuid, tally: &mut Tally) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let before = tally.acknowledged();
        join_once(app, event, Retry::Never, tally).await;
        if tally.acknowledged() > before {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{event} was not joinable for 30 s");
}

async fn assert_every_event_whole(
    app: &TestApp,
    owner: &User,
    events: &[Uuid],
    capacity: i64,
    tally: &Tally,
) {
    let none = HashMap::new();
    let nobody = HashSet::new();
    for event in events {
        assert_roster(
            app,
            owner,
            *event,
            capacity,
            tally.acknowledged.get(event).unwrap_or(&none),
            tally.refused.get(event).unwrap_or(&nobody),
        )
        .await;
    }
}

fn summary(tally: &Tally) -> String {
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for failure in &tally.failures {
        *kinds.entry(failure.chars().take(60).collect()).or_default() += 1;
    }
    format!(
        "{} attempts, {} acknowledged, {} not 2xx: {kinds:?}; {} not read (408) and sent again",
        tally.attempts,
        tally.acknowledged(),
        tally.failures.len(),
        tally.unread
    )
}

/// One hot event joined through nginx by many clients at once: almost
/// nothing refused (the goal is nothing), and the roster exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_event_through_three_nodes_refuses_almost_nothing() {
    let Some(fleet) = Fleet::start(3, 3).await else {
        return;
    };
    let front = fleet.front();
    let owner = front.register("owner@example.com").await;
    let event = front.published_event(&owner, 300).await;
    let load = Load::start(&front, &[event], 64, Retry::Never);
    // Until the event is full and people wait: no rate is asserted, only
    // what the joins were told.
    crate::helpers::wait_until(Duration::from_secs(60), "the event filled", || async {
        front.event(event).await["waitlist_count"].as_i64() >= Some(1)
    })
    .await;
    let tally = load.stop().await;
    println!("hot event through 3 nodes: {}", summary(&tally));
    assert!(tally.acknowledged() > 300, "{}", summary(&tally));
    assert!(
        tally.failures.len() * 100 < tally.attempts,
        "{}",
        summary(&tally)
    );
    assert_every_event_whole(&front, &owner, &[event], 300, &tally).await;
}

/// `kill -9` of a node while joins are in flight, ten times over: no
/// acknowledged join is lost, nothing is overbooked, and the dead node's
/// events are joinable through the others once its leases lapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_nothing_and_its_events_move() {
    let Some(mut fleet) = Fleet::start(3, 3).await else {
        return;
    };
    let front = fleet.front();
    let owner = front.register("owner@example.com").await;
    let capacity = 40;
    let events = fleet.events_on_every_node(&owner, capacity, 3, 1).await;
    let load = Load::start(&front, &events, 16, Retry::WithKey);
    let mut probes = Tally::default();
    let mut worst = Duration::ZERO;
    for round in 0..10 {
        // The holder of one event or another, so every round moves some.
        let holders = fleet.holders(&front, &events).await;
        let victim = holders[&events[round % events.len()]];
        let survivor = fleet.node((victim + 1) % 3);
        let theirs: Vec<Uuid> = events
            .iter()
            .copied()
            .filter(|e| holders.get(e) == Some(&victim))
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        fleet.take(victim).kill();
        let mut times = Vec::new();
        for event in &theirs {
            times.push(join_until_answered(&survivor, *event, &mut probes).await);
        }
        let slowest = times.iter().max().copied().unwrap_or_default();
        worst = worst.max(slowest);
        println!(
            "round {round}: node {victim} killed; its {} events joinable through the others after {:?} (slowest {slowest:?})",
            theirs.len(),
            times
        );
        fleet.start_node(victim).await;
        survivor.wait_for_placement(3).await;
    }
    let mut tally = load.stop().await;
    println!(
        "ten kills: {}; failover at worst {worst:?} (lease TTL {LEASE_TTL:?})",
        summary(&tally)
    );
    tally.absorb(probes);
    assert_every_event_whole(&front, &owner, &events, capacity, &tally).await;
}

/// A peer that dies holding shards makes commands for its events miss the
/// write deadline until its leases lapse. That is placement's to settle,
/// not a sign that the database fails: the survivor's breaker stays closed
/// and its own events keep taking joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_does_not_pause_the_survivors_writes() {
    // A lease long enough that the dead node's events stay its own for the
    // whole test, however slow the machine.
    let settings = [
        ("TURNOUT_HTTP__WRITE_TIMEOUT_MS", "500"),
        ("TURNOUT_HTTP__BREAKER__FAILURES", "2"),
        ("TURNOUT_CLUSTER__LEASE_TTL_MS", "30000"),
    ];
    let Some(mut fleet) = Fleet::start_with(2, 2, &settings).await else {
        return;
    };
    let front = fleet.front();
    let owner = front.register("owner@example.com").await;
    let events = fleet.events_on_every_node(&owner, 100, 2, 1).await;
    let holders = fleet.holders(&front, &events).await;
    let on = |node| *events.iter().find(|e| holders[e] == node).unwrap();
    let (ours, theirs) = (on(0), on(1));
    let survivor = fleet.node(0);
    fleet.take(1).kill();

    // Within the dead node's lease, its event's joins time out.
    let joins = (0..4).map(|_| {
        let user = survivor.user();
        let survivor = &survivor;
        async move { survivor.join(&user, theirs).await.status() }
    });
    let statuses = join_all(joins).await;
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );

    let user = survivor.user();
    let own = survivor.join(&user, ours).await;
    assert_eq!(own.status(), StatusCode::CREATED, "{}", body(own).await);
}

/// An offer held on a node that is killed runs out on time on the node that
/// takes its event over: the deadline is in the event's state, and the new
/// holder's offer clock loads the event, whose timer passes the offer on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_on_a_killed_node_runs_out_on_the_node_that_takes_over() {
    let Some(mut fleet) = Fleet::start(2, 2).await else {
        return;
    };
    let front = fleet.front();
    let owner = front.register("owner@example.com").await;
    let event = crate::offers::offer_event(&front, &owner, 60).await;
    let [a, b, c] = [(); 3].map(|_| front.user());
    for u in [&a, &b, &c] {
        assert!(front.join(u, event).await.status().is_success());
    }
    assert_eq!(front.leave(&a, event).await.status(), StatusCode::OK);
    let offered = crate::offers::membership(&front, &b, event).await;
    assert_eq!(offered["status"], "offered", "{offered}");
    let expires_at: chrono::DateTime<chrono::Utc> = offered["offer_expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let victim = fleet.holders(&front, &[event]).await[&event];
    fleet.take(victim).kill();
    let survivor = fleet.node(1 - victim);
    let ran_out = loop {
        let now = chrono::Utc::now();
        let mine = crate::offers::membership(&survivor, &b, event).await;
        if mine["status"] == "expired" {
            break now;
        }
        assert_eq!(mine["status"], "offered", "{mine}");
        assert!(
            now < expires_at
                + chrono::Duration::from_std(LEASE_TTL).unwrap()
                + chrono::Duration::seconds(30),
            "the offer outlived its deadline and the failover"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(ran_out >= expires_at, "never before the deadline");
    assert_eq!(
        crate::offers::membership(&survivor, &c, event).await["status"],
        "offered",
        "the offer passed on"
    );
}

/// Each node in turn stopped with SIGTERM and started again, under load:
/// it hands its shards over first, so no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_fails_no_request() {
    let Some(mut fleet) = Fleet::start(3, 3).await else {
        return;
    };
    let front = fleet.front();
    let owner = front.register("owner@example.com").await;
    let capacity = 50;
    let events = fleet.events_on_every_node(&owner, capacity, 3, 1).await;
    let load = Load::start(&front, &events, 16, Retry::Never);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for node in 0..3 {
        let other = fleet.node((node + 1) % 3);
        assert!(
            fleet.take(node).terminate().await,
            "node {node} exits cleanly"
        );
        fleet.start_node(node).await;
        other.wait_for_placement(3).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = load.stop().await;
    println!("rolling restart: {}", summary(&tally));
    assert!(
        tally.failures.is_empty(),
        "{}\nnginx: {}",
        summary(&tally),
        fleet.nginx.error_log()
    );
    assert!(tally.acknowledged() > 0);
    assert_every_event_whole(&front, &owner, &events, capacity, &tally).await;
}

/// A node paused (SIGSTOP) past its lease TTL while it holds warm actors
/// and has joins waiting on its sockets: the others take its shards and
/// decide; when it wakes (SIGCONT), nothing it decides on its stale leases
/// commits, and the counts stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_commits_nothing_after_its_leases_lapse() {
    let Some(fleet) = Fleet::start(3, 3).await else {
        return;
    };
    let front = fleet.front();
    let owner = front.register("owner@example.com").await;
    let capacity = 5;
    let events = fleet.events_on_every_node(&owner, capacity, 3, 1).await;
    let zombie = 0;
    let (zombie_app, survivor) = (fleet.node(zombie), fleet.node(1));
    let holders = fleet.holders(&survivor, &events).await;
    let theirs: Vec<Uuid> = events
        .iter()
        .copied()
        .filter(|e| holders.get(e) == Some(&zombie))
        .collect();
    let mut tally = Tally::default();
    // Warm actors on the zombie.
    for event in &theirs {
        join_once(&zombie_app, *event, Retry::Never, &mut tally).await;
    }
    assert!(tally.failures.is_empty(), "{}", summary(&tally));

    fleet.process(zombie).signal("STOP");
    // Joins sent to the paused node wait in its sockets' queues.
    let waiting: Vec<_> = theirs
        .iter()
        .flat_map(|&event| (0..3).map(move |_| event))
        .map(|event| {
            let app = zombie_app.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                join_once(&app, event, Retry::Never, &mut tally).await;
                tally
            })
        })
        .collect();
    tokio::time::sleep(LEASE_TTL + Duration::from_millis(1500)).await;
    // The others take its shards and decide joins on its events.
    for event in &theirs {
        for _ in 0..capacity {
            join_until_answered(&survivor, *event, &mut tally).await;
        }
    }
    fleet.process(zombie).signal("CONT");
    for waited in join_all(waiting).await {
        tally.absorb(waited.unwrap());
    }
    survivor.wait_for_placement(3).await;
    for event in &theirs {
        join_until_answered(&zombie_app, *event, &mut tally).await;
    }
    let fenced = zombie_app
        .metrics()
        .await
        .lines()
        .find_map(|l| {
            l.strip_prefix("turnout_journal_fenced_total ")
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "0".into());
    println!(
        "paused node: {}; appends it tried on stale leases and the database refused: {fenced}",
        summary(&tally)
    );
    assert_every_event_whole(&survivor, &owner, &events, capacity, &tally).await;
}

/// A node paused past its leases' expiry answers nothing from the state it
/// held once it resumes, not even what needs no commit: a leave by someone
/// who joined through another node meanwhile reaches that node, where the
/// paused node's memory (no such member) would have refused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_answers_nothing_from_memory_after_its_leases_lapse() {
    let Some(fleet) = Fleet::start(3, 3).await else {
        return;
    };
    let front = fleet.front();
    let owner = front.register("owner@example.com").await;
    let events = fleet.events_on_every_node(&owner, 5, 3, 1).await;
    let zombie = 0;
    let (zombie_app, survivor) = (fleet.node(zombie), fleet.node(1));
    let holders = fleet.holders(&survivor, &events).await;
    let event = *events
        .iter()
        .find(|e| holders.get(e) == Some(&zombie))
        .expect("the zombie holds an event");
    let early = zombie_app.user();
    assert_eq!(
        zombie_app.join(&early, event).await.status(),
        StatusCode::CREATED,
        "the event's actor is warm on the zombie"
    );

    fleet.process(zombie).signal("STOP");
    tokio::time::sleep(LEASE_TTL + Duration::from_millis(1500)).await;
    let late = survivor.user();
    let started = Instant::now();
    loop {
        let status = survivor.join(&late, event).await.status();
        if status == StatusCode::CREATED {
            break;
        }
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "while the shard moves"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never taken over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Sent while the zombie is paused, on a connection of its own (the
    // zombie closes the idle one it had once it resumes): it waits in the
    // listening socket's queue.
    let leaving = tokio::spawn({
        let (app, late) = (fleet.node(zombie), late.clone());
        async move { app.leave(&late, event).await.status() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    fleet.process(zombie).signal("CONT");
    let status = leaving.await.unwrap();
    assert!(
        status.is_success(),
        "the leave reached the holder: {status}"
    );
    // Read where the holder's change may reach its event cache a moment
    // after the forwarded answer: a leave the zombie answered from memory
    // instead would leave the count at 2 for good.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = survivor.event(event).await;
        if seen["active_count"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only the early member is left: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A fourth node started under load takes about a quarter of the shards —
/// only what placement now gives it moves — and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_under_load_takes_its_share_and_fails_no_request() {
    let Some(mut fleet) = Fleet::start(3, 4).await else {
        return;
    };
    let front = fleet.front();
    let owner = front.register("owner@example.com").await;
    let capacity = 50;
    let events = fleet.events_on_every_node(&owner, capacity, 3, 1).await;
    let leases = |view: &Value| -> Vec<Option<String>> {
        view["leases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["node"].as_str().map(str::to_owned))
            .collect()
    };
    let before = leases(&front.cluster().await);
    let load = Load::start(&front, &events, 16, Retry::Never);
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.start_node(3).await;
    let view = fleet.node(3).wait_for_placement(4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = load.stop().await;
    println!("a fourth node joins: {}", summary(&tally));
    assert!(
        tally.failures.is_empty(),
        "{}\nnginx: {}",
        summary(&tally),
        fleet.nginx.error_log()
    );

    let after = leases(&view);
    let newcomer = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["this_node"] == true)
        .unwrap();
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let taken = newcomer["shards_held"].as_u64().unwrap() as usize;
    assert_eq!(moved, taken, "only the newcomer's shards moved");
    assert!((32..=96).contains(&taken), "about a quarter: {taken}");
    assert!(tally.acknowledged() > 0);
    assert_every_event_whole(&front, &owner, &events, capacity, &tally).await;
    assert_eq!(
        StatusCode::OK,
        fleet
            .node(3)
            .request(reqwest::Method::GET, "/ready")
            .send()
            .await
            .unwrap()
            .status()
    );
}
