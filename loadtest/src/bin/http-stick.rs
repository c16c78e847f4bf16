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
//! It answers the few routes the load tool uses, in the same shapes, so
//! `hot-join` runs against it unchanged and checks its roster too:
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
use std::sync::{Arc, mpsc};

use actix::prelude::*;
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use clap::Parser;
use dashmap::DashMap;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;
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
    #[arg(long)]
    durable: Option<PathBuf>,
}

/// A line for the log (empty for a repeated join, which only waits for
/// what is before it), and who waits for it to be on disk.
type Record = (String, oneshot::Sender<()>);

/// Where an event's actor hands its records, in the order it decides
/// them.
type Log = mpsc::Sender<Record>;

/// Opens the log: one thread appends and syncs, a batch at a time. A
/// batch is answered once it is synced; one with nothing to write (only
/// repeats) follows batches already synced, so it is answered at once.
fn open_log(path: &Path) -> std::io::Result<Log> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    // The file's name must survive a crash as well as its lines.
    File::open(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )?
    .sync_all()?;
    let (records, arrived) = mpsc::channel::<Record>();
    std::thread::spawn(move || {
        while let Ok(first) = arrived.recv() {
            let batch: Vec<Record> = std::iter::once(first).chain(arrived.try_iter()).collect();
            if let Err(error) = write_batch(&mut file, &batch) {
                eprintln!("http-stick: the log could not be written: {error}");
                std::process::exit(1);
            }
            for (_, written) in batch {
                let _ = written.send(());
            }
        }
    });
    Ok(records)
}

fn write_batch(file: &mut File, batch: &[Record]) -> std::io::Result<()> {
    let bytes: String = batch.iter().map(|(line, _)| line.as_str()).collect();
    if bytes.is_empty() {
        return Ok(());
    }
    file.write_all(bytes.as_bytes())?;
    file.sync_all()
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
    log: Option<Log>,
}

impl Event {
    /// With `--durable`: hands the join's line to the log (none for a
    /// repeat, which waits behind its first answer's line all the same) and
    /// says when it is on disk.
    fn logged(&self, user: Uuid, answer: &Answer) -> Option<oneshot::Receiver<()>> {
        let log = self.log.as_ref()?;
        let (code, status, position) = answer;
        let line = match code {
            201 => format!("{} {user} {status} {}\n", self.id, position.unwrap_or(0)),
            _ => String::new(),
        };
        let (written, on_disk) = oneshot::channel();
        // Were the log gone, `written` would be dropped with the record:
        // the join is then refused, not answered undurably.
        let _ = log.send((line, written));
        Some(on_disk)
    }
}

impl Actor for Event {
    type Context = Context<Self>;
}

/// Join: the answer, and with `--durable` when it may be given.
#[derive(Message)]
#[rtype(result = "(Answer, Option<oneshot::Receiver<()>>)")]
struct Join(Uuid);

impl Handler<Join> for Event {
    type Result = MessageResult<Join>;

    fn handle(&mut self, Join(user): Join, _: &mut Context<Self>) -> Self::Result {
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
        let on_disk = self.logged(user, &answer);
        MessageResult((answer, on_disk))
    }
}

/// The roster and the counts, for the load tool's checks.
#[derive(Message)]
#[rtype(result = "serde_json::Value")]
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
        MessageResult(json!({
            "attendees": active.chain(waiting).collect::<Vec<_>>(),
            "active_count": self.active.len(),
            "waitlist_count": self.waiting.len(),
        }))
    }
}

struct Stick {
    key: DecodingKey,
    validation: Validation,
    events: DashMap<Uuid, Addr<Event>>,
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
        self.events.get(&id).map(|e| e.clone())
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
    let event = Event {
        id,
        capacity: body.capacity,
        active: HashSet::new(),
        waiting: VecDeque::new(),
        place: HashMap::new(),
        log: stick.log.clone(),
    }
    .start();
    stick.events.insert(id, event);
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
    match event.send(Join(user)).await {
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

async fn roster(stick: &Stick, id: Uuid) -> Option<serde_json::Value> {
    stick.event(id)?.send(Roster).await.ok()
}

async fn attendees(stick: web::Data<Stick>, id: web::Path<Uuid>) -> HttpResponse {
    match roster(&stick, *id).await {
        Some(r) => HttpResponse::Ok().json(json!({ "data": r["attendees"], "next_cursor": null })),
        None => not_found(),
    }
}

async fn event(stick: web::Data<Stick>, id: web::Path<Uuid>) -> HttpResponse {
    match roster(&stick, *id).await {
        Some(r) => HttpResponse::Ok().json(json!({ "data": {
            "id": *id, "active_count": r["active_count"], "waitlist_count": r["waitlist_count"],
        } })),
        None => not_found(),
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&[&args.jwt_issuer]);
    let stick = web::Data::from(Arc::new(Stick {
        key: DecodingKey::from_secret(args.jwt_key.as_bytes()),
        validation,
        events: DashMap::new(),
        log: args.durable.as_deref().map(open_log).transpose()?,
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
