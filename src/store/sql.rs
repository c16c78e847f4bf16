//! The one SQL implementation of [`Store`] and [`EventStore`], instantiated
//! for SQLite and for Postgres by `impl_store!`: the statements are the same,
//! only the driver types differ.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{Pool, Postgres, QueryBuilder, Sqlite};
use turnout_actors::domain::{
    EventId, EventState, MemberStatus, StoredEvent, UserId, VenueId, current_schema_version,
};
use turnout_actors::idempotency::{Answer, Given};
use turnout_actors::store::{
    Append, CommitReport, EventStore, IdempotencyRecord, MembershipRow, Rehydration, StoreError,
    membership_rows,
};
use uuid::Uuid;

use super::{
    DailyFact, EventFilter, EventRecord, MembershipRecord, OutboxMessage, OutboxStatus, Store,
    UserRecord, VenueRecord, micros, unavailable,
};

/// The inbox name of the daily-facts consumer.
const DAILY_FACTS_HANDLER: &str = "daily-facts";

/// A database of either backend.
pub struct SqlStore<DB: sqlx::Database> {
    /// Queries and account writes.
    pool: Pool<DB>,
    /// The journal's own connection: group commits never queue behind a
    /// burst of reads for a pooled connection.
    journal: Pool<DB>,
}

impl<DB: sqlx::Database> SqlStore<DB> {
    pub fn new(pool: Pool<DB>, journal: Pool<DB>) -> Self {
        Self { pool, journal }
    }
}

/// Rows per multi-row INSERT: well under both backends' bind-parameter limits.
const CHUNK: usize = 500;

/// A key's answer is written once; a row still there after it expired (the
/// purge runs on an interval) is replaced, not left to shadow the new one.
/// Expired as of the commit's time, which the caller binds after it, the
/// same time the batch's check for answered keys used. (A macro, so that it
/// joins the Postgres statement's literal.)
macro_rules! idempotency_upsert {
    () => {
        " ON CONFLICT (user_id, key) DO UPDATE SET fingerprint = excluded.fingerprint, \
         answer = excluded.answer, \
         created_at = excluded.created_at, expires_at = excluded.expires_at \
         WHERE idempotency_keys.expires_at <= "
    };
}

/// Which of the facts `x` (stream `s`, version `v`) may be appended: the
/// first of its stream, one whose predecessor is in the same batch
/// (`after_own`, known when the rows are built), or one whose predecessor is
/// in the log. The primary key refuses a version taken twice; this refuses
/// one that skips a version, decided on top of a fact never written, so the
/// log never has a gap. (A macro, so that `concat!` can take it.)
macro_rules! follows {
    () => {
        " FROM x WHERE x.v = 1 OR x.after_own \
         OR EXISTS (SELECT 1 FROM event_log l WHERE l.stream_id = x.s AND l.version = x.v - 1)"
    };
}

const EVENT_COLUMNS: &str = "e.id, e.owner_id, e.venue_id, e.title, e.description, e.starts_at, \
     e.ends_at, e.capacity, e.status, e.active_count, e.waitlist_count, e.version, e.created_at, \
     e.updated_at";

/// Waitlist position of membership row `j`: its rank among the waiters.
const POSITION: &str = "CASE WHEN j.status = 'waitlisted' THEN (SELECT COUNT(*) FROM joins w \
     WHERE w.event_id = j.event_id AND w.status = 'waitlisted' AND w.order_key <= j.order_key) END";

/// One fact for the event log; the payload is JSON text. Each fact of a
/// commit is encoded once, here, and its outbox row is made from this one.
struct LogRow {
    stream: Uuid,
    version: i64,
    event_type: &'static str,
    schema_version: i64,
    payload: String,
    request_id: Option<String>,
    /// The fact before it is in the same batch (see `follows!`).
    after_own: bool,
}

impl LogRow {
    fn of_batch(live: &[&Append]) -> Vec<Self> {
        let facts: HashSet<(EventId, i64)> = live
            .iter()
            .flat_map(|a| a.versioned().map(|(version, _)| (a.stream, version)))
            .collect();
        live.iter()
            .flat_map(|a| {
                let facts = &facts;
                a.versioned().map(move |(version, e)| LogRow {
                    stream: a.stream.as_uuid(),
                    version,
                    event_type: e.kind(),
                    schema_version: i64::from(current_schema_version(e.kind())),
                    payload: StoredEvent::encode_text(e),
                    request_id: a.request_id.clone(),
                    after_own: facts.contains(&(a.stream, version - 1)),
                })
            })
            .collect()
    }

    /// The fact's outbox row: what the relay publishes, with the payload
    /// `{"schema_version": …, "event": …}`.
    fn outbox(&self) -> OutboxRow {
        OutboxRow {
            message_id: Uuid::now_v7(),
            aggregate: self.stream,
            version: self.version,
            event_type: self.event_type,
            payload: format!(
                r#"{{"schema_version":{},"event":{}}}"#,
                self.schema_version, self.payload
            ),
            request_id: self.request_id.clone(),
        }
    }
}

/// A stored answer: user, key, fingerprint, answer (JSON text).
type AnswerRow = (Uuid, String, String, String);

/// A stored answer, by the user and key it was given under.
fn stored_answer(
    (user, key, fingerprint, answer): AnswerRow,
) -> Result<((Uuid, String), Given), sqlx::Error> {
    let answer: Answer =
        serde_json::from_str(&answer).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok((
        (user, key),
        Given {
            fingerprint,
            answer,
        },
    ))
}

fn answer_json(answer: &Answer) -> String {
    serde_json::to_string(answer).expect("an answer serialises")
}

/// One outbox message; the payload is JSON text.
struct OutboxRow {
    message_id: Uuid,
    aggregate: Uuid,
    version: i64,
    event_type: &'static str,
    payload: String,
    request_id: Option<String>,
}

/// SQLite's bulk writes: multi-row `VALUES`, which SQLite compiles cheaply.
impl SqlStore<Sqlite> {
    /// The journal's transaction takes the write lock up front: a deferred
    /// transaction that reads first fails at once (SQLITE_BUSY) when another
    /// connection wrote in between, instead of waiting its turn.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Sqlite>, sqlx::Error> {
        self.journal.begin_with("BEGIN IMMEDIATE").await
    }

    async fn insert_log(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        rows: &[LogRow],
        now: i64,
    ) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
        let mut q = QueryBuilder::<Sqlite>::new("WITH x (s, v, t, sv, p, r, after_own) AS (");
        q.push_values(rows, |mut b, r| {
            b.push_bind(r.stream)
                .push_bind(r.version)
                .push_bind(r.event_type)
                .push_bind(r.schema_version)
                .push_bind(r.payload.clone())
                .push_bind(r.request_id.clone())
                .push_bind(r.after_own);
        });
        q.push(
            ") INSERT INTO event_log (stream_id, version, event_type, schema_version, payload, \
             request_id, recorded_at) SELECT s, v, t, sv, p, r, ",
        );
        q.push_bind(now);
        q.push(follows!());
        q.push(" ON CONFLICT DO NOTHING RETURNING stream_id, version");
        q.build_query_as().fetch_all(&mut **tx).await
    }

    async fn select_answers(
        conn: &mut sqlx::SqliteConnection,
        keys: &[(Uuid, String)],
        now: i64,
    ) -> Result<Vec<AnswerRow>, sqlx::Error> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT user_id, key, fingerprint, answer FROM idempotency_keys \
             WHERE expires_at > ",
        );
        q.push_bind(now).push(" AND (user_id, key) IN (VALUES ");
        let mut pairs = q.separated(", ");
        for (user, key) in keys {
            pairs
                .push("(")
                .push_bind_unseparated(*user)
                .push_unseparated(", ");
            pairs
                .push_bind_unseparated(key.clone())
                .push_unseparated(")");
        }
        q.push(")");
        q.build_query_as().fetch_all(conn).await
    }

    async fn upsert_joins(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        rows: &[MembershipRow],
    ) -> Result<(), sqlx::Error> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO joins (event_id, user_id, status, order_key, joined_at, updated_at) ",
        );
        q.push_values(rows, |mut b, r| {
            b.push_bind(r.event_id.as_uuid())
                .push_bind(r.user_id.as_uuid())
                .push_bind(r.status.as_str())
                .push_bind(r.order_key)
                .push_bind(micros(r.joined_at))
                .push_bind(micros(r.updated_at));
        });
        q.push(JOINS_UPSERT);
        q.build().execute(&mut **tx).await.map(drop)
    }

    async fn insert_replies(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        rows: &[&IdempotencyRecord],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO idempotency_keys (user_id, key, fingerprint, answer, created_at, expires_at) ",
        );
        q.push_values(rows, |mut b, r| {
            b.push_bind(r.user.as_uuid())
                .push_bind(r.key.clone())
                .push_bind(r.fingerprint.clone())
                .push_bind(answer_json(&r.answer))
                .push_bind(micros(r.created_at))
                .push_bind(micros(r.expires_at));
        });
        q.push(idempotency_upsert!()).push_bind(now);
        q.build().execute(&mut **tx).await.map(drop)
    }

    async fn insert_outbox(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        rows: &[OutboxRow],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO outbox (message_id, topic, aggregate_id, stream_version, event_type, \
             payload, request_id, next_attempt_at, created_at) ",
        );
        q.push_values(rows, |mut b, r| {
            b.push_bind(r.message_id)
                .push_bind("events")
                .push_bind(r.aggregate)
                .push_bind(r.version)
                .push_bind(r.event_type)
                .push_bind(r.payload.clone())
                .push_bind(r.request_id.clone())
                .push_bind(now)
                .push_bind(now);
        });
        q.build().execute(&mut **tx).await.map(drop)
    }
}

/// Postgres's bulk writes: one statement per table over `UNNEST`ed arrays,
/// prepared once whatever the batch size (a multi-row `VALUES` is a new
/// statement to parse and plan for every size).
impl SqlStore<Postgres> {
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
        self.journal.begin().await
    }

    async fn insert_log(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        rows: &[LogRow],
        now: i64,
    ) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
        sqlx::query_as(concat!(
            "WITH x (s, v, t, sv, p, r, after_own) AS (SELECT * FROM UNNEST($1::uuid[], \
             $2::int8[], $3::text[], $4::int8[], $5::text[], $6::text[], $7::bool[])) \
             INSERT INTO event_log (stream_id, version, event_type, schema_version, payload, \
             request_id, recorded_at) SELECT s, v, t, sv, p::jsonb, r, $8",
            follows!(),
            " ON CONFLICT DO NOTHING RETURNING stream_id, version"
        ))
        .bind(rows.iter().map(|r| r.stream).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.event_type).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.schema_version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.payload.clone()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.request_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.after_own).collect::<Vec<_>>())
        .bind(now)
        .fetch_all(&mut **tx)
        .await
    }

    async fn select_answers(
        conn: &mut sqlx::PgConnection,
        keys: &[(Uuid, String)],
        now: i64,
    ) -> Result<Vec<AnswerRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT i.user_id, i.key, i.fingerprint, i.answer::text \
             FROM idempotency_keys i \
             JOIN UNNEST($1::uuid[], $2::text[]) AS x(u, k) ON i.user_id = x.u AND i.key = x.k \
             WHERE i.expires_at > $3",
        )
        .bind(keys.iter().map(|(u, _)| *u).collect::<Vec<_>>())
        .bind(keys.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>())
        .bind(now)
        .fetch_all(conn)
        .await
    }

    async fn upsert_joins(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        rows: &[MembershipRow],
    ) -> Result<(), sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO joins (event_id, user_id, status, order_key, joined_at, updated_at) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int8[], $5::int8[], $6::int8[]){JOINS_UPSERT}"
        )))
        .bind(rows.iter().map(|r| r.event_id.as_uuid()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.user_id.as_uuid()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.order_key).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| micros(r.joined_at)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| micros(r.updated_at)).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await
        .map(drop)
    }

    async fn insert_replies(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        rows: &[&IdempotencyRecord],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(concat!(
            "INSERT INTO idempotency_keys (user_id, key, fingerprint, answer, created_at, expires_at) \
             SELECT u, k, f, a::jsonb, ca, ea \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[]) \
               AS x(u, k, f, a, ca, ea)",
            idempotency_upsert!(),
            "$7"
        ))
        .bind(rows.iter().map(|r| r.user.as_uuid()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.key.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.fingerprint.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| answer_json(&r.answer)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| micros(r.created_at)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| micros(r.expires_at)).collect::<Vec<_>>())
        .bind(now)
        .execute(&mut **tx)
        .await
        .map(drop)
    }

    async fn insert_outbox(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        rows: &[OutboxRow],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO outbox (message_id, topic, aggregate_id, stream_version, event_type, \
             payload, request_id, next_attempt_at, created_at) \
             SELECT m, 'events', a, v, t, p::jsonb, r, $7, $7 \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::text[], $5::text[], $6::text[]) \
               AS x(m, a, v, t, p, r)",
        )
        .bind(rows.iter().map(|r| r.message_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.aggregate).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.event_type).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.payload.clone()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.request_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(now)
        .execute(&mut **tx)
        .await
        .map(drop)
    }
}

/// The rows of one batch are distinct per (event, user), so an upsert never
/// touches a row twice.
const JOINS_UPSERT: &str = " ON CONFLICT (event_id, user_id) DO UPDATE SET status = excluded.status, \
     order_key = excluded.order_key, joined_at = excluded.joined_at, updated_at = excluded.updated_at";

macro_rules! impl_store {
    ($db:ty) => {
        impl SqlStore<$db> {
            /// Appends every stream's facts; returns the streams of which a
            /// fact was not written: its version taken by another writer, or
            /// not following the one before it (see `follows!`).
            async fn append_log(
                tx: &mut sqlx::Transaction<'_, $db>,
                rows: &[LogRow],
                now: i64,
            ) -> Result<HashSet<EventId>, sqlx::Error> {
                let mut written: HashSet<(Uuid, i64)> = HashSet::with_capacity(rows.len());
                for chunk in rows.chunks(CHUNK) {
                    written.extend(Self::insert_log(tx, chunk, now).await?);
                }
                Ok(rows
                    .iter()
                    .filter(|r| !written.contains(&(r.stream, r.version)))
                    .map(|r| EventId::from(r.stream))
                    .collect())
            }

            /// The appends without facts (a keyed command that changed
            /// nothing) decided on a version that is no longer the stream's
            /// latest. They write no log row, so the log's own checks cannot
            /// catch them; answered as they are, they would acknowledge a
            /// state another writer has moved past.
            async fn stale_without_facts(
                tx: &mut sqlx::Transaction<'_, $db>,
                live: &[(usize, &Append)],
            ) -> Result<Vec<usize>, sqlx::Error> {
                let mut streams: Vec<Uuid> = live
                    .iter()
                    .filter(|(_, a)| a.events.is_empty())
                    .map(|(_, a)| a.stream.as_uuid())
                    .collect();
                if streams.is_empty() {
                    // The usual batch: every append carries facts.
                    return Ok(Vec::new());
                }
                streams.sort_unstable();
                streams.dedup();
                let mut latest: HashMap<Uuid, u64> = HashMap::with_capacity(streams.len());
                for chunk in streams.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(
                        "SELECT stream_id, MAX(version) FROM event_log WHERE stream_id IN (",
                    );
                    let mut ids = q.separated(", ");
                    for id in chunk {
                        ids.push_bind(*id);
                    }
                    q.push(") GROUP BY stream_id");
                    let rows: Vec<(Uuid, i64)> = q.build_query_as().fetch_all(&mut **tx).await?;
                    latest.extend(rows.into_iter().map(|(id, v)| (id, v as u64)));
                }
                for id in streams {
                    latest.entry(id).or_insert(0);
                }
                // Walk each stream's appends in order from its stored version.
                let mut stale = Vec::new();
                for (i, a) in live {
                    let Some(version) = latest.get_mut(&a.stream.as_uuid()) else {
                        continue;
                    };
                    if a.events.is_empty() && a.base_version != *version {
                        stale.push(*i);
                    }
                    *version = a.base_version + a.events.len() as u64;
                }
                Ok(stale)
            }

            /// The appends whose idempotency key already has an answer: stored
            /// (and unexpired), or taken by an earlier append of this batch.
            async fn answered_keys(
                tx: &mut sqlx::Transaction<'_, $db>,
                live: &[(usize, &Append)],
                now: i64,
            ) -> Result<Vec<(usize, Given)>, sqlx::Error> {
                let keyed: Vec<(usize, &IdempotencyRecord)> =
                    live.iter().filter_map(|(i, a)| a.idempotency.as_ref().map(|r| (*i, r))).collect();
                if keyed.is_empty() {
                    return Ok(Vec::new());
                }
                let keys: Vec<(Uuid, String)> = keyed.iter().map(|(_, r)| (r.user.as_uuid(), r.key.clone())).collect();
                let mut stored: HashMap<(Uuid, String), Given> = HashMap::new();
                for chunk in keys.chunks(CHUNK) {
                    for row in Self::select_answers(&mut **tx, chunk, now).await? {
                        let (key, answer) = stored_answer(row)?;
                        stored.insert(key, answer);
                    }
                }
                let mut answered = Vec::new();
                for (i, record) in keyed {
                    let key = (record.user.as_uuid(), record.key.clone());
                    match stored.get(&key) {
                        Some(answer) => answered.push((i, answer.clone())),
                        None => {
                            stored.insert(
                                key,
                                Given {
                                    fingerprint: record.fingerprint.clone(),
                                    answer: record.answer,
                                },
                            );
                        }
                    }
                }
                Ok(answered)
            }

            async fn write_read_models(
                tx: &mut sqlx::Transaction<'_, $db>,
                live: &[&Append],
                now: i64,
            ) -> Result<(), sqlx::Error> {
                // The event rows: the last summary of each stream wins.
                let mut latest: HashMap<EventId, usize> = HashMap::new();
                for (i, a) in live.iter().enumerate() {
                    latest.insert(a.stream, i);
                }
                let mut summaries: Vec<_> = latest.values().map(|&i| &live[i].summary).collect();
                summaries.sort_by_key(|s| s.id);
                for chunk in summaries.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(
                        "INSERT INTO events (id, owner_id, venue_id, title, description, starts_at, \
                         ends_at, capacity, status, active_count, waitlist_count, version, \
                         created_at, updated_at) ",
                    );
                    q.push_values(chunk, |mut b, s| {
                        b.push_bind(s.id.as_uuid())
                            .push_bind(s.owner.as_uuid())
                            .push_bind(s.details.venue_id.as_uuid())
                            .push_bind(s.details.title.as_str().to_owned())
                            .push_bind(s.details.description.as_ref().map(|d| d.as_str().to_owned()))
                            .push_bind(micros(s.details.starts_at))
                            .push_bind(s.details.ends_at.map(micros))
                            .push_bind(i64::from(s.capacity))
                            .push_bind(s.lifecycle.as_str())
                            .push_bind(s.active_count as i64)
                            .push_bind(s.waitlist_count as i64)
                            .push_bind(s.version as i64)
                            .push_bind(now)
                            .push_bind(now);
                    });
                    q.push(
                        " ON CONFLICT (id) DO UPDATE SET venue_id = excluded.venue_id, \
                         title = excluded.title, description = excluded.description, \
                         starts_at = excluded.starts_at, ends_at = excluded.ends_at, \
                         capacity = excluded.capacity, status = excluded.status, \
                         active_count = excluded.active_count, \
                         waitlist_count = excluded.waitlist_count, version = excluded.version, \
                         updated_at = excluded.updated_at WHERE events.version <= excluded.version",
                    );
                    q.build().execute(&mut **tx).await?;
                }

                for s in summaries.iter().filter(|s| {
                    live.iter().any(|a| a.stream == s.id && a.changes_details())
                }) {
                    sqlx::query("DELETE FROM event_tags WHERE event_id = $1")
                        .bind(s.id.as_uuid())
                        .execute(&mut **tx)
                        .await?;
                    if !s.details.tags.is_empty() {
                        let mut q = QueryBuilder::<$db>::new("INSERT INTO event_tags (tag, event_id) ");
                        q.push_values(&s.details.tags, |mut b, tag| {
                            b.push_bind(tag.as_str().to_owned()).push_bind(s.id.as_uuid());
                        });
                        q.build().execute(&mut **tx).await?;
                    }
                }

                let rows = membership_rows(live.iter().copied());
                for chunk in rows.chunks(CHUNK) {
                    Self::upsert_joins(tx, chunk).await?;
                }

                for a in live.iter().filter(|a| a.cancels()) {
                    sqlx::query(
                        "UPDATE joins SET status = 'cancelled', updated_at = $1 \
                         WHERE event_id = $2 AND status IN ('active', 'waitlisted')",
                    )
                    .bind(now)
                    .bind(a.stream.as_uuid())
                    .execute(&mut **tx)
                    .await?;
                }
                Ok(())
            }

            async fn write_side_records(
                tx: &mut sqlx::Transaction<'_, $db>,
                live: &[&Append],
                log: &[LogRow],
                now: i64,
            ) -> Result<(), sqlx::Error> {
                let mut snapshots: HashMap<EventId, &EventState> = HashMap::new();
                for a in live {
                    if let Some(s) = &a.snapshot {
                        snapshots.insert(a.stream, s);
                    }
                }
                let snapshots: Vec<_> = snapshots.into_values().collect();
                for chunk in snapshots.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(
                        "INSERT INTO snapshots (stream_id, version, state, taken_at) ",
                    );
                    q.push_values(chunk, |mut b, s| {
                        b.push_bind(s.id.as_uuid())
                            .push_bind(s.version as i64)
                            .push_bind(Json((*s).clone()))
                            .push_bind(now);
                    });
                    q.push(
                        " ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, \
                         state = excluded.state, taken_at = excluded.taken_at \
                         WHERE snapshots.version <= excluded.version",
                    );
                    q.build().execute(&mut **tx).await?;
                }

                let records: Vec<&IdempotencyRecord> = live
                    .iter()
                    .filter_map(|a| a.idempotency.as_ref())
                    .filter(|r| r.keep)
                    .collect();
                for chunk in records.chunks(CHUNK) {
                    Self::insert_replies(tx, chunk, now).await?;
                }

                let outbox: Vec<OutboxRow> = log.iter().map(LogRow::outbox).collect();
                for chunk in outbox.chunks(CHUNK) {
                    Self::insert_outbox(tx, chunk, now).await?;
                }
                Ok(())
            }

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

            async fn tags_for(&self, events: &mut [EventRecord]) -> Result<(), StoreError> {
                if events.is_empty() {
                    return Ok(());
                }
                let mut q = QueryBuilder::<$db>::new("SELECT event_id, tag FROM event_tags WHERE event_id IN (");
                let mut ids = q.separated(", ");
                for e in events.iter() {
                    ids.push_bind(e.id);
                }
                q.push(") ORDER BY tag");
                let rows: Vec<(Uuid, String)> =
                    q.build_query_as().fetch_all(&self.pool).await.map_err(unavailable)?;
                let mut by_event: HashMap<Uuid, Vec<String>> = HashMap::new();
                for (id, tag) in rows {
                    by_event.entry(id).or_default().push(tag);
                }
                for e in events.iter_mut() {
                    e.tags = by_event.remove(&e.id).unwrap_or_default();
                }
                Ok(())
            }
        }

        #[async_trait]
        impl EventStore for SqlStore<$db> {
            async fn load(&self, stream: EventId) -> Result<Rehydration, StoreError> {
                let snapshot: Option<(i64, Json<serde_json::Value>)> =
                    sqlx::query_as("SELECT version, state FROM snapshots WHERE stream_id = $1")
                        .bind(stream.as_uuid())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(unavailable)?;
                // A snapshot this build cannot read is skipped: the log is the truth.
                let snapshot = snapshot.and_then(|(version, Json(state))| {
                    match serde_json::from_value::<EventState>(state) {
                        Ok(state) if state.version as i64 == version => Some(state),
                        _ => {
                            tracing::warn!(%stream, version, "ignoring unreadable snapshot");
                            None
                        }
                    }
                });
                let after = snapshot.as_ref().map_or(0, |s| s.version as i64);
                let rows: Vec<(String, i64, Json<serde_json::Value>)> = sqlx::query_as(
                    "SELECT event_type, schema_version, payload FROM event_log \
                     WHERE stream_id = $1 AND version > $2 ORDER BY version",
                )
                .bind(stream.as_uuid())
                .bind(after)
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
                let events = rows
                    .into_iter()
                    .map(|(event_type, schema_version, Json(payload))| StoredEvent {
                        event_type,
                        schema_version: schema_version as i32,
                        payload,
                    })
                    .collect();
                Ok(Rehydration { snapshot, events })
            }

            async fn stored_answer(
                &self,
                user: UserId,
                key: &str,
            ) -> Result<Option<Given>, StoreError> {
                let mut conn = self.pool.acquire().await.map_err(unavailable)?;
                let rows = Self::select_answers(&mut conn, &[(user.as_uuid(), key.to_owned())], micros(Utc::now()))
                    .await
                    .map_err(unavailable)?;
                rows.into_iter()
                    .next()
                    .map(|row| stored_answer(row).map(|(_, given)| given))
                    .transpose()
                    .map_err(unavailable)
            }

            async fn commit(&self, batch: &[Append]) -> Result<CommitReport, StoreError> {
                let now = micros(Utc::now());
                let mut report = CommitReport::default();
                let mut left_out: HashSet<usize> = HashSet::new();
                loop {
                    let live: Vec<(usize, &Append)> =
                        batch.iter().enumerate().filter(|(i, _)| !left_out.contains(i)).collect();
                    if live.is_empty() {
                        break;
                    }
                    let mut tx = self.begin_write().await.map_err(unavailable)?;
                    // Keys answered before: those appends are replays.
                    let answered = Self::answered_keys(&mut tx, &live, now).await.map_err(unavailable)?;
                    if !answered.is_empty() {
                        tx.rollback().await.map_err(unavailable)?;
                        for (i, answer) in answered {
                            left_out.insert(i);
                            if !batch[i].events.is_empty() {
                                // Later appends of the stream stood on it.
                                for (j, later) in batch.iter().enumerate().skip(i + 1) {
                                    if later.stream == batch[i].stream && left_out.insert(j) {
                                        report.conflicted.push(j);
                                    }
                                }
                            }
                            report.replayed.push((i, answer));
                        }
                        continue;
                    }
                    let stale = Self::stale_without_facts(&mut tx, &live).await.map_err(unavailable)?;
                    if !stale.is_empty() {
                        tx.rollback().await.map_err(unavailable)?;
                        for i in stale {
                            if left_out.insert(i) {
                                report.conflicted.push(i);
                            }
                        }
                        continue;
                    }
                    let appends: Vec<&Append> = live.iter().map(|(_, a)| *a).collect();
                    let log = LogRow::of_batch(&appends);
                    let lost = Self::append_log(&mut tx, &log, now).await.map_err(unavailable)?;
                    if !lost.is_empty() {
                        // Retry without the streams that lost the race; their
                        // actors reload and decide again.
                        tx.rollback().await.map_err(unavailable)?;
                        for (i, a) in &live {
                            if lost.contains(&a.stream) && left_out.insert(*i) {
                                report.conflicted.push(*i);
                            }
                        }
                        continue;
                    }
                    Self::write_read_models(&mut tx, &appends, now).await.map_err(unavailable)?;
                    Self::write_side_records(&mut tx, &appends, &log, now).await.map_err(unavailable)?;
                    tx.commit().await.map_err(unavailable)?;
                    break;
                }
                Ok(report)
            }
        }

        #[async_trait]
        impl Store for SqlStore<$db> {
            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await.map_err(unavailable)?;
                Ok(())
            }

            async fn create_user(&self, u: &UserRecord) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "INSERT INTO users (id, email, password_hash, display_name, interests, \
                     home_lat, home_lon, role, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) ON CONFLICT (email) DO NOTHING",
                )
                .bind(u.id)
                .bind(&u.email)
                .bind(&u.password_hash)
                .bind(&u.display_name)
                .bind(&u.interests)
                .bind(u.home_lat)
                .bind(u.home_lon)
                .bind(&u.role)
                .bind(u.created_at)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok(done.rows_affected() == 1)
            }

            async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
                sqlx::query_as(
                    "SELECT id, email, password_hash, display_name, interests, home_lat, home_lon, \
                     role, created_at FROM users WHERE email = $1",
                )
                .bind(email)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)
            }

            async fn user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
                sqlx::query_as(
                    "SELECT id, email, password_hash, display_name, interests, home_lat, home_lon, \
                     role, created_at FROM users WHERE id = $1",
                )
                .bind(id.as_uuid())
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)
            }

            async fn update_profile(
                &self,
                id: UserId,
                interests: &[String],
                home: Option<(f64, f64)>,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "UPDATE users SET interests = $1, home_lat = $2, home_lon = $3, updated_at = $4 \
                     WHERE id = $5",
                )
                .bind(Json(interests.to_vec()))
                .bind(home.map(|h| h.0))
                .bind(home.map(|h| h.1))
                .bind(micros(Utc::now()))
                .bind(id.as_uuid())
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok(())
            }

            async fn create_venue(&self, v: &VenueRecord) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO venues (id, owner_id, name, lat, lon, address, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(v.id)
                .bind(v.owner_id)
                .bind(&v.name)
                .bind(v.lat)
                .bind(v.lon)
                .bind(&v.address)
                .bind(v.created_at)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok(())
            }

            async fn venue(&self, id: VenueId) -> Result<Option<VenueRecord>, StoreError> {
                sqlx::query_as(
                    "SELECT id, owner_id, name, lat, lon, address, created_at FROM venues WHERE id = $1",
                )
                .bind(id.as_uuid())
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)
            }

            async fn venue_locations(&self) -> Result<Vec<(Uuid, f64, f64)>, StoreError> {
                sqlx::query_as("SELECT id, lat, lon FROM venues")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(unavailable)
            }

            async fn add_organizer(
                &self,
                venue: VenueId,
                user: UserId,
                at: i64,
            ) -> Result<bool, StoreError> {
                let added = sqlx::query(
                    "INSERT INTO venue_organizers (venue_id, user_id, added_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (venue_id, user_id) DO NOTHING",
                )
                .bind(venue.as_uuid())
                .bind(user.as_uuid())
                .bind(at)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok(added.rows_affected() == 1)
            }

            async fn remove_organizer(&self, venue: VenueId, user: UserId) -> Result<bool, StoreError> {
                let removed = sqlx::query(
                    "DELETE FROM venue_organizers WHERE venue_id = $1 AND user_id = $2",
                )
                .bind(venue.as_uuid())
                .bind(user.as_uuid())
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok(removed.rows_affected() == 1)
            }

            async fn organizers(&self, venue: VenueId) -> Result<Vec<(Uuid, i64)>, StoreError> {
                sqlx::query_as(
                    "SELECT user_id, added_at FROM venue_organizers WHERE venue_id = $1 \
                     ORDER BY added_at, user_id",
                )
                .bind(venue.as_uuid())
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)
            }

            async fn is_organizer(&self, venue: VenueId, user: UserId) -> Result<bool, StoreError> {
                let found: Option<(i64,)> = sqlx::query_as(
                    "SELECT added_at FROM venue_organizers WHERE venue_id = $1 AND user_id = $2",
                )
                .bind(venue.as_uuid())
                .bind(user.as_uuid())
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok(found.is_some())
            }

            async fn event(&self, id: EventId) -> Result<Option<EventRecord>, StoreError> {
                let mut q = QueryBuilder::<$db>::new("SELECT ");
                q.push(EVENT_COLUMNS).push(" FROM events e WHERE e.id = ").push_bind(id.as_uuid());
                let found: Option<EventRecord> =
                    q.build_query_as().fetch_optional(&self.pool).await.map_err(unavailable)?;
                let mut found: Vec<EventRecord> = found.into_iter().collect();
                self.tags_for(&mut found).await?;
                Ok(found.pop())
            }

            async fn list_events(&self, f: &EventFilter) -> Result<Vec<EventRecord>, StoreError> {
                let mut q = QueryBuilder::<$db>::new("SELECT ");
                q.push(EVENT_COLUMNS).push(" FROM events e WHERE e.status = 'published'");
                if let Some(venue) = f.venue_id {
                    q.push(" AND e.venue_id = ").push_bind(venue.as_uuid());
                }
                if let Some(from) = f.from {
                    q.push(" AND e.starts_at >= ").push_bind(micros(from));
                }
                if let Some(to) = f.to {
                    q.push(" AND e.starts_at < ").push_bind(micros(to));
                }
                if let Some(tag) = &f.tag {
                    q.push(" AND EXISTS (SELECT 1 FROM event_tags t WHERE t.event_id = e.id AND t.tag = ")
                        .push_bind(tag.clone())
                        .push(")");
                }
                if let Some((starts_at, id)) = f.after {
                    q.push(" AND (e.starts_at > ")
                        .push_bind(starts_at)
                        .push(" OR (e.starts_at = ")
                        .push_bind(starts_at)
                        .push(" AND e.id > ")
                        .push_bind(id)
                        .push("))");
                }
                q.push(" ORDER BY e.starts_at, e.id LIMIT ").push_bind(f.limit);
                let mut events: Vec<EventRecord> =
                    q.build_query_as().fetch_all(&self.pool).await.map_err(unavailable)?;
                self.tags_for(&mut events).await?;
                Ok(events)
            }

            async fn attendees(
                &self,
                event: EventId,
                after: Option<(i64, i64)>,
                limit: i64,
            ) -> Result<Vec<MembershipRecord>, StoreError> {
                let mut q = QueryBuilder::<$db>::new(
                    "SELECT j.event_id, j.user_id, j.status, j.order_key, j.joined_at, \
                     CAST(NULL AS BIGINT) AS position FROM joins j WHERE j.event_id = ",
                );
                q.push_bind(event.as_uuid()).push(" AND j.status IN ('active', 'waitlisted')");
                const GROUP: &str = "(CASE WHEN j.status = 'active' THEN 0 ELSE 1 END)";
                if let Some((group, order_key)) = after {
                    q.push(" AND (")
                        .push(GROUP)
                        .push(" > ")
                        .push_bind(group)
                        .push(" OR (")
                        .push(GROUP)
                        .push(" = ")
                        .push_bind(group)
                        .push(" AND j.order_key > ")
                        .push_bind(order_key)
                        .push("))");
                }
                q.push(" ORDER BY ").push(GROUP).push(", j.order_key LIMIT ").push_bind(limit);
                let mut rows: Vec<MembershipRecord> =
                    q.build_query_as().fetch_all(&self.pool).await.map_err(unavailable)?;
                // Waiters are listed in order, so one count numbers the page:
                // the first waiter here has as many ahead as precede it.
                if let Some(first) = rows.iter().position(|m| m.status == MemberStatus::Waitlisted) {
                    let (ahead,): (i64,) = sqlx::query_as(
                        "SELECT COUNT(*) FROM joins WHERE event_id = $1 AND status = 'waitlisted' \
                         AND order_key < $2",
                    )
                    .bind(event.as_uuid())
                    .bind(rows[first].order_key)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(unavailable)?;
                    for (i, m) in rows[first..].iter_mut().enumerate() {
                        m.position = Some(ahead + 1 + i as i64);
                    }
                }
                Ok(rows)
            }

            async fn joins_of(
                &self,
                user: UserId,
                before: Option<(i64, Uuid)>,
                limit: i64,
            ) -> Result<Vec<(MembershipRecord, EventRecord)>, StoreError> {
                let mut q = QueryBuilder::<$db>::new(
                    "SELECT j.event_id, j.user_id, j.status, j.order_key, j.joined_at, ",
                );
                q.push(POSITION).push(" AS position FROM joins j WHERE j.user_id = ").push_bind(user.as_uuid());
                q.push(" AND j.status <> 'left'");
                if let Some((joined_at, event_id)) = before {
                    q.push(" AND (j.joined_at < ")
                        .push_bind(joined_at)
                        .push(" OR (j.joined_at = ")
                        .push_bind(joined_at)
                        .push(" AND j.event_id < ")
                        .push_bind(event_id)
                        .push("))");
                }
                q.push(" ORDER BY j.joined_at DESC, j.event_id DESC LIMIT ").push_bind(limit);
                let memberships: Vec<MembershipRecord> =
                    q.build_query_as().fetch_all(&self.pool).await.map_err(unavailable)?;
                if memberships.is_empty() {
                    return Ok(Vec::new());
                }
                // The cards in one query, not one per membership.
                let mut q = QueryBuilder::<$db>::new("SELECT ");
                q.push(EVENT_COLUMNS).push(" FROM events e WHERE e.id IN (");
                let mut ids = q.separated(", ");
                for m in &memberships {
                    ids.push_bind(m.event_id);
                }
                q.push(")");
                let mut events: Vec<EventRecord> =
                    q.build_query_as().fetch_all(&self.pool).await.map_err(unavailable)?;
                self.tags_for(&mut events).await?;
                let mut by_id: HashMap<Uuid, EventRecord> = events.into_iter().map(|e| (e.id, e)).collect();
                Ok(memberships
                    .into_iter()
                    .filter_map(|m| by_id.remove(&m.event_id).map(|e| (m, e)))
                    .collect())
            }

            async fn current_joins_of(&self, user: UserId, limit: i64) -> Result<Vec<Uuid>, StoreError> {
                let mut newest_first: Vec<(Uuid,)> = sqlx::query_as(
                    "SELECT event_id FROM joins WHERE user_id = $1 AND status IN ('active', 'waitlisted') \
                     ORDER BY joined_at DESC, event_id DESC LIMIT $2",
                )
                .bind(user.as_uuid())
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
                newest_first.reverse();
                Ok(newest_first.into_iter().map(|(id,)| id).collect())
            }

            async fn events_starting_since(&self, since: DateTime<Utc>) -> Result<Vec<EventRecord>, StoreError> {
                let mut q = QueryBuilder::<$db>::new("SELECT ");
                q.push(EVENT_COLUMNS)
                    .push(" FROM events e WHERE e.starts_at >= ")
                    .push_bind(micros(since));
                let mut events: Vec<EventRecord> =
                    q.build_query_as().fetch_all(&self.pool).await.map_err(unavailable)?;
                let tags: Vec<(Uuid, String)> = sqlx::query_as(
                    "SELECT t.event_id, t.tag FROM event_tags t JOIN events e ON e.id = t.event_id \
                     WHERE e.starts_at >= $1 ORDER BY t.tag",
                )
                .bind(micros(since))
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
                let mut by_event: HashMap<Uuid, Vec<String>> = HashMap::new();
                for (id, tag) in tags {
                    by_event.entry(id).or_default().push(tag);
                }
                for e in &mut events {
                    e.tags = by_event.remove(&e.id).unwrap_or_default();
                }
                Ok(events)
            }

            async fn joins_of_events_starting_since(
                &self,
                since: DateTime<Utc>,
            ) -> Result<Vec<(Uuid, Uuid, i64)>, StoreError> {
                sqlx::query_as(
                    "SELECT j.user_id, j.event_id, j.joined_at FROM joins j JOIN events e ON e.id = j.event_id \
                     WHERE e.starts_at >= $1 AND j.status IN ('active', 'waitlisted') \
                     ORDER BY j.joined_at, j.event_id",
                )
                .bind(micros(since))
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)
            }

            async fn set_role(&self, email: &str, role: &str) -> Result<bool, StoreError> {
                let done = sqlx::query("UPDATE users SET role = $1, updated_at = $2 WHERE email = $3")
                    .bind(role)
                    .bind(micros(Utc::now()))
                    .bind(email)
                    .execute(&self.pool)
                    .await
                    .map_err(unavailable)?;
                Ok(done.rows_affected() == 1)
            }

            async fn take_lease(&self, name: &str, holder: &str, now: i64, ttl_micros: i64) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                     WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
                )
                .bind(name)
                .bind(holder)
                .bind(now + ttl_micros)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok(done.rows_affected() == 1)
            }

            async fn outbox(&self, status: OutboxStatus, after: i64, limit: i64) -> Result<Vec<OutboxMessage>, StoreError> {
                sqlx::query_as(
                    "SELECT id, message_id, topic, aggregate_id, stream_version, event_type, \
                     CAST(payload AS TEXT) AS payload, request_id, attempts, next_attempt_at, last_error, created_at \
                     FROM outbox WHERE status = $1 AND id > $2 ORDER BY id LIMIT $3",
                )
                .bind(status.as_str())
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)
            }

            async fn outbox_published(&self, ids: &[i64], now: i64) -> Result<(), StoreError> {
                if ids.is_empty() {
                    return Ok(());
                }
                let mut q = QueryBuilder::<$db>::new("UPDATE outbox SET status = 'published', published_at = ");
                q.push_bind(now).push(" WHERE status = 'pending' AND id IN (");
                let mut list = q.separated(", ");
                for id in ids {
                    list.push_bind(*id);
                }
                q.push(")");
                q.build().execute(&self.pool).await.map_err(unavailable)?;
                Ok(())
            }

            async fn outbox_failed(
                &self,
                id: i64,
                attempts: i64,
                next_attempt_at: i64,
                error: &str,
                dead: bool,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "UPDATE outbox SET attempts = $1, next_attempt_at = $2, last_error = $3, status = $4 \
                     WHERE id = $5 AND status = 'pending'",
                )
                .bind(attempts)
                .bind(next_attempt_at)
                .bind(error)
                .bind(if dead { "dead" } else { "pending" })
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok(())
            }

            async fn replay_outbox(&self, id: i64, now: i64) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $1, last_error = NULL \
                     WHERE id = $2 AND status = 'dead'",
                )
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok(done.rows_affected() == 1)
            }

            async fn outbox_counts(&self) -> Result<(i64, i64), StoreError> {
                let (pending,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE status = 'pending'")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(unavailable)?;
                let (dead,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE status = 'dead'")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(unavailable)?;
                Ok((pending, dead))
            }

            async fn purge_published_outbox(&self, before: i64) -> Result<u64, StoreError> {
                let done = sqlx::query("DELETE FROM outbox WHERE status = 'published' AND published_at < $1")
                    .bind(before)
                    .execute(&self.pool)
                    .await
                    .map_err(unavailable)?;
                Ok(done.rows_affected())
            }

            async fn count_daily_facts(&self, facts: &[DailyFact]) -> Result<usize, StoreError> {
                let mut tx = self.pool.begin().await.map_err(unavailable)?;
                let ids: Vec<Uuid> = facts.iter().map(|fact| fact.message_id).collect();
                let mut first = Self::first_deliveries(&mut tx, &ids, DAILY_FACTS_HANDLER)
                    .await
                    .map_err(unavailable)?;
                let mut new: std::collections::BTreeMap<(&str, &str), i64> = Default::default();
                for fact in facts {
                    // `remove`: a message repeated within the batch counts once.
                    if first.remove(&fact.message_id) {
                        *new.entry((&fact.day, &fact.event_type)).or_default() += 1;
                    }
                }
                for ((day, event_type), facts) in &new {
                    sqlx::query(
                        "INSERT INTO daily_facts (day, event_type, facts) VALUES ($1, $2, $3) \
                         ON CONFLICT (day, event_type) DO UPDATE SET facts = daily_facts.facts + $3",
                    )
                    .bind(*day)
                    .bind(*event_type)
                    .bind(*facts)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                }
                tx.commit().await.map_err(unavailable)?;
                Ok(new.values().sum::<i64>() as usize)
            }

            async fn daily_facts(&self, since_day: &str) -> Result<Vec<(String, String, i64)>, StoreError> {
                sqlx::query_as(
                    "SELECT day, event_type, facts FROM daily_facts WHERE day >= $1 ORDER BY day, event_type",
                )
                .bind(since_day)
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)
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
