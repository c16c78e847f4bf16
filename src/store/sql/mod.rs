//! The one SQL implementation of the store ports, for SQLite and for
//! Postgres, split by what it persists: `journal` (the group commit behind
//! [`EventStore`]), `accounts`, `venues`, `reads` (the read models'
//! queries), `membership` (the cluster's nodes) and `relay` (outbox, inbox
//! and leases). Each file instantiates its impls
//! for both databases with a small macro: the statements are the same, only
//! the driver types differ. The journal's commit is written per database
//! (`journal::postgres`, `journal::sqlite`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Pool, Postgres, Sqlite};
use turnout_actors::store::StoreError;

use super::{PoolConnections, Store, micros, unavailable};

mod accounts;
mod journal;
pub use journal::{PgWriter, SqliteWriter, WAL_CHECKPOINT_PAGES};
mod membership;
mod reads;
mod relay;
mod venues;

/// What differs between the two databases: what the journal commits
/// through — its own connection, so that group commits never queue behind
/// a burst of requests' reads for a pooled one (on SQLite they share it
/// with the outbox relay alone) — and how a read begins a snapshot.
pub trait Dialect: sqlx::Database {
    type Writer: Send + Sync;

    /// Begins a transaction whose reads all see one snapshot of the
    /// database, and that writes nothing.
    const SNAPSHOT_READ: &'static str;

    /// The thread the journal's commits run on, if they have one.
    fn journal_thread(writer: &Self::Writer) -> Option<actix::ArbiterHandle>;
}

impl Dialect for Sqlite {
    /// On a thread of its own (see `journal::sqlite`).
    type Writer = SqliteWriter;

    /// Deferred: in WAL mode its first read takes the snapshot the rest
    /// share.
    const SNAPSHOT_READ: &'static str = "BEGIN";

    fn journal_thread(writer: &SqliteWriter) -> Option<actix::ArbiterHandle> {
        Some(writer.thread())
    }
}

impl Dialect for Postgres {
    /// A connection, not a pool (see `journal::postgres`).
    type Writer = PgWriter;

    /// Read committed, Postgres's default, takes a snapshot per statement.
    const SNAPSHOT_READ: &'static str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";

    fn journal_thread(_: &PgWriter) -> Option<actix::ArbiterHandle> {
        None
    }
}

/// A database of either backend.
pub struct SqlStore<DB: Dialect> {
    /// Requests' queries and account writes.
    pool: Pool<DB>,
    /// What the server does on a timer: the outbox relay, purges, the
    /// offer clock, cluster membership and leases (and the admin routes
    /// that read the outbox and the cluster). Kept apart because a pool
    /// hands out its least recently used connection: a poll every 100 ms
    /// through the requests' pool would touch each of its connections
    /// every few seconds, so none would ever sit idle long enough to be
    /// closed, and the pool would keep its peak size (and SQLite page
    /// caches) for good.
    background: Pool<DB>,
    /// The journal's connection.
    writer: DB::Writer,
}

impl<DB: Dialect> SqlStore<DB> {
    pub fn new(pool: Pool<DB>, background: Pool<DB>, writer: DB::Writer) -> Self {
        Self {
            pool,
            background,
            writer,
        }
    }
}

/// Rows per multi-row INSERT: well under both backends' bind-parameter limits.
const CHUNK: usize = 500;

const EVENT_COLUMNS: &str = "e.id, e.owner_id, e.venue_id, e.title, e.description, e.starts_at, \
     e.ends_at, e.capacity, e.status, e.active_count, e.offered_count, e.waitlist_count, \
     e.waitlist_mode, e.offer_hold_secs, e.max_party, e.waitlist_fill, e.version, e.created_at, \
     e.updated_at";

/// The statuses of a member who holds or awaits a place, for
/// `status IN` in a statement's text: a user's live places, the members a
/// cancellation ends, the joins the recommendations load.
macro_rules! live_statuses {
    () => {
        "('active', 'offered', 'waitlisted')"
    };
}
pub(crate) use live_statuses;

/// Waitlist position of membership row `j`: its rank among the waiters.
const POSITION: &str = "CASE WHEN j.status = 'waitlisted' THEN (SELECT COUNT(*) FROM joins w \
     WHERE w.event_id = j.event_id AND w.status = 'waitlisted' AND w.order_key <= j.order_key) END";

macro_rules! impl_store {
    ($db:ty) => {
        #[async_trait]
        impl Store for SqlStore<$db> {
            fn journal_thread(&self) -> Option<actix::ArbiterHandle> {
                <$db as Dialect>::journal_thread(&self.writer)
            }

            fn connections(&self) -> [PoolConnections; 2] {
                let count = |name, pool: &Pool<$db>| PoolConnections {
                    pool: name,
                    open: pool.size(),
                    idle: pool.num_idle(),
                };
                [
                    count("requests", &self.pool),
                    count("background", &self.background),
                ]
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1")
                    .execute(&self.pool)
                    .await
                    .map_err(unavailable)?;
                Ok(())
            }

            async fn purge_expired_replies(
                &self,
                now: DateTime<Utc>,
                limit: i64,
            ) -> Result<u64, StoreError> {
                self.purge(
                    "DELETE FROM idempotency_keys WHERE (user_id, key) IN (SELECT user_id, key \
                     FROM idempotency_keys WHERE expires_at <= $1 LIMIT $2)",
                    micros(now),
                    limit,
                )
                .await
            }
        }

        impl SqlStore<$db> {
            /// Runs one batch of a purge: `statement` deletes up to `$2`
            /// rows past the bound `$1`.
            async fn purge(
                &self,
                statement: &'static str,
                bound: i64,
                limit: i64,
            ) -> Result<u64, StoreError> {
                let done = sqlx::query(statement)
                    .bind(bound)
                    .bind(limit)
                    .execute(&self.background)
                    .await
                    .map_err(unavailable)?;
                Ok(done.rows_affected())
            }
        }
    };
}

impl_store!(Sqlite);
impl_store!(Postgres);

#[cfg(test)]
mod tests {
    use turnout_actors::domain::MemberStatus;

    /// Whether a member holds or awaits a place: a status added later must
    /// be decided here before this compiles.
    fn holds_or_awaits(status: MemberStatus) -> bool {
        match status {
            MemberStatus::Active | MemberStatus::Offered | MemberStatus::Waitlisted => true,
            MemberStatus::Left
            | MemberStatus::Declined
            | MemberStatus::Expired
            | MemberStatus::Cancelled => false,
        }
    }

    #[test]
    fn the_live_statuses_are_those_that_hold_or_await_a_place() {
        let live = [
            MemberStatus::Active,
            MemberStatus::Offered,
            MemberStatus::Waitlisted,
            MemberStatus::Left,
            MemberStatus::Declined,
            MemberStatus::Expired,
            MemberStatus::Cancelled,
        ]
        .into_iter()
        .filter(|status| holds_or_awaits(*status))
        .map(|status| format!("'{}'", status.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
        assert_eq!(live_statuses!(), format!("({live})"));
    }
}
