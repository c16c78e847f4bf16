//! Postgres's group commit: an attempt is a transaction on the journal's
//! own connection, a statement at a time — the lease check, the answered
//! keys, stale appends without facts, the facts, then the read models and
//! side records — each table written by one statement over `UNNEST`ed
//! arrays.

use std::collections::{HashMap, HashSet};

use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder};
use turnout_actors::domain::{EventId, EventState};
use turnout_actors::idempotency::Given;
use turnout_actors::store::{
    Append, EventSummary, IdempotencyRecord, MembershipRow, StoreError, membership_rows,
};
use uuid::Uuid;

use super::{
    AnswerRow, CHUNK, Checked, LogRow, OutboxRow, Step, Steps, answer_json, answered, keyed,
    latest_snapshots, latest_summaries, lost, retagged, stale, stored_answer,
    streams_without_facts,
};
use crate::store::SqlStore;
use crate::store::{micros, unavailable};

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
///
/// The predecessor is looked up by a scalar subquery (no row: NULL, which
/// the filter takes as false), not `EXISTS`: Postgres may hash an `EXISTS`
/// by reading the whole subquery once per execution — its pick when the
/// journal's connection planned the statement on an almost empty log, a
/// plan that connection then keeps, so every commit read the entire log
/// (9 ms of a 13 ms commit three minutes into the mix). A scalar subquery
/// is never hashed: one primary-key lookup per fact, whatever the plan.
macro_rules! follows {
    () => {
        " FROM x WHERE x.v = 1 OR x.after_own \
         OR (SELECT true FROM event_log l WHERE l.stream_id = x.s AND l.version = x.v - 1)"
    };
}

impl SqlStore<Postgres> {
    /// One attempt at a batch: a transaction on the journal's own
    /// connection, a statement at a time, committed only if every check
    /// passed.
    pub(super) async fn attempt(
        &self,
        live: &[(usize, &Append)],
        now: i64,
    ) -> Result<Checked, StoreError> {
        let mut steps = Steps::start();
        let mut tx = self.writer.begin().await.map_err(unavailable)?;
        steps.done(Step::Begin);
        let fenced = Self::fenced_out(&mut tx, live).await.map_err(unavailable)?;
        steps.done(Step::Leases);
        let checked = if fenced.is_empty() {
            let appends: Vec<&Append> = live.iter().map(|(_, a)| *a).collect();
            let log = LogRow::of_batch(&appends);
            Self::write_stepwise(&mut tx, live, &log, now, &mut steps)
                .await
                .map_err(unavailable)?
        } else {
            Checked::Fenced(fenced)
        };
        match checked {
            Checked::Written => tx.commit().await,
            _ => tx.rollback().await,
        }
        .map_err(unavailable)?;
        steps.done(Step::Commit);
        Ok(checked)
    }

    /// The appends whose shard lease this node no longer holds at
    /// the epoch their actor was activated with: taken by another
    /// node, or released. The lease rows stay locked against a
    /// taking until this transaction ends, so a node taking the
    /// shard waits for this commit and then loads what it wrote.
    async fn fenced_out(
        tx: &mut sqlx::Transaction<'_, Postgres>,
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
        let mut query: QueryBuilder<Postgres> = QueryBuilder::new(
            "SELECT CAST(shard AS BIGINT), epoch FROM shard_leases WHERE node IS NOT NULL AND shard IN (",
        );
        let mut list = query.separated(", ");
        for shard in &shards {
            list.push_bind(*shard);
        }
        // In shard order, as a taking locks them: no deadlock.
        query.push(") ORDER BY shard");
        query.push(" FOR SHARE");
        let held: HashMap<i64, i64> = query
            .build_query_as::<(i64, i64)>()
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect();
        Ok(live
            .iter()
            .filter(|(_, a)| {
                a.lease
                    .is_some_and(|l| held.get(&i64::from(l.shard.get())) != Some(&(l.epoch as i64)))
            })
            .map(|(i, _)| *i)
            .collect())
    }

    /// Appends every stream's facts; returns the streams of which a
    /// fact was not written: its version taken by another writer, or
    /// not following the one before it (see `follows!`).
    async fn append_log(
        tx: &mut sqlx::Transaction<'_, Postgres>,
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
        tx: &mut sqlx::Transaction<'_, Postgres>,
        live: &[(usize, &Append)],
    ) -> Result<Vec<usize>, sqlx::Error> {
        let streams = streams_without_facts(live);
        if streams.is_empty() {
            // The usual batch: every append carries facts.
            return Ok(Vec::new());
        }
        let mut latest: HashMap<Uuid, u64> = HashMap::with_capacity(streams.len());
        for chunk in streams.chunks(CHUNK) {
            let mut q = QueryBuilder::<Postgres>::new(
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
        let appends = live
            .iter()
            .map(|(i, a)| (*i, a.stream, a.base_version, a.facts.len()));
        Ok(stale(appends, latest))
    }

    /// The appends whose idempotency key already has an answer: stored
    /// (and unexpired), or taken by an earlier append of this batch.
    async fn answered_keys(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        live: &[(usize, &Append)],
        now: i64,
    ) -> Result<Vec<(usize, Given)>, sqlx::Error> {
        let keyed = keyed(live);
        if keyed.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<(Uuid, String)> = keyed
            .iter()
            .map(|(_, r)| (r.user.as_uuid(), r.key.clone()))
            .collect();
        let mut stored: HashMap<(Uuid, String), Given> = HashMap::new();
        for chunk in keys.chunks(CHUNK) {
            for row in Self::select_answers(tx, chunk, now).await? {
                let (key, answer) = stored_answer(row)?;
                stored.insert(key, answer);
            }
        }
        Ok(answered(keyed, stored))
    }

    fn push_events_upsert(q: &mut QueryBuilder<Postgres>, chunk: &[&EventSummary], now: i64) {
        q.push(
            "INSERT INTO events (id, owner_id, venue_id, title, description, starts_at, \
             ends_at, capacity, status, active_count, offered_count, waitlist_count, \
             waitlist_mode, offer_hold_secs, max_party, waitlist_fill, version, \
             created_at, updated_at) ",
        );
        q.push_values(chunk, |mut b, s| {
            b.push_bind(s.id.as_uuid())
                .push_bind(s.owner.as_uuid())
                .push_bind(s.details.venue_id.as_uuid())
                .push_bind(s.details.title.as_str().to_owned())
                .push_bind(
                    s.details
                        .description
                        .as_ref()
                        .map(|d| d.as_str().to_owned()),
                )
                .push_bind(micros(s.details.starts_at))
                .push_bind(s.details.ends_at.map(micros))
                .push_bind(i64::from(s.capacity))
                .push_bind(s.lifecycle.as_str())
                .push_bind(s.active_count as i64)
                .push_bind(s.offered_count as i64)
                .push_bind(s.waitlist_count as i64)
                .push_bind(s.policy.mode.as_str())
                .push_bind(i64::from(s.policy.offer_hold))
                .push_bind(i64::from(s.policy.max_party))
                .push_bind(s.policy.fill.as_str())
                .push_bind(s.version as i64)
                .push_bind(now)
                .push_bind(now);
        });
        q.push(
            " ON CONFLICT (id) DO UPDATE SET venue_id = excluded.venue_id, \
             title = excluded.title, description = excluded.description, \
             starts_at = excluded.starts_at, ends_at = excluded.ends_at, \
             capacity = excluded.capacity, status = excluded.status, \
             active_count = excluded.active_count, offered_count = excluded.offered_count, \
             waitlist_count = excluded.waitlist_count, waitlist_mode = excluded.waitlist_mode, \
             offer_hold_secs = excluded.offer_hold_secs, max_party = excluded.max_party, \
             waitlist_fill = excluded.waitlist_fill, version = excluded.version, \
             updated_at = excluded.updated_at WHERE events.version <= excluded.version",
        );
    }

    fn push_delete_tags(q: &mut QueryBuilder<Postgres>, event: &EventSummary) {
        q.push("DELETE FROM event_tags WHERE event_id = ")
            .push_bind(event.id.as_uuid());
    }

    /// The event has tags.
    fn push_insert_tags(q: &mut QueryBuilder<Postgres>, event: &EventSummary) {
        q.push("INSERT INTO event_tags (tag, event_id) ");
        q.push_values(&event.details.tags, |mut b, tag| {
            b.push_bind(tag.as_str().to_owned())
                .push_bind(event.id.as_uuid());
        });
    }

    /// Every membership of a cancelled event ends.
    fn push_cancel(q: &mut QueryBuilder<Postgres>, event: EventId, now: i64) {
        q.push("UPDATE joins SET status = 'cancelled', updated_at = ")
            .push_bind(now)
            .push(" WHERE event_id = ")
            .push_bind(event.as_uuid())
            .push(" AND status IN ('active', 'waitlisted', 'offered')");
    }

    fn push_snapshots(q: &mut QueryBuilder<Postgres>, chunk: &[&EventState], now: i64) {
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
        tx: &mut sqlx::Transaction<'_, Postgres>,
        live: &[(usize, &Append)],
        log: &[LogRow],
        now: i64,
        steps: &mut Steps,
    ) -> Result<Checked, sqlx::Error> {
        let answered = Self::answered_keys(tx, live, now).await?;
        steps.done(Step::Keys);
        if !answered.is_empty() {
            return Ok(Checked::Answered(answered));
        }
        let stale = Self::stale_without_facts(tx, live).await?;
        steps.done(Step::Stale);
        if !stale.is_empty() {
            return Ok(Checked::Stale(stale));
        }
        let lost = Self::append_log(tx, log, now).await?;
        steps.done(Step::Log);
        if !lost.is_empty() {
            return Ok(Checked::Lost(lost));
        }
        let appends: Vec<&Append> = live.iter().map(|(_, a)| *a).collect();
        Self::write_read_models(tx, &appends, now, steps).await?;
        Self::write_side_records(tx, &appends, log, now, steps).await?;
        Ok(Checked::Written)
    }

    async fn write_read_models(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        live: &[&Append],
        now: i64,
        steps: &mut Steps,
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
        steps.done(Step::Events);

        let rows = membership_rows(live.iter().copied());
        for chunk in rows.chunks(CHUNK) {
            Self::upsert_joins(tx, chunk).await?;
        }

        for a in live.iter().filter(|a| a.cancels()) {
            let mut q = QueryBuilder::new("");
            Self::push_cancel(&mut q, a.stream, now);
            q.build().execute(&mut **tx).await?;
        }
        steps.done(Step::Memberships);
        Ok(())
    }

    async fn write_side_records(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        live: &[&Append],
        log: &[LogRow],
        now: i64,
        steps: &mut Steps,
    ) -> Result<(), sqlx::Error> {
        let snapshots = latest_snapshots(live);
        for chunk in snapshots.chunks(CHUNK) {
            let mut q = QueryBuilder::new("");
            Self::push_snapshots(&mut q, chunk, now);
            q.build().execute(&mut **tx).await?;
        }
        steps.done(Step::Snapshots);

        let records: Vec<&IdempotencyRecord> = live
            .iter()
            .filter_map(|a| a.idempotency.as_ref())
            .filter(|r| r.keep)
            .collect();
        for chunk in records.chunks(CHUNK) {
            Self::insert_replies(tx, chunk, now).await?;
        }
        steps.done(Step::Replies);

        let outbox: Vec<OutboxRow> = log.iter().map(LogRow::outbox).collect();
        for chunk in outbox.chunks(CHUNK) {
            Self::insert_outbox(tx, chunk, now).await?;
        }
        steps.done(Step::Outbox);
        Ok(())
    }
}

/// Postgres's bulk writes: one statement per table over `UNNEST`ed arrays,
/// prepared once whatever the batch size (a multi-row `VALUES` is a new
/// statement to parse and plan for every size).
impl SqlStore<Postgres> {
    pub(super) async fn insert_log(
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

    pub(super) async fn select_answers(
        conn: &mut sqlx::PgConnection,
        keys: &[(Uuid, String)],
        now: i64,
    ) -> Result<Vec<AnswerRow>, sqlx::Error> {
        // One primary-key lookup per key, whatever the plan cache holds:
        // the `LIMIT 1` (a no-op on the key) keeps the planner from turning
        // the lookup into a join it may hash over the whole table — a plan
        // that, kept by the journal's one connection, cost more with every
        // key stored.
        sqlx::query_as(
            "SELECT i.user_id, i.key, i.fingerprint, i.answer::text \
             FROM UNNEST($1::uuid[], $2::text[]) AS x(u, k) \
             CROSS JOIN LATERAL (SELECT user_id, key, fingerprint, answer FROM idempotency_keys \
               WHERE user_id = x.u AND key = x.k AND expires_at > $3 LIMIT 1) i",
        )
        .bind(keys.iter().map(|(u, _)| *u).collect::<Vec<_>>())
        .bind(keys.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>())
        .bind(now)
        .fetch_all(conn)
        .await
    }

    pub(super) async fn upsert_joins(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        rows: &[MembershipRow],
    ) -> Result<(), sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO joins (event_id, user_id, status, order_key, seats, offer_expires_at, \
             joined_at, updated_at) SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], \
             $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::int8[]){JOINS_UPSERT}"
        )))
        .bind(
            rows.iter()
                .map(|r| r.event_id.as_uuid())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.user_id.as_uuid()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.order_key).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| i64::from(r.seats)).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.offer_expires_at.map(micros))
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| micros(r.joined_at)).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| micros(r.updated_at))
                .collect::<Vec<_>>(),
        )
        .execute(&mut **tx)
        .await
        .map(drop)
    }

    pub(super) async fn insert_replies(
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

    pub(super) async fn insert_outbox(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        rows: &[OutboxRow],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO outbox (message_id, topic, aggregate_id, stream_version, event_type, \
             payload, request_id, traceparent, next_attempt_at, created_at) \
             SELECT m, 'events', a, v, t, p::jsonb, r, tp, $8, $8 \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::text[], $5::text[], $6::text[], \
                         $7::text[]) AS x(m, a, v, t, p, r, tp)",
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
        .bind(
            rows.iter()
                .map(|r| r.traceparent.clone())
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
     order_key = excluded.order_key, seats = excluded.seats, \
     offer_expires_at = excluded.offer_expires_at, joined_at = excluded.joined_at, \
     updated_at = excluded.updated_at";
