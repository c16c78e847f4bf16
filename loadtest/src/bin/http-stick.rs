//! The HTTP measuring stick for `hot-join` (issue #16): the least a join
//! can cost over HTTP here, with nothing of Turnout's code in it —
//! actix-web, an HS256 JWT check of the bearer token, and one round trip
//! through one actix actor per event holding its capacity and waitlist in
//! memory. No database, no durability, no idempotency store, no fan-out:
//! what Turnout does beyond this is what its CPU per join beyond the
//! stick's pays for.
//!
//! With `--durable FILE` it is a durable join at its plainest: each new
//! membership is a line appended to FILE and `fsync`ed before it is
//! answered (a repeated join waits behind its first answer's line), by one
//! thread that writes whatever joins arrived while it synced in one write
//! and one `fsync` (a group commit). A join on a quiet event pays for a
//! sync of its own there as in Turnout: the stick to hold Turnout's spread
//! joins against.
//!
//! With `--sqlite FILE` the log is a SQLite database that takes, per new
//! membership and in one transaction per batch, the five records the
//! design's one-transaction rule asks of a join: the fact, the membership,
//! the event's counts, the answer kept under the request's
//! `Idempotency-Key` when the request has one, and an outbox row — with
//! the indexes a product reads them by (a person's joins, an event's
//! roster, keys by expiry, the pending outbox), with the settings of
//! Turnout's journal (WAL, `synchronous = FULL`, a 16 MiB page cache, a
//! checkpoint every 10,000 pages) and statements prepared once. No relay,
//! no snapshots, no checks: the rule's writes at their plainest on SQLite,
//! to tell what Turnout's joins pay for the rule from what they pay for
//! the rest.
//!
//! Reads are at their plainest too: an event's details and the listing
//! (`GET /v1/events`, in the order the events were made) are what the
//! event was made with and its counts, which its actor keeps in two
//! atomics as it takes each join — no round trip, no cache to keep, no
//! filter or sort.
//!
//! It answers the few routes the load tool uses, in the same shapes, so
//! `hot-join` and `mixed` run against it unchanged and check its roster
//! too:
//!
//! ```sh
//! target/release/http-stick --bind 127.0.0.1:18151 --jwt-key KEY &
//! target/release/turnout-loadtest hot-join --target http://127.0.0.1:18151 --jwt-key KEY \
//!   --server-pid $! --users 20000 --concurrency 1000 --capacity 1000
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, mpsc};

use actix::prelude::*;
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use clap::Parser;
use dashmap::DashMap;
use jsonwebtoken::{DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;
use uuid::Uuid;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18151")]
    bind: String,
    /// The HS256 key tokens are signed with.
    #[arg(long, env = "TURNOUT_JWT_KEY")]
    jwt_key: String,
    #[arg(long, default_value = "turnout")]
    jwt_issuer: String,
    /// HTTP worker threads; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Append each new membership to this file and `fsync` it before
    /// answering.
    #[arg(long, conflicts_with = "sqlite")]
    durable: Option<PathBuf>,
    /// Write each new membership's records to this SQLite database (created
    /// if missing) and commit before answering.
    #[arg(long)]
    sqlite: Option<PathBuf>,
}

/// A new membership, as the log keeps it.
struct Joined {
    event: Uuid,
    user: Uuid,
    /// The request's `Idempotency-Key`: its answer is kept under it.
    key: Option<String>,
    status: &'static str,
    /// The place on the waitlist.
    position: Option<usize>,
    /// The event's counts with this join; nobody leaves the stick's events,
    /// so their sum is the event's joins so far: the fact's number.
    active: usize,
    waiting: usize,
}

impl Joined {
    fn version(&self) -> i64 {
        (self.active + self.waiting) as i64
    }
}

/// A new membership for the log (none for a repeated join, which only
/// waits for what is before it), and who waits for it to be on disk.
type Record = (Option<Joined>, oneshot::Sender<()>);

/// Where an event's actor hands its records, in the order it decides
/// them.
type Log = mpsc::Sender<Record>;

/// Where the log's batches go, each on disk before it is answered.
enum Sink {
    /// A line per membership, appended; one `fsync` per batch.
    Lines(File),
    /// The rule's five records per membership; one commit per batch.
    Sqlite(rusqlite::Connection),
}

impl Sink {
    /// Appends to the file at `path`, made durable with its name.
    fn lines(path: &Path) -> std::io::Result<Sink> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        // The file's name must survive a crash as well as its lines.
        File::open(
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )?
        .sync_all()?;
        Ok(Sink::Lines(file))
    }

    /// Writes to the database at `path`, its tables created if missing.
    fn sqlite(path: &Path) -> std::io::Result<Sink> {
        let connection = rusqlite::Connection::open(path).map_err(std::io::Error::other)?;
        connection
            .execute_batch(SCHEMA)
            .map_err(std::io::Error::other)?;
        Ok(Sink::Sqlite(connection))
    }

    /// Puts `batch` on disk, in one sync or one commit.
    fn write(&mut self, batch: &[&Joined]) -> std::io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        match self {
            Sink::Lines(file) => {
                let bytes: String = batch
                    .iter()
                    .map(|j| {
                        let place = j.position.unwrap_or(0);
                        format!("{} {} {} {place}\n", j.event, j.user, j.status)
                    })
                    .collect();
                file.write_all(bytes.as_bytes())?;
                file.sync_all()
            }
            Sink::Sqlite(connection) => commit(connection, batch).map_err(std::io::Error::other),
        }
    }
}

/// The five records' tables, as a product that reads them needs them, and
/// the settings of Turnout's journal (src/store/sql/journal/sqlite.rs): a
/// cache that holds a commit's pages, and checkpoints every 10,000 pages.
const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
PRAGMA cache_size = -16384;
PRAGMA wal_autocheckpoint = 10000;
CREATE TABLE IF NOT EXISTS facts (
    stream_id BLOB NOT NULL, version INTEGER NOT NULL, event_type TEXT NOT NULL,
    payload TEXT NOT NULL, recorded_at INTEGER NOT NULL,
    PRIMARY KEY (stream_id, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id BLOB PRIMARY KEY, active_count INTEGER NOT NULL, waitlist_count INTEGER NOT NULL,
    version INTEGER NOT NULL, updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS memberships (
    event_id BLOB NOT NULL, user_id BLOB NOT NULL, status TEXT NOT NULL,
    position INTEGER NOT NULL, joined_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS memberships_by_user ON memberships (user_id, event_id);
CREATE INDEX IF NOT EXISTS memberships_roster ON memberships (event_id, status, position);
CREATE TABLE IF NOT EXISTS answers (
    user_id BLOB NOT NULL, key TEXT NOT NULL, answer TEXT NOT NULL, expires_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX IF NOT EXISTS answers_by_expiry ON answers (expires_at);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY, message_id BLOB NOT NULL, aggregate_id BLOB NOT NULL,
    stream_version INTEGER NOT NULL, payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id) WHERE status = 'pending';
";

/// One transaction for a batch: each membership's fact, row, answer and
/// outbox row, and each event's counts once, as of its last join.
fn commit(connection: &mut rusqlite::Connection, batch: &[&Joined]) -> rusqlite::Result<()> {
    let clock = chrono::Utc::now();
    let (now, at) = (
        clock.timestamp_micros(),
        clock.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    );
    let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut fact = tx.prepare_cached(
            "INSERT INTO facts (stream_id, version, event_type, payload, recorded_at) \
             VALUES (?1, ?2, 'member_joined', ?3, ?4)",
        )?;
        let mut membership = tx.prepare_cached(
            "INSERT INTO memberships (event_id, user_id, status, position, joined_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut answer = tx.prepare_cached(
            "INSERT INTO answers (user_id, key, answer, expires_at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut outbox = tx.prepare_cached(
            "INSERT INTO outbox (message_id, aggregate_id, stream_version, payload, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut counts = tx.prepare_cached(
            "INSERT INTO events (id, active_count, waitlist_count, version, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO UPDATE SET \
             active_count = excluded.active_count, waitlist_count = excluded.waitlist_count, \
             version = excluded.version, updated_at = excluded.updated_at",
        )?;
        let mut last: HashMap<Uuid, &Joined> = HashMap::new();
        for j in batch {
            let payload = json!({
                "type": "member_joined", "event_id": j.event, "user_id": j.user,
                "status": j.status, "position": j.position, "seats": 1, "at": at,
            })
            .to_string();
            fact.execute(rusqlite::params![j.event, j.version(), payload, now])?;
            membership.execute(rusqlite::params![
                j.event,
                j.user,
                j.status,
                j.position.unwrap_or(0) as i64,
                now
            ])?;
            if let Some(key) = &j.key {
                let reply = json!({ "data": {
                    "event_id": j.event, "user_id": j.user, "status": j.status, "position": j.position,
                } })
                .to_string();
                answer.execute(rusqlite::params![j.user, key, reply, now + 86_400_000_000])?;
            }
            let message = format!(r#"{{"schema_version":1,"event":{payload}}}"#);
            outbox.execute(rusqlite::params![
                Uuid::now_v7(),
                j.event,
                j.version(),
                message,
                now
            ])?;
            last.insert(j.event, j);
        }
        for j in last.values() {
            counts.execute(rusqlite::params![
                j.event,
                j.active as i64,
                j.waiting as i64,
                j.version(),
                now
            ])?;
        }
    }
    tx.commit()
}

/// Starts the log: one thread writes, a batch at a time, whatever arrived
/// while it wrote the one before (a group commit). A batch is answered once
/// it is on disk; one with nothing to write (only repeats) follows batches
/// already on disk, so it is answered at once.
fn start_log(mut sink: Sink) -> Log {
    let (records, arrived) = mpsc::channel::<Record>();
    std::thread::spawn(move || {
        while let Ok(first) = arrived.recv() {
            let batch: Vec<Record> = std::iter::once(first).chain(arrived.try_iter()).collect();
            let joined: Vec<&Joined> = batch.iter().filter_map(|(j, _)| j.as_ref()).collect();
            if let Err(error) = sink.write(&joined) {
                eprintln!("http-stick: the log could not be written: {error}");
                std::process::exit(1);
            }
            for (_, written) in batch {
                let _ = written.send(());
            }
        }
    });
    records
}

#[derive(Deserialize)]
struct Claims {
    sub: Uuid,
}

/// A join's status code and membership.
type Answer = (u16, &'static str, Option<usize>);

/// One event: capacity, who is in, who waits (in order, and each one's
/// place: nobody leaves the stick's events).
struct Event {
    id: Uuid,
    capacity: usize,
    active: HashSet<Uuid>,
    waiting: VecDeque<Uuid>,
    place: HashMap<Uuid, usize>,
    /// What reads show of the counts.
    shown: Arc<Counts>,
    log: Option<Log>,
}

impl Event {
    /// With a log: hands it the join (nothing for a repeat, which waits
    /// behind its first answer's records all the same) and says when it is
    /// on disk.
    fn logged(
        &self,
        user: Uuid,
        key: Option<String>,
        answer: &Answer,
    ) -> Option<oneshot::Receiver<()>> {
        let log = self.log.as_ref()?;
        let (code, status, position) = *answer;
        let joined = (code == 201).then_some(Joined {
            event: self.id,
            user,
            key,
            status,
            position,
            active: self.active.len(),
            waiting: self.waiting.len(),
        });
        let (written, on_disk) = oneshot::channel();
        // Were the log gone, `written` would be dropped with the record:
        // the join is then refused, not answered undurably.
        let _ = log.send((joined, written));
        Some(on_disk)
    }
}

impl Actor for Event {
    type Context = Context<Self>;
}

/// Join (the user, and with a log the request's `Idempotency-Key`): the
/// answer, and with a log when it may be given.
#[derive(Message)]
#[rtype(result = "(Answer, Option<oneshot::Receiver<()>>)")]
struct Join(Uuid, Option<String>);

impl Handler<Join> for Event {
    type Result = MessageResult<Join>;

    fn handle(&mut self, Join(user, key): Join, _: &mut Context<Self>) -> Self::Result {
        let answer = if self.active.contains(&user) {
            (200, "active", None)
        } else if let Some(place) = self.place.get(&user) {
            (200, "waitlisted", Some(*place))
        } else if self.active.len() < self.capacity {
            self.active.insert(user);
            (201, "active", None)
        } else {
            self.waiting.push_back(user);
            self.place.insert(user, self.waiting.len());
            (201, "waitlisted", Some(self.waiting.len()))
        };
        self.shown
            .active
            .store(self.active.len(), Ordering::Relaxed);
        self.shown
            .waiting
            .store(self.waiting.len(), Ordering::Relaxed);
        let on_disk = self.logged(user, key, &answer);
        MessageResult((answer, on_disk))
    }
}

/// The roster, for the load tool's checks.
#[derive(Message)]
#[rtype(result = "Vec<Value>")]
struct Roster;

impl Handler<Roster> for Event {
    type Result = MessageResult<Roster>;

    fn handle(&mut self, _: Roster, _: &mut Context<Self>) -> Self::Result {
        let active = self
            .active
            .iter()
            .map(|u| json!({ "user_id": u, "status": "active" }));
        let waiting = self
            .waiting
            .iter()
            .enumerate()
            .map(|(i, u)| json!({ "user_id": u, "status": "waitlisted", "position": i + 1 }));
        MessageResult(active.chain(waiting).collect())
    }
}

/// An event's counts as its actor last left them.
#[derive(Default)]
struct Counts {
    active: AtomicUsize,
    waiting: AtomicUsize,
}

/// What a read shows of an event: what it was made with, and its counts.
struct Listed {
    id: Uuid,
    capacity: usize,
    made_with: Map<String, Value>,
    counts: Arc<Counts>,
}

/// An event as a read writes it.
#[derive(Serialize)]
struct Shown<'a> {
    id: Uuid,
    #[serde(flatten)]
    made_with: &'a Map<String, Value>,
    capacity: usize,
    active_count: usize,
    waitlist_count: usize,
}

/// An event's details as a read answers them, written straight from what
/// the stick holds (through a `serde_json::Value` it would build a map per
/// answer first).
#[derive(Serialize)]
struct Details<'a> {
    data: Shown<'a>,
}

/// A page of the listing, likewise; the stick's is always the last.
#[derive(Serialize)]
struct Listing<'a> {
    data: Vec<Shown<'a>>,
    next_cursor: Option<String>,
}

impl Listed {
    fn shown(&self) -> Shown<'_> {
        Shown {
            id: self.id,
            made_with: &self.made_with,
            capacity: self.capacity,
            active_count: self.counts.active.load(Ordering::Relaxed),
            waitlist_count: self.counts.waiting.load(Ordering::Relaxed),
        }
    }
}

/// An event: its actor, which takes its joins, and what reads show of it.
struct Held {
    actor: Addr<Event>,
    listed: Arc<Listed>,
}

struct Stick {
    key: DecodingKey,
    validation: Validation,
    events: DashMap<Uuid, Held>,
    /// Every event, in the order they were made.
    listing: RwLock<Vec<Arc<Listed>>>,
    log: Option<Log>,
}

impl Stick {
    fn user(&self, request: &HttpRequest) -> Option<Uuid> {
        let token = request
            .headers()
            .get("authorization")?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).ok()?;
        Some(claims.claims.sub)
    }

    fn event(&self, id: Uuid) -> Option<Addr<Event>> {
        self.events.get(&id).map(|e| e.actor.clone())
    }
}

fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized().json(json!({ "error": { "code": "unauthorized" } }))
}

fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(json!({ "error": { "code": "not_found" } }))
}

async fn create_venue(stick: web::Data<Stick>, request: HttpRequest) -> HttpResponse {
    if stick.user(&request).is_none() {
        return unauthorized();
    }
    HttpResponse::Created().json(json!({ "data": { "id": Uuid::now_v7() } }))
}

#[derive(Deserialize)]
struct NewEvent {
    capacity: usize,
    #[serde(flatten)]
    made_with: Map<String, Value>,
}

async fn create_event(
    stick: web::Data<Stick>,
    request: HttpRequest,
    body: web::Json<NewEvent>,
) -> HttpResponse {
    if stick.user(&request).is_none() {
        return unauthorized();
    }
    let id = Uuid::now_v7();
    let NewEvent {
        capacity,
        made_with,
    } = body.into_inner();
    let listed = Arc::new(Listed {
        id,
        capacity,
        made_with,
        counts: Arc::default(),
    });
    let event = Event {
        id,
        capacity,
        active: HashSet::new(),
        waiting: VecDeque::new(),
        place: HashMap::new(),
        shown: Arc::clone(&listed.counts),
        log: stick.log.clone(),
    }
    .start();
    let held = Held {
        actor: event,
        listed: Arc::clone(&listed),
    };
    stick.events.insert(id, held);
    stick
        .listing
        .write()
        .expect("no thread panics holding it")
        .push(listed);
    HttpResponse::Created().json(json!({ "data": { "id": id } }))
}

async fn publish(
    stick: web::Data<Stick>,
    request: HttpRequest,
    id: web::Path<Uuid>,
) -> HttpResponse {
    if stick.user(&request).is_none() {
        return unauthorized();
    }
    match stick.event(*id) {
        Some(_) => HttpResponse::Ok().json(json!({ "data": { "id": *id } })),
        None => not_found(),
    }
}

async fn join(stick: web::Data<Stick>, request: HttpRequest, id: web::Path<Uuid>) -> HttpResponse {
    let Some(user) = stick.user(&request) else {
        return unauthorized();
    };
    let Some(event) = stick.event(*id) else {
        return not_found();
    };
    let key = stick
        .log
        .as_ref()
        .and_then(|_| request.headers().get("idempotency-key"))
        .and_then(|k| k.to_str().ok())
        .map(str::to_owned);
    match event.send(Join(user, key)).await {
        Ok(((code, status, position), on_disk)) => {
            if let Some(on_disk) = on_disk
                && on_disk.await.is_err()
            {
                return HttpResponse::ServiceUnavailable().finish();
            }
            HttpResponse::build(StatusCode::from_u16(code).expect("200 or 201")).json(
                json!({ "data": { "event_id": *id, "user_id": user, "status": status, "position": position } }),
            )
        }
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

async fn attendees(stick: web::Data<Stick>, id: web::Path<Uuid>) -> HttpResponse {
    let Some(event) = stick.event(*id) else {
        return not_found();
    };
    match event.send(Roster).await {
        Ok(roster) => HttpResponse::Ok().json(json!({ "data": roster, "next_cursor": null })),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

async fn event(stick: web::Data<Stick>, id: web::Path<Uuid>) -> HttpResponse {
    match stick.events.get(&*id) {
        Some(e) => HttpResponse::Ok().json(Details {
            data: e.listed.shown(),
        }),
        None => not_found(),
    }
}

#[derive(Deserialize)]
struct Page {
    limit: Option<usize>,
}

async fn events(stick: web::Data<Stick>, page: web::Query<Page>) -> HttpResponse {
    let limit = page.limit.unwrap_or(20).clamp(1, 100);
    let listing = stick.listing.read().expect("no thread panics holding it");
    let data: Vec<Shown> = listing.iter().take(limit).map(|l| l.shown()).collect();
    HttpResponse::Ok().json(Listing {
        data,
        next_cursor: None,
    })
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&[&args.jwt_issuer]);
    let stick = web::Data::from(Arc::new(Stick {
        key: DecodingKey::from_secret(args.jwt_key.as_bytes()),
        validation,
        events: DashMap::new(),
        listing: RwLock::default(),
        log: args
            .durable
            .as_deref()
            .map(Sink::lines)
            .or_else(|| args.sqlite.as_deref().map(Sink::sqlite))
            .transpose()?
            .map(start_log),
    }));
    let workers = if args.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.workers
    };
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            App::new()
                .app_data(stick.clone())
                .route("/v1/venues", web::post().to(create_venue))
                .route("/v1/events", web::post().to(create_event))
                .route("/v1/events", web::get().to(events))
                .route("/v1/events/{id}", web::get().to(event))
                .route("/v1/events/{id}/publish", web::post().to(publish))
                .route("/v1/events/{id}/join", web::post().to(join))
                .route("/v1/events/{id}/attendees", web::get().to(attendees))
        })
        .workers(workers)
        .backlog(4096)
        .bind(&args.bind)?
        .run()
        .await
    })
}
