//! The journal's group commit: the event log, snapshots, read models,
//! idempotency keys and outbox rows of a batch in one transaction (the
//! [`EventStore`] port), with the few bulk statements written per database.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::Utc;
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Sqlite};
use turnout_actors::domain::{EventId, EventState, StoredEvent, UserId, current_schema_version};
use turnout_actors::idempotency::{Answer, Given};
use turnout_actors::store::{
    Append, CommitReport, EventStore, EventSummary, IdempotencyRecord, Rehydration, StoreError,
    membership_rows,
};
use uuid::Uuid;

use super::{CHUNK, SqlStore};

mod bulk;
use crate::store::{micros, unavailable};

/// One fact for the event log; the payload is JSON text. Each fact of a
/// commit is encoded once, here, and its outbox row is made from this one.
struct LogRow {
    stream: Uuid,
    version: i64,
    event_type: &'static str,
    schema_version: i64,
    payload: String,
    request_id: Option<String>,
    /// The deciding command's trace, for the outbox row.
    traceparent: Option<String>,
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
                let traceparent = crate::telemetry::traceparent(&a.span);
                a.versioned().map(move |(version, e)| LogRow {
                    stream: a.stream.as_uuid(),
                    version,
                    event_type: e.kind(),
                    schema_version: i64::from(current_schema_version(e.kind())),
                    payload: StoredEvent::encode_text(e),
                    request_id: a.request_id.clone(),
                    traceparent: traceparent.clone(),
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
            traceparent: self.traceparent.clone(),
        }
    }
}

/// The event rows a batch writes: the last summary of each
/// stream wins.
fn latest_summaries<'a>(live: &[&'a Append]) -> Vec<&'a EventSummary> {
    let mut latest: HashMap<EventId, usize> = HashMap::new();
    for (i, a) in live.iter().enumerate() {
        latest.insert(a.stream, i);
    }
    let mut summaries: Vec<_> = latest.values().map(|&i| &live[i].summary).collect();
    summaries.sort_by_key(|s| s.id);
    summaries
}

/// The events whose tags a batch rewrites: details changed.
fn retagged<'a>(
    summaries: &'a [&'a EventSummary],
    live: &'a [&Append],
) -> impl Iterator<Item = &'a EventSummary> {
    summaries
        .iter()
        .copied()
        .filter(|s| live.iter().any(|a| a.stream == s.id && a.changes_details()))
}

/// The snapshots a batch writes: the latest of each stream.
fn latest_snapshots<'a>(live: &[&'a Append]) -> Vec<&'a EventState> {
    let mut snapshots: HashMap<EventId, &EventState> = HashMap::new();
    for a in live {
        if let Some(s) = &a.snapshot {
            snapshots.insert(a.stream, s);
        }
    }
    snapshots.into_values().collect()
}

/// The keyed appends of a batch, with their keys.
fn keyed<'a>(live: &[(usize, &'a Append)]) -> Vec<(usize, &'a IdempotencyRecord)> {
    live.iter()
        .filter_map(|(i, a)| a.idempotency.as_ref().map(|r| (*i, r)))
        .collect()
}

/// The appends whose key already has an answer: `stored` (and unexpired),
/// or taken by an earlier append of this batch.
fn answered(
    keyed: Vec<(usize, &IdempotencyRecord)>,
    mut stored: HashMap<(Uuid, String), Given>,
) -> Vec<(usize, Given)> {
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
    answered
}

/// The streams of which a fact was not written, given those that were.
fn lost(rows: &[LogRow], written: &HashSet<(Uuid, i64)>) -> HashSet<EventId> {
    rows.iter()
        .filter(|r| !written.contains(&(r.stream, r.version)))
        .map(|r| EventId::from(r.stream))
        .collect()
}

/// What a batch's checks found, or that it was written. Anything but
/// `Written` rolls the transaction back and leaves those appends out.
enum Checked {
    Written,
    /// Appends whose keys were answered before: replays.
    Answered(Vec<(usize, Given)>),
    /// Appends without facts decided on a version no longer the latest.
    Stale(Vec<usize>),
    /// Streams whose facts lost the race for their versions.
    Lost(HashSet<EventId>),
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
    traceparent: Option<String>,
}

macro_rules! impl_event_store {
    // `$share_lock`: how the dialect holds lease rows against a concurrent
    // taking until the commit ends (SQLite's write transaction already
    // excludes every other writer).
    ($db:ty, $share_lock:literal) => {
        impl SqlStore<$db> {
            /// The appends whose shard lease this node no longer holds at
            /// the epoch their actor was activated with: taken by another
            /// node, or released. The lease rows stay locked against a
            /// taking until this transaction ends, so a node taking the
            /// shard waits for this commit and then loads what it wrote.
            async fn fenced_out(
                tx: &mut sqlx::Transaction<'_, $db>,
                live: &[(usize, &Append)],
            ) -> Result<Vec<usize>, sqlx::Error> {
                let mut shards: Vec<i64> = live
                    .iter()
                    .filter_map(|(_, a)| a.lease.map(|l| i64::from(l.shard.get())))
                    .collect();
                if shards.is_empty() {
                    return Ok(Vec::new());
                }
                shards.sort_unstable();
                shards.dedup();
                let mut query: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT CAST(shard AS BIGINT), epoch FROM shard_leases WHERE node IS NOT NULL AND shard IN (",
                );
                let mut list = query.separated(", ");
                for shard in &shards {
                    list.push_bind(*shard);
                }
                // In shard order, as a taking locks them: no deadlock.
                query.push(") ORDER BY shard");
                query.push($share_lock);
                let held: HashMap<i64, i64> = query
                    .build_query_as::<(i64, i64)>()
                    .fetch_all(&mut **tx)
                    .await?
                    .into_iter()
                    .collect();
                Ok(live
                    .iter()
                    .filter(|(_, a)| {
                        a.lease.is_some_and(|l| {
                            held.get(&i64::from(l.shard.get())) != Some(&(l.epoch as i64))
                        })
                    })
                    .map(|(i, _)| *i)
                    .collect())
            }

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
                Ok(lost(rows, &written))
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
                    .filter(|(_, a)| a.facts.is_empty())
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
                    if a.facts.is_empty() && a.base_version != *version {
                        stale.push(*i);
                    }
                    *version = a.base_version + a.facts.len() as u64;
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
                let keyed = keyed(live);
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
                Ok(answered(keyed, stored))
            }

            fn push_events_upsert(q: &mut QueryBuilder<$db>, chunk: &[&EventSummary], now: i64) {
                q.push(
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
            }

            fn push_delete_tags(q: &mut QueryBuilder<$db>, event: &EventSummary) {
                q.push("DELETE FROM event_tags WHERE event_id = ")
                    .push_bind(event.id.as_uuid());
            }

            /// The event has tags.
            fn push_insert_tags(q: &mut QueryBuilder<$db>, event: &EventSummary) {
                q.push("INSERT INTO event_tags (tag, event_id) ");
                q.push_values(&event.details.tags, |mut b, tag| {
                    b.push_bind(tag.as_str().to_owned()).push_bind(event.id.as_uuid());
                });
            }

            /// Every membership of a cancelled event ends.
            fn push_cancel(q: &mut QueryBuilder<$db>, event: EventId, now: i64) {
                q.push("UPDATE joins SET status = 'cancelled', updated_at = ")
                    .push_bind(now)
                    .push(" WHERE event_id = ")
                    .push_bind(event.as_uuid())
                    .push(" AND status IN ('active', 'waitlisted')");
            }

            fn push_snapshots(q: &mut QueryBuilder<$db>, chunk: &[&EventState], now: i64) {
                q.push("INSERT INTO snapshots (stream_id, version, state, taken_at) ");
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
            }

            /// The batch's checks and writes, a statement at a time: the
            /// keys answered before, appends without facts on a stale
            /// version, the facts (whose versions may have been taken),
            /// then the read models and side records.
            async fn write_stepwise(
                tx: &mut sqlx::Transaction<'_, $db>,
                live: &[(usize, &Append)],
                log: &[LogRow],
                now: i64,
            ) -> Result<Checked, sqlx::Error> {
                let answered = Self::answered_keys(tx, live, now).await?;
                if !answered.is_empty() {
                    return Ok(Checked::Answered(answered));
                }
                let stale = Self::stale_without_facts(tx, live).await?;
                if !stale.is_empty() {
                    return Ok(Checked::Stale(stale));
                }
                let lost = Self::append_log(tx, log, now).await?;
                if !lost.is_empty() {
                    return Ok(Checked::Lost(lost));
                }
                let appends: Vec<&Append> = live.iter().map(|(_, a)| *a).collect();
                Self::write_read_models(tx, &appends, now).await?;
                Self::write_side_records(tx, &appends, log, now).await?;
                Ok(Checked::Written)
            }

            async fn write_read_models(
                tx: &mut sqlx::Transaction<'_, $db>,
                live: &[&Append],
                now: i64,
            ) -> Result<(), sqlx::Error> {
                let summaries = latest_summaries(live);
                for chunk in summaries.chunks(CHUNK) {
                    let mut q = QueryBuilder::new("");
                    Self::push_events_upsert(&mut q, chunk, now);
                    q.build().execute(&mut **tx).await?;
                }

                for s in retagged(&summaries, live) {
                    let mut q = QueryBuilder::new("");
                    Self::push_delete_tags(&mut q, s);
                    q.build().execute(&mut **tx).await?;
                    if !s.details.tags.is_empty() {
                        let mut q = QueryBuilder::new("");
                        Self::push_insert_tags(&mut q, s);
                        q.build().execute(&mut **tx).await?;
                    }
                }

                let rows = membership_rows(live.iter().copied());
                for chunk in rows.chunks(CHUNK) {
                    Self::upsert_joins(tx, chunk).await?;
                }

                for a in live.iter().filter(|a| a.cancels()) {
                    let mut q = QueryBuilder::new("");
                    Self::push_cancel(&mut q, a.stream, now);
                    q.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            async fn write_side_records(
                tx: &mut sqlx::Transaction<'_, $db>,
                live: &[&Append],
                log: &[LogRow],
                now: i64,
            ) -> Result<(), sqlx::Error> {
                let snapshots = latest_snapshots(live);
                for chunk in snapshots.chunks(CHUNK) {
                    let mut q = QueryBuilder::new("");
                    Self::push_snapshots(&mut q, chunk, now);
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
                let facts = rows
                    .into_iter()
                    .map(|(event_type, schema_version, Json(payload))| StoredEvent {
                        event_type,
                        schema_version: schema_version as i32,
                        payload,
                    })
                    .collect();
                Ok(Rehydration { snapshot, facts })
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
                    // A node that lost a shard must not write to it, even
                    // where the stream's version would fit.
                    let fenced = Self::fenced_out(&mut tx, &live).await.map_err(unavailable)?;
                    if !fenced.is_empty() {
                        tx.rollback().await.map_err(unavailable)?;
                        for i in fenced {
                            left_out.insert(i);
                            report.fenced.push(i);
                        }
                        continue;
                    }
                    let appends: Vec<&Append> = live.iter().map(|(_, a)| *a).collect();
                    let log = LogRow::of_batch(&appends);
                    let checked = match Self::write_at_once(&mut tx, &live, &log, now)
                        .await
                        .map_err(unavailable)?
                    {
                        Some(checked) => checked,
                        None => Self::write_stepwise(&mut tx, &live, &log, now)
                            .await
                            .map_err(unavailable)?,
                    };
                    match checked {
                        Checked::Written => {
                            tx.commit().await.map_err(unavailable)?;
                        }
                        Checked::Answered(answered) => {
                            tx.rollback().await.map_err(unavailable)?;
                            for (i, answer) in answered {
                                left_out.insert(i);
                                if !batch[i].facts.is_empty() {
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
                        Checked::Stale(stale) => {
                            tx.rollback().await.map_err(unavailable)?;
                            for i in stale {
                                if left_out.insert(i) {
                                    report.conflicted.push(i);
                                }
                            }
                            continue;
                        }
                        Checked::Lost(lost) => {
                            // Retry without the streams that lost the race;
                            // their actors reload and decide again.
                            tx.rollback().await.map_err(unavailable)?;
                            for (i, a) in &live {
                                if lost.contains(&a.stream) && left_out.insert(*i) {
                                    report.conflicted.push(*i);
                                }
                            }
                            continue;
                        }
                    }
                    break;
                }
                Ok(report)
            }
        }
    };
}

impl_event_store!(Sqlite, "");
impl_event_store!(Postgres, " FOR SHARE");
