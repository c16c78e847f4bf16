//! The few statements written per database: the bulk writes of a batch's
//! rows (multi-row `VALUES` for SQLite, `UNNEST`ed arrays for Postgres).

use sqlx::{Postgres, QueryBuilder, Sqlite};
use uuid::Uuid;

use std::collections::{HashMap, HashSet};

use sqlx::Row;
use turnout_actors::idempotency::Given;
use turnout_actors::store::{Append, IdempotencyRecord, MembershipRow, membership_rows};

use super::{
    AnswerRow, CHUNK, Checked, LogRow, OutboxRow, answer_json, answered, keyed, latest_snapshots,
    latest_summaries, lost, retagged, stored_answer,
};
use crate::store::SqlStore;
use crate::store::micros;

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

/// SQLite's bulk writes: multi-row `VALUES`, which SQLite compiles cheaply.
impl SqlStore<Sqlite> {
    /// The journal's transaction takes the write lock up front: a deferred
    /// transaction that reads first fails at once (SQLITE_BUSY) when another
    /// connection wrote in between, instead of waiting its turn.
    pub(super) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, Sqlite>, sqlx::Error> {
        self.commit_pool.begin_with("BEGIN IMMEDIATE").await
    }

    pub(super) async fn insert_log(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        rows: &[LogRow],
        now: i64,
    ) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
        let mut q = QueryBuilder::new("");
        Self::push_insert_log(&mut q, rows, now);
        q.build_query_as().fetch_all(&mut **tx).await
    }

    /// Returns the versions written: `stream_id, version`.
    fn push_insert_log(q: &mut QueryBuilder<Sqlite>, rows: &[LogRow], now: i64) {
        q.push("WITH x (s, v, t, sv, p, r, after_own) AS (");
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
    }

    pub(super) async fn select_answers(
        conn: &mut sqlx::SqliteConnection,
        keys: &[(Uuid, String)],
        now: i64,
    ) -> Result<Vec<AnswerRow>, sqlx::Error> {
        let mut q = QueryBuilder::new("");
        Self::push_select_answers(&mut q, keys, now);
        q.build_query_as().fetch_all(conn).await
    }

    /// Returns `user_id, key, fingerprint, answer` (an [`AnswerRow`]).
    fn push_select_answers(q: &mut QueryBuilder<Sqlite>, keys: &[(Uuid, String)], now: i64) {
        q.push(
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
    }

    pub(super) async fn upsert_joins(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        rows: &[MembershipRow],
    ) -> Result<(), sqlx::Error> {
        let mut q = QueryBuilder::new("");
        Self::push_upsert_joins(&mut q, rows);
        q.build().execute(&mut **tx).await.map(drop)
    }

    fn push_upsert_joins(q: &mut QueryBuilder<Sqlite>, rows: &[MembershipRow]) {
        q.push("INSERT INTO joins (event_id, user_id, status, order_key, joined_at, updated_at) ");
        q.push_values(rows, |mut b, r| {
            b.push_bind(r.event_id.as_uuid())
                .push_bind(r.user_id.as_uuid())
                .push_bind(r.status.as_str())
                .push_bind(r.order_key)
                .push_bind(micros(r.joined_at))
                .push_bind(micros(r.updated_at));
        });
        q.push(JOINS_UPSERT);
    }

    pub(super) async fn insert_replies(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        rows: &[&IdempotencyRecord],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        let mut q = QueryBuilder::new("");
        Self::push_insert_replies(&mut q, rows, now);
        q.build().execute(&mut **tx).await.map(drop)
    }

    fn push_insert_replies(q: &mut QueryBuilder<Sqlite>, rows: &[&IdempotencyRecord], now: i64) {
        q.push(
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
    }

    pub(super) async fn insert_outbox(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        rows: &[OutboxRow],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        let mut q = QueryBuilder::new("");
        Self::push_insert_outbox(&mut q, rows, now);
        q.build().execute(&mut **tx).await.map(drop)
    }

    fn push_insert_outbox(q: &mut QueryBuilder<Sqlite>, rows: &[OutboxRow], now: i64) {
        q.push(
            "INSERT INTO outbox (message_id, topic, aggregate_id, stream_version, event_type, \
             payload, request_id, traceparent, next_attempt_at, created_at) ",
        );
        q.push_values(rows, |mut b, r| {
            b.push_bind(r.message_id)
                .push_bind("events")
                .push_bind(r.aggregate)
                .push_bind(r.version)
                .push_bind(r.event_type)
                .push_bind(r.payload.clone())
                .push_bind(r.request_id.clone())
                .push_bind(r.traceparent.clone())
                .push_bind(now)
                .push_bind(now);
        });
    }

    /// The whole batch — the check for answered keys, the facts, the read
    /// models and side records — in one query of many statements, which
    /// the driver runs in a row on its worker thread: one hand-off to it
    /// instead of one per statement, which is most of what a commit costs
    /// (each hand-off wakes two threads). What the checks find rolls it all
    /// back, as the statement-at-a-time path would never have written it.
    /// `None` for a batch that needs that path: an append without facts
    /// (its staleness is checked before any fact is written), or one too
    /// big for one statement per table.
    pub(super) async fn write_at_once(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        live: &[(usize, &Append)],
        log: &[LogRow],
        now: i64,
    ) -> Result<Option<Checked>, sqlx::Error> {
        if live.iter().any(|(_, a)| a.facts.is_empty()) || live.len() > CHUNK || log.len() > CHUNK {
            return Ok(None);
        }
        let appends: Vec<&Append> = live.iter().map(|(_, a)| *a).collect();
        let keyed = keyed(live);
        let mut q = QueryBuilder::new("");
        let mut statements = 0;
        let mut next = |q: &mut QueryBuilder<Sqlite>| {
            if statements > 0 {
                q.push(";\n");
            }
            statements += 1;
        };
        if !keyed.is_empty() {
            next(&mut q);
            let keys: Vec<(Uuid, String)> = keyed
                .iter()
                .map(|(_, r)| (r.user.as_uuid(), r.key.clone()))
                .collect();
            Self::push_select_answers(&mut q, &keys, now);
        }
        next(&mut q);
        Self::push_insert_log(&mut q, log, now);
        let summaries = latest_summaries(&appends);
        next(&mut q);
        Self::push_events_upsert(&mut q, &summaries, now);
        for event in retagged(&summaries, &appends) {
            next(&mut q);
            Self::push_delete_tags(&mut q, event);
            if !event.details.tags.is_empty() {
                next(&mut q);
                Self::push_insert_tags(&mut q, event);
            }
        }
        let memberships = membership_rows(appends.iter().copied());
        if !memberships.is_empty() {
            next(&mut q);
            Self::push_upsert_joins(&mut q, &memberships);
        }
        for append in appends.iter().filter(|a| a.cancels()) {
            next(&mut q);
            Self::push_cancel(&mut q, append.stream, now);
        }
        let snapshots = latest_snapshots(&appends);
        if !snapshots.is_empty() {
            next(&mut q);
            Self::push_snapshots(&mut q, &snapshots, now);
        }
        let replies: Vec<&IdempotencyRecord> =
            keyed.iter().map(|(_, r)| *r).filter(|r| r.keep).collect();
        if !replies.is_empty() {
            next(&mut q);
            Self::push_insert_replies(&mut q, &replies, now);
        }
        let outbox: Vec<OutboxRow> = log.iter().map(LogRow::outbox).collect();
        next(&mut q);
        Self::push_insert_outbox(&mut q, &outbox, now);

        // Rows come back in statement order: the stored answers (four
        // columns), then the versions written (two).
        let mut stored: HashMap<(Uuid, String), Given> = HashMap::new();
        let mut written: HashSet<(Uuid, i64)> = HashSet::with_capacity(log.len());
        for row in q.build().fetch_all(&mut **tx).await? {
            if row.len() == 4 {
                let answer: AnswerRow = (
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                );
                let (key, given) = stored_answer(answer)?;
                stored.insert(key, given);
            } else {
                written.insert((row.try_get(0)?, row.try_get(1)?));
            }
        }
        let answered = answered(keyed, stored);
        if !answered.is_empty() {
            return Ok(Some(Checked::Answered(answered)));
        }
        let lost = lost(log, &written);
        Ok(Some(if lost.is_empty() {
            Checked::Written
        } else {
            Checked::Lost(lost)
        }))
    }
}

/// Postgres's bulk writes: one statement per table over `UNNEST`ed arrays,
/// prepared once whatever the batch size (a multi-row `VALUES` is a new
/// statement to parse and plan for every size).
impl SqlStore<Postgres> {
    /// Postgres binds one statement at a time: every batch goes statement
    /// by statement (see the SQLite one).
    pub(super) async fn write_at_once(
        _: &mut sqlx::Transaction<'_, Postgres>,
        _: &[(usize, &Append)],
        _: &[LogRow],
        _: i64,
    ) -> Result<Option<Checked>, sqlx::Error> {
        Ok(None)
    }

    pub(super) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
        self.commit_pool.begin().await
    }

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

    pub(super) async fn upsert_joins(
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
     order_key = excluded.order_key, joined_at = excluded.joined_at, updated_at = excluded.updated_at";
