//! The one SQL implementation of the store ports, for SQLite and for
//! Postgres, split by what it persists: `journal` (the group commit behind
//! [`EventStore`]), `accounts`, `venues`, `reads` (the read models'
//! queries), `membership` (the cluster's nodes) and `relay` (outbox, inbox
//! and leases). Each file instantiates its impls
//! for both databases with a small macro: the statements are the same, only
//! the driver types differ; the few that differ (the journal's bulk writes)
//! are written per database in `journal::bulk`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Pool, Postgres, Sqlite};
use turnout_actors::store::StoreError;

use super::{Store, micros, unavailable};

mod accounts;
mod journal;
mod membership;
mod reads;
mod relay;
mod venues;

/// A database of either backend.
pub struct SqlStore<DB: sqlx::Database> {
    /// Queries and account writes.
    pool: Pool<DB>,
    /// The journal's own connection: group commits never queue behind a
    /// burst of reads for a pooled connection.
    commit_pool: Pool<DB>,
}

impl<DB: sqlx::Database> SqlStore<DB> {
    pub fn new(pool: Pool<DB>, commit_pool: Pool<DB>) -> Self {
        Self { pool, commit_pool }
    }
}

/// Rows per multi-row INSERT: well under both backends' bind-parameter limits.
const CHUNK: usize = 500;

const EVENT_COLUMNS: &str = "e.id, e.owner_id, e.venue_id, e.title, e.description, e.starts_at, \
     e.ends_at, e.capacity, e.status, e.active_count, e.waitlist_count, e.version, e.created_at, \
     e.updated_at";

/// Waitlist position of membership row `j`: its rank among the waiters.
const POSITION: &str = "CASE WHEN j.status = 'waitlisted' THEN (SELECT COUNT(*) FROM joins w \
     WHERE w.event_id = j.event_id AND w.status = 'waitlisted' AND w.order_key <= j.order_key) END";

macro_rules! impl_store {
    ($db:ty) => {
        #[async_trait]
        impl Store for SqlStore<$db> {
            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1")
                    .execute(&self.pool)
                    .await
                    .map_err(unavailable)?;
                Ok(())
            }

            async fn purge_expired_replies(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
                let done = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= $1")
                    .bind(micros(now))
                    .execute(&self.pool)
                    .await
                    .map_err(unavailable)?;
                Ok(done.rows_affected())
            }
        }
    };
}

impl_store!(Sqlite);
impl_store!(Postgres);
