//! Storage adapters: the SQLite (embedded default) and Postgres
//! implementations of the actors' [`EventStore`] port, plus the queries the
//! HTTP layer reads from (accounts, venues and the read models).
//!
//! Both backends share one implementation (`sql.rs`): the schema keeps to
//! types both speak (UUIDs, 64-bit integers for times in unix microseconds,
//! JSON), so each query is written once.

mod sql;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::types::Json;
use turnout_actors::domain::StoredEvent;
use turnout_actors::domain::{
    EventId, GeoBox, Lifecycle, MemberStatus, UserId, VenueId, WaitlistFill, WaitlistMode,
};
use turnout_actors::store::{EventStore, StoreError};
use uuid::Uuid;

pub use sql::SqlStore;

/// Connection-pool settings from configuration.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub min_connections: u32,
    pub acquire_timeout_ms: u64,
    /// A connection idle this long is closed (down to `min_connections`),
    /// and with it what it holds: a SQLite connection's page cache, a
    /// Postgres backend.
    pub idle_timeout_secs: u64,
}

/// A user account row. The password hash never prints.
#[derive(Clone, sqlx::FromRow)]
pub struct UserRecord {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
    pub display_name: String,
    pub interests: Json<Vec<String>>,
    pub home_lat: Option<f64>,
    pub home_lon: Option<f64>,
    #[sqlx(try_from = "String")]
    pub role: crate::auth::Role,
    pub created_at: i64,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("password_hash", &"[redacted]")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VenueRecord {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    pub address: Option<String>,
    /// An IANA name (`Europe/Amsterdam`): how its screens show times.
    pub time_zone: Option<String>,
    pub created_at: i64,
}

/// An event as the read model holds it, with live counts.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRecord {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub venue_id: Uuid,
    pub title: String,
    pub description: Option<String>,
    pub starts_at: i64,
    pub ends_at: Option<i64>,
    pub capacity: i64,
    #[sqlx(try_from = "String")]
    pub status: Lifecycle,
    pub active_count: i64,
    pub offered_count: i64,
    pub waitlist_count: i64,
    #[sqlx(try_from = "String")]
    pub waitlist_mode: WaitlistMode,
    pub offer_hold_secs: i64,
    pub max_party: i64,
    #[sqlx(try_from = "String")]
    pub waitlist_fill: WaitlistFill,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    #[sqlx(skip)]
    pub tags: Vec<String>,
}

/// A membership in an event's roster or a user's list.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MembershipRecord {
    pub event_id: Uuid,
    pub user_id: Uuid,
    #[sqlx(try_from = "String")]
    pub status: MemberStatus,
    pub order_key: i64,
    pub seats: i64,
    /// While offered: when the hold runs out.
    pub offer_expires_at: Option<i64>,
    pub joined_at: i64,
    /// 1-based, for waitlisted rows only.
    pub position: Option<i64>,
}

/// A live membership with the version of its event's read-model row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Place {
    #[sqlx(flatten)]
    pub membership: MembershipRecord,
    pub version: i64,
}

/// Where an outbox row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxStatus {
    Pending,
    Dead,
}

/// One fact for the daily-facts consumer.
#[derive(Debug, Clone)]
pub struct DailyFact {
    pub message_id: Uuid,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub event_type: String,
}

/// An outbox row: one fact, to be published once.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxMessage {
    /// Monotonic: the publishing order.
    pub id: i64,
    pub message_id: Uuid,
    pub topic: String,
    pub aggregate_id: Uuid,
    pub stream_version: i64,
    pub event_type: String,
    pub payload: String,
    pub request_id: Option<String>,
    /// The W3C trace context of the command that wrote it (traces on only).
    pub traceparent: Option<String>,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
}

/// Filters for the public event listing; `after` is the keyset cursor.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub venue_id: Option<VenueId>,
    pub tag: Option<String>,
    /// Only events at venues inside this box (a radius feed's circle).
    pub within: Option<GeoBox>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub after: Option<(i64, Uuid)>,
    pub limit: i64,
}

/// Everything the server stores, by role: the event write path goes through
/// the [`EventStore`] port (journal and actors); the rest are plain queries.
#[async_trait]
pub trait Store: EventStore + Accounts + Venues + EventReads + OutboxRelay + Membership {
    /// How many connections each pool holds open: for /metrics.
    fn connections(&self) -> [PoolConnections; 2];

    /// The thread the journal actor should run on: the one its commits run
    /// on, where the store has one (SQLite), so that handing a batch over
    /// wakes no other thread. `None`: a thread of its own.
    fn journal_thread(&self) -> Option<actix::ArbiterHandle>;

    /// Whether the database answers: readiness.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Deletes up to `limit` idempotency records past their expiry;
    /// returns how many (see `background::purge_in_batches`).
    async fn purge_expired_replies(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<u64, StoreError>;
}

/// A connection pool's size, as /metrics reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConnections {
    /// `requests` or `background`.
    pub pool: &'static str,
    pub open: u32,
    /// Of `open`, those waiting to be used.
    pub idle: usize,
}

/// Accounts: sign-up, login lookups, profiles and roles.
#[async_trait]
pub trait Accounts: Send + Sync {
    /// Inserts an account; `false` if the email is taken.
    async fn create_user(&self, user: &UserRecord) -> Result<bool, StoreError>;

    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError>;

    async fn user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError>;

    async fn update_profile(
        &self,
        id: UserId,
        interests: &[String],
        home: Option<(f64, f64)>,
    ) -> Result<(), StoreError>;

    /// Sets an account's role (`attendee`, `organizer`, `admin`); false if
    /// no account has that email.
    async fn set_role(&self, email: &str, role: crate::auth::Role) -> Result<bool, StoreError>;
}

/// Venues and the organisers their owners name.
#[async_trait]
pub trait Venues: Send + Sync {
    async fn create_venue(&self, venue: &VenueRecord) -> Result<(), StoreError>;

    async fn venue(&self, id: VenueId) -> Result<Option<VenueRecord>, StoreError>;

    /// Sets (or clears) a venue's time zone; false if there is no venue `id`.
    async fn set_venue_time_zone(
        &self,
        id: VenueId,
        time_zone: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// Every venue's position: `(id, lat, lon)`.
    async fn venue_locations(&self) -> Result<Vec<(Uuid, f64, f64)>, StoreError>;

    /// Lets `user` put events on `venue` from `at`: when they were first
    /// named (`at`, or an earlier naming's time), and whether this named them.
    async fn add_organizer(
        &self,
        venue: VenueId,
        user: UserId,
        at: i64,
    ) -> Result<(i64, bool), StoreError>;

    /// `false` if `user` was not an organiser of `venue`.
    async fn remove_organizer(&self, venue: VenueId, user: UserId) -> Result<bool, StoreError>;

    /// A venue's organisers with when each was added, oldest first.
    async fn organizers(&self, venue: VenueId) -> Result<Vec<(Uuid, i64)>, StoreError>;

    async fn is_organizer(&self, venue: VenueId, user: UserId) -> Result<bool, StoreError>;

    /// How many venues `owner` owns (for `[quotas]`).
    async fn venues_owned(&self, owner: UserId) -> Result<i64, StoreError>;
}

/// The read models' queries: events, listings, rosters and a user's joins.
#[async_trait]
pub trait EventReads: Send + Sync {
    async fn event(&self, id: EventId) -> Result<Option<EventRecord>, StoreError>;

    async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, StoreError>;

    /// How many of `owner`'s events start after `now` (unix µs) and are not
    /// cancelled, drafts included (for `[quotas]`).
    async fn upcoming_events_owned(&self, owner: UserId, now: i64) -> Result<i64, StoreError>;

    /// Active members by when they became active, then the waitlist in order;
    /// `after` is `(0 active | 1 waitlisted, order_key)`.
    async fn attendees(
        &self,
        event: EventId,
        after: Option<(i64, i64)>,
        limit: i64,
    ) -> Result<Vec<MembershipRecord>, StoreError>;

    /// A user's memberships, newest first, each with its event; `before` is
    /// the keyset cursor `(joined_at, event_id)`.
    async fn joins_of(
        &self,
        user: UserId,
        before: Option<(i64, Uuid)>,
        limit: i64,
    ) -> Result<Vec<(MembershipRecord, EventRecord)>, StoreError>;

    /// A user's live places (active, offered, waitlisted), newest first, at
    /// most `limit`, each with its event's version — read in one statement,
    /// so the places are those of that version. Ended ones are left out in
    /// the query: a long history of left and declined joins must not push
    /// live places past the limit.
    async fn live_places_of(&self, user: UserId, limit: i64) -> Result<Vec<Place>, StoreError>;

    /// A user's places in `events`, whatever their status, each with its
    /// event's version: how places known to have been live stand now,
    /// ended ones included (a refresh's read of what the live read left
    /// out).
    async fn places_in(&self, user: UserId, events: &[EventId]) -> Result<Vec<Place>, StoreError>;

    /// An event's facts after stream version `after`, oldest first, at most
    /// `limit`: its history, from the log itself.
    async fn history(
        &self,
        event: EventId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, StoredEvent)>, StoreError>;

    /// Events holding an offer that runs out by `by`, the most urgent
    /// first: at most `limit` of them, from just after `after` (a page's
    /// last, to read the next page; `None` for the first).
    async fn events_with_offers_due(
        &self,
        by: DateTime<Utc>,
        after: Option<OffersDue>,
        limit: i64,
    ) -> Result<Vec<OffersDue>, StoreError>;

    /// The events a user is in (active, offered or waitlisted), oldest
    /// join first: every one that has not started by `now` (none is to be
    /// recommended back to them), and of the rest the `recent` most
    /// recently joined (what their taste is learnt from). A long history
    /// of events gone by must not crowd an upcoming one out.
    async fn current_joins_of(
        &self,
        user: UserId,
        now: DateTime<Utc>,
        recent: i64,
    ) -> Result<Vec<Uuid>, StoreError>;

    /// Every event starting at or after `since`, whatever its status, with
    /// tags: what the recommendation catalog loads at start.
    async fn events_starting_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<EventRecord>, StoreError>;

    /// `(user, event, joined_at)` of the current members of those events,
    /// in join order.
    async fn joins_of_events_starting_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(Uuid, Uuid, i64)>, StoreError>;
}

/// An event holding offers, with the earliest of their deadlines (unix µs):
/// a sweep's place in the events whose offers run out soon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffersDue {
    pub due: i64,
    pub event: EventId,
}

/// A node of the cluster as it registered.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct NodeRecord {
    pub id: Uuid,
    /// Where the other nodes reach it.
    pub address: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
}

/// What a heartbeat found of its node's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The process's own row: beaten.
    Heard,
    /// No row under the node's id (deleted: by its own leaving, or by an
    /// operator).
    Gone,
    /// The row under the node's id is another process's (registered at
    /// another time): a twin took the id over while this one was away.
    Superseded,
}

/// A shard's lease as stored. `node` is `None` while the shard is free.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LeaseRecord {
    pub shard: i64,
    pub node: Option<Uuid>,
    pub epoch: i64,
    /// Unix microseconds.
    pub expires_at: i64,
}

impl LeaseRecord {
    /// Whether a node may take the shard at `now`: nobody holds it, the
    /// holder let its lease run out, or `node` itself is the holder (after
    /// a restart under the same id, or a lease it stopped believing in).
    pub fn is_takeable_by(&self, node: Uuid, now: i64) -> bool {
        self.node.is_none_or(|holder| holder == node) || self.expires_at < now
    }

    /// The node holding the shard at `now`, if its lease has not run out.
    pub fn holder_at(&self, now: i64) -> Option<Uuid> {
        self.node.filter(|_| self.expires_at >= now)
    }
}

/// The cluster's membership: the shard count fixed in the database, the
/// nodes with their heartbeats, and the shard leases.
///
/// Every time written here or compared with what is (`now`, `expires_at`,
/// `heartbeat_at`) is the database's, read by [`Membership::clock`]: the
/// nodes' own clocks may disagree, and a node whose clock ran ahead would
/// take a lease its holder still believes in.
#[async_trait]
pub trait Membership: Send + Sync {
    /// The database's time now, in unix microseconds.
    async fn clock(&self) -> Result<i64, StoreError>;
    /// The cluster's shard count: `proposed` if none was stored yet (it is
    /// stored), else the one stored, whatever `proposed` is.
    async fn shard_count(&self, proposed: i64) -> Result<i64, StoreError>;
    /// Registers a node (or registers it again, after a restart with the
    /// same id).
    async fn register_node(&self, node: &NodeRecord) -> Result<(), StoreError>;
    /// Registers a node whose row is gone, unless a row under its id came
    /// meanwhile (another process's): whether it was registered.
    async fn register_node_if_absent(&self, node: &NodeRecord) -> Result<bool, StoreError>;
    /// Beats for the process of `node` that registered at `started_at`.
    async fn heartbeat(
        &self,
        node: Uuid,
        started_at: i64,
        now: i64,
    ) -> Result<Heartbeat, StoreError>;
    /// Every registered node, by id, live or not.
    async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// Deletes the rows of nodes last heard of before `before` (processes
    /// that died without leaving); how many.
    async fn forget_nodes_silent_since(&self, before: i64) -> Result<u64, StoreError>;
    /// A node leaving the cluster on its own (shutdown): the row of its
    /// process that registered at `started_at`, not another's under its id.
    async fn deregister_node(&self, node: Uuid, started_at: i64) -> Result<(), StoreError>;

    /// Makes sure a lease row exists, free, for each of `shards` shards.
    async fn seed_leases(&self, shards: i64) -> Result<(), StoreError>;
    /// Every shard's lease, by shard.
    async fn leases(&self) -> Result<Vec<LeaseRecord>, StoreError>;
    /// Takes `shard` for `node` until `expires_at` if it is still at
    /// `seen_epoch` and still takeable at `now` (see
    /// [`LeaseRecord::is_takeable_by`]); the new epoch, or `None` when
    /// another node got there first or the holder renewed.
    async fn take_shard(
        &self,
        shard: i64,
        node: Uuid,
        seen_epoch: i64,
        now: i64,
        expires_at: i64,
    ) -> Result<Option<i64>, StoreError>;
    /// Extends the leases `node` holds at the given (shard, epoch) to
    /// `expires_at`, or keeps a later expiry (only those it believes it
    /// holds: a lease it let go of lapses); the shards renewed.
    async fn renew_shards(
        &self,
        node: Uuid,
        leases: &[(i64, i64)],
        expires_at: i64,
    ) -> Result<Vec<i64>, StoreError>;
    /// Frees `shard` if `node` still holds it at `epoch`.
    async fn release_shard(&self, shard: i64, node: Uuid, epoch: i64) -> Result<bool, StoreError>;
}

/// The outbox relay's rows and lease, and the consumers' inbox.
#[async_trait]
pub trait OutboxRelay: Send + Sync {
    /// Takes or renews the named lease for `holder` until `now + ttl`; its
    /// epoch, or `None` while another holder's lease runs. The epoch stays
    /// while one holder renews, and rises each time the lease changes
    /// hands, to `now` at least: a fencing token that also orders the
    /// holders of a database made afresh after those of the one before.
    async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        ttl_micros: i64,
    ) -> Result<Option<i64>, StoreError>;

    /// Outbox rows with the status, in id order, after the id `after`.
    async fn outbox(
        &self,
        status: OutboxStatus,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxMessage>, StoreError>;

    async fn outbox_published(&self, ids: &[i64], now: i64) -> Result<(), StoreError>;

    /// Records a failed publish; `dead` gives the row up. False if the row
    /// was no longer pending (another relay published it meanwhile).
    async fn outbox_failed(
        &self,
        id: i64,
        attempts: i64,
        next_attempt_at: i64,
        error: &str,
        dead: bool,
    ) -> Result<bool, StoreError>;

    /// Puts a dead row back in the queue; false if there is no dead row `id`.
    async fn replay_outbox(&self, id: i64) -> Result<bool, StoreError>;

    /// `(pending, dead)` row counts.
    async fn outbox_counts(&self) -> Result<(i64, i64), StoreError>;

    /// Deletes up to `limit` rows published before `before`; returns how many.
    async fn purge_published_outbox(&self, before: i64, limit: i64) -> Result<u64, StoreError>;

    /// Deletes up to `limit` inbox rows of messages handled before
    /// `before`; returns how many. A message delivered again after its row
    /// is gone would be handled again, so keep them as long as a
    /// redelivery can come: as long as published outbox rows are kept.
    async fn purge_inbox(&self, before: i64, limit: i64) -> Result<u64, StoreError>;

    /// The daily-facts consumer: counts each fact for its day, once per
    /// message however often it is delivered (inbox), a batch in one
    /// transaction; returns how many were new (the rest were redeliveries).
    async fn count_daily_facts(&self, facts: &[DailyFact]) -> Result<usize, StoreError>;

    /// The daily-facts consumer without a broker, handed outbox rows (id
    /// and fact) by the relay: counting them and marking them published
    /// are one transaction, so each row is counted exactly once and needs
    /// no inbox row — only the rows still pending count. Returns how many
    /// did.
    async fn count_daily_facts_and_publish(
        &self,
        rows: &[(i64, DailyFact)],
        now: i64,
    ) -> Result<usize, StoreError>;

    /// `(day, event_type, facts)` from `since_day` (`YYYY-MM-DD`) on.
    async fn daily_facts(&self, since_day: &str) -> Result<Vec<(String, String, i64)>, StoreError>;
}

/// Whether the URL names an embedded database (SQLite): one process only.
pub fn is_embedded(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// A server's exclusive claim on an embedded database, held for as long as
/// the server runs (an advisory `flock` on the file, apart from SQLite's own
/// locks). A second server on the same file would decide on the same events
/// with actors of its own, so it is refused; one-off commands such as
/// `turnout set-role` share the file as SQLite allows. The lock goes with
/// the process, however it ends.
#[derive(Debug)]
pub struct ServerClaim {
    _file: Option<std::fs::File>,
}

impl ServerClaim {
    /// Claims the database `url` names for this server: nothing to claim on
    /// Postgres (nodes share it) or an in-memory SQLite database.
    pub fn take(url: &str) -> anyhow::Result<Self> {
        if !is_embedded(url) {
            return Ok(Self { _file: None });
        }
        let options = SqliteConnectOptions::from_str(url)?;
        let path = options.get_filename();
        if path.as_os_str().is_empty() || path.to_str() == Some(":memory:") {
            return Ok(Self { _file: None });
        }
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: Some(file) }),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another Turnout server is using the SQLite database {}: SQLite is single-node; \
                 run one server per file, or use Postgres to run several nodes",
                path.display()
            ),
            Err(std::fs::TryLockError::Error(error)) => Err(error.into()),
        }
    }
}

/// Connections for what the server does on a timer (see [`SqlStore`]):
/// the relay's pass, a purge, the offer clock and a cluster's placement
/// (which reads nodes and leases at once) may overlap; the admin routes'
/// outbox, stats and cluster reads share them too.
const BACKGROUND_CONNECTIONS: u32 = 4;

/// Opens the database named by `url` (`sqlite:` or `postgres:`) and brings
/// its schema up to date. Call inside an actix system: SQLite's journal
/// connection lives on an arbiter of its own.
///
/// `commit_within` is how long the journal waits for a commit (its
/// `commit_timeout`): on Postgres a commit the journal has given up on,
/// and answered as failed, must not land afterwards (see `PgWriter`).
pub async fn connect(
    url: &str,
    pool: &PoolSettings,
    commit_within: Duration,
) -> anyhow::Result<Arc<dyn Store>> {
    let acquire = Duration::from_millis(pool.acquire_timeout_ms);
    let idle = Duration::from_secs(pool.idle_timeout_secs);
    if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before it is acknowledged.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true)
            .pragma("wal_autocheckpoint", sql::WAL_CHECKPOINT_PAGES.to_string());
        if let Some(dir) = options.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let path = options.get_filename().to_owned();
        anyhow::ensure!(
            !path.as_os_str().is_empty() && path.to_str() != Some(":memory:"),
            "SQLite needs a database file (the journal writes through a connection of its own)"
        );
        let requests = SqlitePoolOptions::new()
            .max_connections(pool.max_connections)
            .min_connections(pool.min_connections)
            .acquire_timeout(acquire)
            .idle_timeout(idle)
            .after_connect(|conn, _| Box::pin(stable_plans(conn)))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&requests).await?;
        let background = SqlitePoolOptions::new()
            .max_connections(BACKGROUND_CONNECTIONS)
            .acquire_timeout(acquire)
            .after_connect(|conn, _| Box::pin(stable_plans(conn)))
            .connect_with(options)
            .await?;
        let writer = sql::SqliteWriter::open(&path)?;
        Ok(Arc::new(SqlStore::new(requests, background, writer)))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let requests = PgPoolOptions::new()
            .max_connections(pool.max_connections)
            .min_connections(pool.min_connections)
            .acquire_timeout(acquire)
            .idle_timeout(idle)
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres")
            .run(&requests)
            .await?;
        let background = PgPoolOptions::new()
            .max_connections(BACKGROUND_CONNECTIONS)
            .acquire_timeout(acquire)
            .connect(url)
            .await?;
        let writer =
            sql::PgWriter::connect(PgConnectOptions::from_str(url)?, commit_within).await?;
        Ok(Arc::new(SqlStore::new(requests, background, writer)))
    } else {
        anyhow::bail!("unsupported database URL scheme: expected sqlite: or postgres:")
    }
}

/// Gives a SQLite connection plans that do not depend on bound values (the
/// query planner stability guarantee). Without it SQLite plans a statement
/// with `LIMIT $n` for the value bound, and so marks it stale whenever a
/// value is bound again: every page of a listing, a roster or the outbox
/// was prepared afresh at each execution, some 95,000 instructions, more
/// than most of those queries cost. No statement here wants a plan by value.
async fn stable_plans(conn: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
    use rusqlite::ffi;
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    let mut enabled: std::os::raw::c_int = 0;
    // SAFETY: `db` is this connection's open handle, locked for the call by
    // `handle`; the call sets one flag of the connection and writes its new
    // value to `enabled`. (sqlx and rusqlite link the same libsqlite3-sys.)
    let rc =
        unsafe { ffi::sqlite3_db_config(db, ffi::SQLITE_DBCONFIG_ENABLE_QPSG, 1, &mut enabled) };
    if rc != ffi::SQLITE_OK || enabled != 1 {
        return Err(sqlx::Error::Configuration(
            format!("SQLite refused stable plans (code {rc})").into(),
        ));
    }
    Ok(())
}

/// The time a command happens at, to the microsecond the store keeps, so an
/// answer and a later read of the same fact agree exactly.
pub fn now() -> DateTime<Utc> {
    from_micros(micros(Utc::now()))
}

/// Times are stored as unix microseconds.
pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How often the connection's statements that read `limited` were
    /// prepared again.
    async fn repreparations(conn: &mut sqlx::SqliteConnection, limited: &str) -> i32 {
        use rusqlite::ffi;
        let mut handle = conn.lock_handle().await.unwrap();
        let db = handle.as_raw_handle().as_ptr();
        let mut total = 0;
        // SAFETY: the handle is locked for the walk; each statement pointer
        // comes from `sqlite3_next_stmt` on it and is only read.
        unsafe {
            let mut statement = ffi::sqlite3_next_stmt(db, std::ptr::null_mut());
            while !statement.is_null() {
                let sql = std::ffi::CStr::from_ptr(ffi::sqlite3_sql(statement));
                if sql.to_string_lossy().contains(limited) {
                    total +=
                        ffi::sqlite3_stmt_status(statement, ffi::SQLITE_STMTSTATUS_REPREPARE, 0);
                }
                statement = ffi::sqlite3_next_stmt(db, statement);
            }
        }
        total
    }

    /// A `LIMIT $1` page, read with three limits.
    async fn pages(conn: &mut sqlx::SqliteConnection) {
        sqlx::query("CREATE TABLE IF NOT EXISTS t (x INTEGER PRIMARY KEY)")
            .execute(&mut *conn)
            .await
            .unwrap();
        for limit in [10_i64, 20, 30] {
            sqlx::query("SELECT x FROM t ORDER BY x LIMIT $1")
                .bind(limit)
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn with_stable_plans_a_page_is_never_prepared_again_for_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("plans.db"))
            .create_if_missing(true);
        let plain = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .unwrap();
        let stable = SqlitePoolOptions::new()
            .max_connections(1)
            .after_connect(|conn, _| Box::pin(stable_plans(conn)))
            .connect_with(options)
            .await
            .unwrap();

        let mut conn = plain.acquire().await.unwrap();
        pages(&mut conn).await;
        assert_eq!(
            repreparations(&mut conn, "LIMIT $1").await,
            3,
            "SQLite's own default: each execution planned again for its limit"
        );
        let mut conn = stable.acquire().await.unwrap();
        pages(&mut conn).await;
        assert_eq!(repreparations(&mut conn, "LIMIT $1").await, 0);
    }
}
