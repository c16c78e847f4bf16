//! The outbox relay's rows and lease, and the inbox that makes consumers
//! idempotent (with the daily-facts consumer's counts).

use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;
use chrono::Utc;
use rusqlite::{OptionalExtension, TransactionBehavior};
use sqlx::{Postgres, QueryBuilder, Sqlite};
use turnout_actors::store::StoreError;
use uuid::Uuid;

use super::{CHUNK, SqlStore};
use crate::store::{DailyFact, OutboxMessage, OutboxRelay, OutboxStatus, micros, unavailable};

/// Adds `$3` facts to the count of day `$1` and kind `$2` (SQLite numbers
/// `$n` in order of first use, so rusqlite binds it by position too).
const ADD_DAILY_FACTS: &str = "INSERT INTO daily_facts (day, event_type, facts) \
     VALUES ($1, $2, $3) ON CONFLICT (day, event_type) DO UPDATE SET facts = daily_facts.facts + $3";

/// Takes or renews lease `$1` for holder `$2` until `$3`, if the holder
/// has it or it ran out before `$4` (the database's time now); its epoch,
/// or no row when another holder's lease runs. Renewed, the epoch stays;
/// taken by another holder, it rises, to `$4` at least (see migration 0020).
const TAKE_LEASE: &str = "INSERT INTO leases (name, holder, expires_at, epoch) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at, \
     epoch = CASE WHEN leases.holder = excluded.holder THEN leases.epoch \
                  WHEN leases.epoch + 1 > excluded.epoch THEN leases.epoch + 1 \
                  ELSE excluded.epoch END \
     WHERE leases.holder = excluded.holder OR leases.expires_at < $4 \
     RETURNING epoch";

/// The inbox name of the daily-facts consumer.
const DAILY_FACTS_HANDLER: &str = "daily-facts";

macro_rules! impl_relay {
    ($db:ty) => {
        impl SqlStore<$db> {
            /// The inbox: records that `handler` has these messages and
            /// names the ones it had not seen before, so a consumer applies
            /// each message once however often it is delivered. Call it in
            /// the transaction of the handler's effect. One statement per
            /// chunk: a statement per message would cost a hop to the
            /// database's thread each.
            async fn first_deliveries(
                tx: &mut sqlx::Transaction<'_, $db>,
                message_ids: &[Uuid],
                handler: &str,
            ) -> Result<HashSet<Uuid>, sqlx::Error> {
                let now = micros(Utc::now());
                let mut first = HashSet::with_capacity(message_ids.len());
                for chunk in message_ids.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(
                        "INSERT INTO inbox (message_id, handler, processed_at) ",
                    );
                    q.push_values(chunk, |mut b, id| {
                        b.push_bind(*id).push_bind(handler).push_bind(now);
                    });
                    q.push(" ON CONFLICT DO NOTHING RETURNING message_id");
                    let new: Vec<(Uuid,)> = q.build_query_as().fetch_all(&mut **tx).await?;
                    first.extend(new.into_iter().map(|(id,)| id));
                }
                Ok(first)
            }

            /// Adds `new` facts to each `(day, event_type)`'s count.
            async fn add_daily_facts(
                tx: &mut sqlx::Transaction<'_, $db>,
                new: &BTreeMap<(&str, &str), i64>,
            ) -> Result<(), sqlx::Error> {
                for ((day, event_type), facts) in new {
                    sqlx::query(ADD_DAILY_FACTS)
                    .bind(*day)
                    .bind(*event_type)
                    .bind(*facts)
                    .execute(&mut **tx)
                    .await?;
                }
                Ok(())
            }
        }

        #[async_trait]
        impl OutboxRelay for SqlStore<$db> {
            async fn take_lease(&self, name: &str, holder: &str, now: i64, ttl_micros: i64) -> Result<Option<i64>, StoreError> {
                self.lease(name, holder, now + ttl_micros, now).await
            }

            async fn outbox(&self, status: OutboxStatus, after: i64, limit: i64) -> Result<Vec<OutboxMessage>, StoreError> {
                self.outbox_rows(status, after, limit).await
            }

            async fn outbox_published(&self, ids: &[i64], now: i64) -> Result<(), StoreError> {
                if ids.is_empty() {
                    return Ok(());
                }
                self.publish(ids, now).await
            }

            async fn outbox_failed(
                &self,
                id: i64,
                attempts: i64,
                next_attempt_at: i64,
                error: &str,
                dead: bool,
            ) -> Result<bool, StoreError> {
                let recorded = sqlx::query(
                    "UPDATE outbox SET attempts = $1, next_attempt_at = $2, last_error = $3, status = $4 \
                     WHERE id = $5 AND status = 'pending'",
                )
                .bind(attempts)
                .bind(next_attempt_at)
                .bind(error)
                .bind(if dead { "dead" } else { "pending" })
                .bind(id)
                .execute(&self.background)
                .await
                .map_err(unavailable)?;
                Ok(recorded.rows_affected() == 1)
            }

            async fn replay_outbox(&self, id: i64) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = 0, last_error = NULL \
                     WHERE id = $1 AND status = 'dead'",
                )
                .bind(id)
                .execute(&self.background)
                .await
                .map_err(unavailable)?;
                Ok(done.rows_affected() == 1)
            }

            async fn outbox_counts(&self) -> Result<(i64, i64), StoreError> {
                let (pending,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE status = 'pending'")
                    .fetch_one(&self.background)
                    .await
                    .map_err(unavailable)?;
                let (dead,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE status = 'dead'")
                    .fetch_one(&self.background)
                    .await
                    .map_err(unavailable)?;
                Ok((pending, dead))
            }

            async fn purge_published_outbox(&self, before: i64, limit: i64) -> Result<u64, StoreError> {
                // The newest row stays, whatever its age: SQLite numbers a new
                // row after the largest id present, so the outbox ids that
                // consumers see never go back.
                self.purge(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox \
                     WHERE status = 'published' AND published_at < $1 \
                     AND id < (SELECT max(id) FROM outbox) LIMIT $2)",
                    before,
                    limit,
                )
                .await
            }

            async fn purge_inbox(&self, before: i64, limit: i64) -> Result<u64, StoreError> {
                self.purge(
                    "DELETE FROM inbox WHERE (message_id, handler) IN (SELECT message_id, handler \
                     FROM inbox WHERE processed_at < $1 LIMIT $2)",
                    before,
                    limit,
                )
                .await
            }

            async fn count_daily_facts(&self, facts: &[DailyFact]) -> Result<usize, StoreError> {
                let mut tx = self.background.begin().await.map_err(unavailable)?;
                let ids: Vec<Uuid> = facts.iter().map(|fact| fact.message_id).collect();
                let mut first = Self::first_deliveries(&mut tx, &ids, DAILY_FACTS_HANDLER)
                    .await
                    .map_err(unavailable)?;
                let mut new: BTreeMap<(&str, &str), i64> = Default::default();
                for fact in facts {
                    // `remove`: a message repeated within the batch counts once.
                    if first.remove(&fact.message_id) {
                        *new.entry((&fact.day, &fact.event_type)).or_default() += 1;
                    }
                }
                Self::add_daily_facts(&mut tx, &new).await.map_err(unavailable)?;
                tx.commit().await.map_err(unavailable)?;
                Ok(new.values().sum::<i64>() as usize)
            }

            async fn count_daily_facts_and_publish(
                &self,
                rows: &[(i64, DailyFact)],
                now: i64,
            ) -> Result<usize, StoreError> {
                self.publish_counting(rows, now).await
            }

            async fn daily_facts(&self, since_day: &str) -> Result<Vec<(String, String, i64)>, StoreError> {
                sqlx::query_as(
                    "SELECT day, event_type, facts FROM daily_facts WHERE day >= $1 ORDER BY day, event_type",
                )
                .bind(since_day)
                .fetch_all(&self.background)
                .await
                .map_err(unavailable)
            }
        }
    };
}

impl_relay!(Sqlite);
impl_relay!(Postgres);

/// The relay's read of the outbox. The status is written into the
/// statement, not bound: only then can a prepared plan use the partial
/// index of that status. With `status = $1` Postgres's generic plan walked
/// the primary key from `after` through every published row on each poll,
/// and the relay's cost grew with the table.
fn select_outbox(status: OutboxStatus) -> &'static str {
    macro_rules! select_outbox {
        ($status:literal) => {
            concat!(
                "SELECT id, message_id, topic, aggregate_id, stream_version, event_type, \
                 CAST(payload AS TEXT) AS payload, request_id, traceparent, attempts, \
                 next_attempt_at, last_error, created_at \
                 FROM outbox WHERE status = '",
                $status,
                "' AND id > $1 ORDER BY id LIMIT $2"
            )
        };
    }
    match status {
        OutboxStatus::Pending => select_outbox!("pending"),
        OutboxStatus::Dead => select_outbox!("dead"),
    }
}

/// The facts of `rows` to add to each day's and kind's count: only rows
/// `marked` (taken from pending by this transaction) count, so a row
/// published already is not counted again.
fn daily_counts(
    rows: &[(i64, DailyFact)],
    marked: impl Fn(i64) -> bool,
) -> BTreeMap<(&str, &str), i64> {
    let mut new = BTreeMap::new();
    for (id, fact) in rows {
        if marked(*id) {
            *new.entry((fact.day.as_str(), fact.event_type.as_str()))
                .or_default() += 1;
        }
    }
    new
}

impl SqlStore<Postgres> {
    /// Marks the rows `ids` published, those still pending; returns
    /// which it marked.
    async fn mark_published(
        conn: &mut sqlx::PgConnection,
        ids: &[i64],
        now: i64,
    ) -> Result<HashSet<i64>, sqlx::Error> {
        let mut marked = HashSet::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let mut q = QueryBuilder::<Postgres>::new(
                "UPDATE outbox SET status = 'published', published_at = ",
            );
            q.push_bind(now)
                .push(" WHERE status = 'pending' AND id IN (");
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            q.push(") RETURNING id");
            let done: Vec<(i64,)> = q.build_query_as().fetch_all(&mut *conn).await?;
            marked.extend(done.into_iter().map(|(id,)| id));
        }
        Ok(marked)
    }

    async fn lease(
        &self,
        name: &str,
        holder: &str,
        until: i64,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar(TAKE_LEASE)
            .bind(name)
            .bind(holder)
            .bind(until)
            .bind(now)
            .fetch_optional(&self.background)
            .await
            .map_err(unavailable)
    }

    async fn outbox_rows(
        &self,
        status: OutboxStatus,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        sqlx::query_as(select_outbox(status))
            .bind(after)
            .bind(limit)
            .fetch_all(&self.background)
            .await
            .map_err(unavailable)
    }

    async fn publish(&self, ids: &[i64], now: i64) -> Result<(), StoreError> {
        let mut conn = self.background.acquire().await.map_err(unavailable)?;
        Self::mark_published(&mut conn, ids, now)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn publish_counting(
        &self,
        rows: &[(i64, DailyFact)],
        now: i64,
    ) -> Result<usize, StoreError> {
        let mut tx = self.background.begin().await.map_err(unavailable)?;
        let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
        let marked = Self::mark_published(&mut tx, &ids, now)
            .await
            .map_err(unavailable)?;
        let new = daily_counts(rows, |id| marked.contains(&id));
        Self::add_daily_facts(&mut tx, &new)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(marked.len())
    }
}

/// On SQLite the relay reads, marks and renews its lease through the
/// journal's connection (see `journal::sqlite`), a hand-off each way per
/// pass rather than one per row, and without costing the journal its page
/// cache.
impl SqlStore<Sqlite> {
    async fn lease(
        &self,
        name: &str,
        holder: &str,
        until: i64,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.writer
            .call(move |connection| {
                let mut take = connection.prepare_cached(TAKE_LEASE)?;
                take.query_row(rusqlite::params![name, holder, until, now], |row| {
                    row.get(0)
                })
                .optional()
            })
            .await
    }

    async fn outbox_rows(
        &self,
        status: OutboxStatus,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        self.writer
            .call(move |connection| {
                let mut select = connection.prepare_cached(select_outbox(status))?;
                let rows = select.query_map(rusqlite::params![after, limit], |row| {
                    Ok(OutboxMessage {
                        id: row.get(0)?,
                        message_id: row.get(1)?,
                        topic: row.get(2)?,
                        aggregate_id: row.get(3)?,
                        stream_version: row.get(4)?,
                        event_type: row.get(5)?,
                        payload: row.get(6)?,
                        request_id: row.get(7)?,
                        traceparent: row.get(8)?,
                        attempts: row.get(9)?,
                        next_attempt_at: row.get(10)?,
                        last_error: row.get(11)?,
                        created_at: row.get(12)?,
                    })
                })?;
                rows.collect()
            })
            .await
    }

    async fn publish(&self, ids: &[i64], now: i64) -> Result<(), StoreError> {
        let ids = ids.to_vec();
        self.writer
            .call(move |connection| {
                let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
                mark_on_writer(&tx, ids.iter().copied(), now)?;
                tx.commit()
            })
            .await
    }

    async fn publish_counting(
        &self,
        rows: &[(i64, DailyFact)],
        now: i64,
    ) -> Result<usize, StoreError> {
        let rows = rows.to_vec();
        self.writer
            .call(move |connection| {
                let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let marked = mark_on_writer(&tx, rows.iter().map(|(id, _)| *id), now)?;
                {
                    let mut add = tx.prepare_cached(ADD_DAILY_FACTS)?;
                    for ((day, event_type), facts) in daily_counts(&rows, |id| marked.contains(&id))
                    {
                        add.execute(rusqlite::params![day, event_type, facts])?;
                    }
                }
                tx.commit()?;
                Ok(marked.len())
            })
            .await
    }
}

/// Marks the rows `ids` published, those still pending; returns which it
/// marked. A prepared statement per row costs nothing on the writer's
/// thread (no hand-off per statement, as through sqlx).
fn mark_on_writer(
    tx: &rusqlite::Transaction<'_>,
    ids: impl Iterator<Item = i64>,
    now: i64,
) -> rusqlite::Result<HashSet<i64>> {
    let mut mark = tx.prepare_cached(
        "UPDATE outbox SET status = 'published', published_at = ?1 \
         WHERE id = ?2 AND status = 'pending'",
    )?;
    let mut marked = HashSet::new();
    for id in ids {
        if mark.execute(rusqlite::params![now, id])? == 1 {
            marked.insert(id);
        }
    }
    Ok(marked)
}
