//! Postgres's group commit: an attempt is a transaction on the journal's
//! own connection of three round trips — `BEGIN`, one statement that makes
//! the batch's checks and writes every table, `COMMIT` (or `ROLLBACK`, if
//! a check failed).
//!
//! Why one statement: each round trip to the database costs a commit a
//! quarter to half a millisecond on a busy machine and wakes the journal's
//! task twice, and a batch made ten of them in turn. All parts of a
//! statement see the database as it was when it began, so the checks in it
//! (keys answered before, the latest version of streams whose append has no
//! facts) read what they would have read first in the transaction; the
//! lease check locks the newest version of its rows, whenever in the
//! statement it runs; and whatever the statement wrote is rolled back when
//! a check fails.

use std::collections::{HashMap, HashSet};

use sqlx::{Postgres, QueryBuilder};
use turnout_actors::domain::EventState;
use turnout_actors::idempotency::Given;
use turnout_actors::store::{Append, EventSummary, IdempotencyRecord, StoreError, membership_rows};
use uuid::Uuid;

use super::{
    AnswerRow, Checked, LogRow, OutboxRow, Step, Steps, answer_json, answered, keyed,
    latest_snapshots, latest_summaries, lost, retagged, stale, stored_answer,
    streams_without_facts,
};
use crate::store::SqlStore;
use crate::store::{micros, unavailable};

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

/// The batch's checks and writes: `$1` is the commit's time; each table's
/// rows come as one array per column. It answers a row per lease this node
/// holds of the shards asked about (`held`: shard, epoch), per fact written
/// (`written`: stream, version), per stream asked about (`latest`: its
/// latest stored version, NULL for none) and per key answered before
/// (`answered`: user, key, fingerprint, answer).
///
/// The leases are locked against a taking until the transaction ends, so a
/// node taking a shard waits for this commit and then loads what it wrote;
/// in shard order, as a taking and a renewal lock them, so no deadlock. A
/// locking read takes the newest version of a row, not the statement's
/// snapshot: a taking committed while the statement ran is seen.
///
/// The lookups are written so that whatever plan the journal's one
/// connection keeps for the statement, each is an index probe per row: a
/// `LATERAL … LIMIT 1` for the keys (a join Postgres might hash over the
/// whole table), scalar subqueries for the versions. A key's answer is
/// written once; a row still there after it expired (the purge runs on an
/// interval) is replaced, not left to shadow the new one. The outbox takes
/// only the facts written: another writer's fact at the same version has
/// its own row, which a second one would collide with.
const BATCH: &str = concat!(
    "WITH \
     held AS (SELECT CAST(shard AS BIGINT) AS shard, epoch FROM shard_leases \
       WHERE node IS NOT NULL AND shard = ANY($53::int8[]) ORDER BY shard FOR SHARE), \
     keys (u, k) AS (SELECT * FROM UNNEST($2::uuid[], $3::text[])), \
     answered AS (SELECT i.user_id, i.key, i.fingerprint, i.answer::text AS answer FROM keys \
       CROSS JOIN LATERAL (SELECT user_id, key, fingerprint, answer FROM idempotency_keys \
         WHERE user_id = keys.u AND key = keys.k AND expires_at > $1 LIMIT 1) i), \
     latest AS (SELECT s, (SELECT max(version) FROM event_log WHERE stream_id = w.s) AS v \
       FROM UNNEST($4::uuid[]) AS w(s)), \
     x (s, v, t, sv, p, r, after_own) AS (SELECT * FROM UNNEST($5::uuid[], $6::int8[], \
       $7::text[], $8::int8[], $9::text[], $10::text[], $11::bool[])), \
     written AS (INSERT INTO event_log (stream_id, version, event_type, schema_version, \
       payload, request_id, recorded_at) SELECT s, v, t, sv, p::jsonb, r, $1",
    follows!(),
    " ON CONFLICT DO NOTHING RETURNING stream_id, version), \
     event_rows AS (INSERT INTO events (id, owner_id, venue_id, title, description, \
       starts_at, ends_at, capacity, status, active_count, offered_count, waitlist_count, \
       waitlist_mode, offer_hold_secs, max_party, waitlist_fill, version, created_at, \
       updated_at) \
       SELECT *, $1, $1 FROM UNNEST($12::uuid[], $13::uuid[], $14::uuid[], $15::text[], \
         $16::text[], $17::int8[], $18::int8[], $19::int8[], $20::text[], $21::int8[], \
         $22::int8[], $23::int8[], $24::text[], $25::int8[], $26::int8[], $27::text[], \
         $28::int8[])",
    events_upsert!(),
    "), \
     membership_rows AS (INSERT INTO joins (event_id, user_id, status, order_key, seats, \
       offer_expires_at, joined_at, updated_at) \
       SELECT * FROM UNNEST($29::uuid[], $30::uuid[], $31::text[], $32::int8[], $33::int8[], \
         $34::int8[], $35::int8[], $36::int8[]) \
       ON CONFLICT (event_id, user_id) DO UPDATE SET status = excluded.status, \
         order_key = excluded.order_key, seats = excluded.seats, \
         offer_expires_at = excluded.offer_expires_at, joined_at = excluded.joined_at, \
         updated_at = excluded.updated_at), \
     snapshot_rows AS (INSERT INTO snapshots (stream_id, version, state, taken_at) \
       SELECT s, v, st::jsonb, $1 FROM UNNEST($37::uuid[], $38::int8[], $39::text[]) \
         AS y(s, v, st) \
       ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, \
         state = excluded.state, taken_at = excluded.taken_at \
         WHERE snapshots.version <= excluded.version), \
     reply_rows AS (INSERT INTO idempotency_keys (user_id, key, fingerprint, answer, \
       created_at, expires_at) \
       SELECT u, k, f, a::jsonb, ca, ea FROM UNNEST($40::uuid[], $41::text[], $42::text[], \
         $43::text[], $44::int8[], $45::int8[]) AS z(u, k, f, a, ca, ea) \
       ON CONFLICT (user_id, key) DO UPDATE SET fingerprint = excluded.fingerprint, \
         answer = excluded.answer, created_at = excluded.created_at, \
         expires_at = excluded.expires_at WHERE idempotency_keys.expires_at <= $1), \
     outbox_rows AS (INSERT INTO outbox (message_id, topic, aggregate_id, stream_version, \
       event_type, payload, request_id, traceparent, next_attempt_at, created_at) \
       SELECT m, 'events', a, o.v, t, p::jsonb, r, tp, $1, $1 \
       FROM UNNEST($46::uuid[], $47::uuid[], $48::int8[], $49::text[], $50::text[], \
         $51::text[], $52::text[]) AS o(m, a, v, t, p, r, tp) \
       JOIN written ON written.stream_id = o.a AND written.version = o.v) \
     SELECT 'held', NULL::uuid, epoch, shard, NULL::text, NULL::text, NULL::text FROM held \
     UNION ALL SELECT 'written', stream_id, version, NULL, NULL, NULL, NULL FROM written \
     UNION ALL SELECT 'latest', s, v, NULL, NULL, NULL, NULL FROM latest \
     UNION ALL SELECT 'answered', user_id, NULL, NULL, key, fingerprint, answer FROM answered"
);

/// A row `BATCH` answers: its kind, then the columns that kind sets.
type FoundRow = (
    String,
    Option<Uuid>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// One column of `rows`, as an array parameter for `UNNEST`.
fn column<T, U>(rows: &[T], value: impl Fn(&T) -> U) -> Vec<U> {
    rows.iter().map(value).collect()
}

/// What `BATCH` found, a row at a time.
enum Found {
    Held { shard: i64, epoch: i64 },
    Written { stream: Uuid, version: i64 },
    Latest { stream: Uuid, version: Option<i64> },
    Answered(AnswerRow),
}

impl TryFrom<FoundRow> for Found {
    type Error = sqlx::Error;

    fn try_from(row: FoundRow) -> Result<Self, sqlx::Error> {
        Ok(match row {
            (kind, None, Some(epoch), Some(shard), ..) if kind == "held" => {
                Found::Held { shard, epoch }
            }
            (kind, Some(stream), Some(version), ..) if kind == "written" => {
                Found::Written { stream, version }
            }
            (kind, Some(stream), version, ..) if kind == "latest" => {
                Found::Latest { stream, version }
            }
            (kind, Some(user), _, _, Some(key), Some(fingerprint), Some(answer))
                if kind == "answered" =>
            {
                Found::Answered((user, key, fingerprint, answer))
            }
            (kind, ..) => {
                return Err(sqlx::Error::Protocol(format!(
                    "the batch statement answered a row of kind {kind} without its columns"
                )));
            }
        })
    }
}

impl SqlStore<Postgres> {
    /// One attempt at a batch: a transaction on the journal's own
    /// connection, committed only if every check passed.
    pub(super) async fn attempt(
        &self,
        live: &[(usize, &Append)],
        now: i64,
    ) -> Result<Checked, StoreError> {
        let mut steps = Steps::start();
        let mut tx = self.writer.begin().await.map_err(unavailable)?;
        steps.done(Step::Begin);
        let checked = Self::write_batch(&mut tx, live, now)
            .await
            .map_err(unavailable)?;
        steps.done(Step::Batch);
        match checked {
            Checked::Written => tx.commit().await,
            _ => tx.rollback().await,
        }
        .map_err(unavailable)?;
        steps.done(Step::Commit);
        Ok(checked)
    }

    /// The batch's checks and writes: the statement `BATCH`, then what it
    /// found, in the order the checks stand — appends whose shard this node
    /// no longer holds at the epoch their actor was activated with (taken
    /// by another node, or released), keys answered before (or taken
    /// earlier in the batch), appends without facts on a stale
    /// version, facts whose versions were taken — and, once all passed, the
    /// rare writes that depend on rows it wrote: an event's new tags, a
    /// cancelled event's memberships.
    async fn write_batch(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        live: &[(usize, &Append)],
        now: i64,
    ) -> Result<Checked, sqlx::Error> {
        let appends: Vec<&Append> = live.iter().map(|(_, a)| *a).collect();
        let log = LogRow::of_batch(&appends);
        let keyed = keyed(live);
        let streams = streams_without_facts(live);
        let summaries = latest_summaries(&appends);

        let rows: Vec<FoundRow> =
            Self::batch_statement(live, &keyed, &streams, &log, &summaries, &appends, now)
                .fetch_all(&mut **tx)
                .await?;
        let mut held: HashMap<i64, i64> = HashMap::new();
        let mut written: HashSet<(Uuid, i64)> = HashSet::with_capacity(log.len());
        let mut latest: HashMap<Uuid, u64> = HashMap::with_capacity(streams.len());
        let mut stored: HashMap<(Uuid, String), Given> = HashMap::new();
        for row in rows {
            match Found::try_from(row)? {
                Found::Held { shard, epoch } => {
                    held.insert(shard, epoch);
                }
                Found::Written { stream, version } => {
                    written.insert((stream, version));
                }
                Found::Latest { stream, version } => {
                    latest.insert(stream, version.unwrap_or(0) as u64);
                }
                Found::Answered(row) => {
                    let (key, given) = stored_answer(row)?;
                    stored.insert(key, given);
                }
            }
        }

        let fenced: Vec<usize> = live
            .iter()
            .filter(|(_, a)| {
                a.lease
                    .is_some_and(|l| held.get(&i64::from(l.shard.get())) != Some(&(l.epoch as i64)))
            })
            .map(|(i, _)| *i)
            .collect();
        if !fenced.is_empty() {
            return Ok(Checked::Fenced(fenced));
        }
        let answered = answered(keyed, stored);
        if !answered.is_empty() {
            return Ok(Checked::Answered(answered));
        }
        if !streams.is_empty() {
            let versions = live
                .iter()
                .map(|(i, a)| (*i, a.stream, a.base_version, a.facts.len()));
            let stale = stale(versions, latest);
            if !stale.is_empty() {
                return Ok(Checked::Stale(stale));
            }
        }
        let lost = lost(&log, &written);
        if !lost.is_empty() {
            return Ok(Checked::Lost(lost));
        }

        for s in retagged(&summaries, &appends) {
            sqlx::query("DELETE FROM event_tags WHERE event_id = $1")
                .bind(s.id.as_uuid())
                .execute(&mut **tx)
                .await?;
            if !s.details.tags.is_empty() {
                let mut q =
                    QueryBuilder::<Postgres>::new("INSERT INTO event_tags (tag, event_id) ");
                q.push_values(&s.details.tags, |mut b, tag| {
                    b.push_bind(tag.as_str().to_owned())
                        .push_bind(s.id.as_uuid());
                });
                q.build().execute(&mut **tx).await?;
            }
        }
        for a in appends.iter().filter(|a| a.cancels()) {
            // Every membership of a cancelled event ends.
            sqlx::query(
                "UPDATE joins SET status = 'cancelled', updated_at = $1 \
                 WHERE event_id = $2 AND status IN ('active', 'waitlisted', 'offered')",
            )
            .bind(now)
            .bind(a.stream.as_uuid())
            .execute(&mut **tx)
            .await?;
        }
        Ok(Checked::Written)
    }

    /// `BATCH` with the batch's rows bound, a column at a time.
    fn batch_statement<'q>(
        live: &[(usize, &Append)],
        keyed: &[(usize, &IdempotencyRecord)],
        streams: &[Uuid],
        log: &[LogRow],
        summaries: &[&EventSummary],
        appends: &[&Append],
        now: i64,
    ) -> sqlx::query::QueryAs<'q, Postgres, FoundRow, sqlx::postgres::PgArguments> {
        // A key taken twice in the batch is written once: the check
        // leaves the later append out, and an upsert may not touch a row
        // twice in one statement.
        let mut seen = HashSet::new();
        let replies: Vec<&IdempotencyRecord> = keyed
            .iter()
            .map(|(_, r)| *r)
            .filter(|r| r.keep && seen.insert((r.user, r.key.as_str())))
            .collect();
        let memberships = membership_rows(appends.iter().copied());
        let snapshots: Vec<&EventState> = latest_snapshots(appends);
        let outbox: Vec<OutboxRow> = log.iter().map(LogRow::outbox).collect();
        let mut shards: Vec<i64> = live
            .iter()
            .filter_map(|(_, a)| a.lease.map(|l| i64::from(l.shard.get())))
            .collect();
        shards.sort_unstable();
        shards.dedup();
        sqlx::query_as(BATCH)
            .bind(now)
            // Keys asked about.
            .bind(column(keyed, |(_, r)| r.user.as_uuid()))
            .bind(column(keyed, |(_, r)| r.key.clone()))
            // Streams whose latest version is asked for.
            .bind(streams.to_vec())
            // The facts.
            .bind(column(log, |r| r.stream))
            .bind(column(log, |r| r.version))
            .bind(column(log, |r| r.event_type))
            .bind(column(log, |r| r.schema_version))
            .bind(column(log, |r| r.payload.clone()))
            .bind(column(log, |r| r.request_id.clone()))
            .bind(column(log, |r| r.after_own))
            // Event rows.
            .bind(column(summaries, |s| s.id.as_uuid()))
            .bind(column(summaries, |s| s.owner.as_uuid()))
            .bind(column(summaries, |s| s.details.venue_id.as_uuid()))
            .bind(column(summaries, |s| s.details.title.as_str().to_owned()))
            .bind(column(summaries, |s| {
                s.details
                    .description
                    .as_ref()
                    .map(|d| d.as_str().to_owned())
            }))
            .bind(column(summaries, |s| micros(s.details.starts_at)))
            .bind(column(summaries, |s| s.details.ends_at.map(micros)))
            .bind(column(summaries, |s| i64::from(s.capacity)))
            .bind(column(summaries, |s| s.lifecycle.as_str()))
            .bind(column(summaries, |s| s.active_count as i64))
            .bind(column(summaries, |s| s.offered_count as i64))
            .bind(column(summaries, |s| s.waitlist_count as i64))
            .bind(column(summaries, |s| s.policy.mode.as_str()))
            .bind(column(summaries, |s| i64::from(s.policy.offer_hold)))
            .bind(column(summaries, |s| i64::from(s.policy.max_party)))
            .bind(column(summaries, |s| s.policy.fill.as_str()))
            .bind(column(summaries, |s| s.version as i64))
            // Memberships.
            .bind(column(&memberships, |r| r.event_id.as_uuid()))
            .bind(column(&memberships, |r| r.user_id.as_uuid()))
            .bind(column(&memberships, |r| r.status.as_str()))
            .bind(column(&memberships, |r| r.order_key))
            .bind(column(&memberships, |r| i64::from(r.seats)))
            .bind(column(&memberships, |r| r.offer_expires_at.map(micros)))
            .bind(column(&memberships, |r| micros(r.joined_at)))
            .bind(column(&memberships, |r| micros(r.updated_at)))
            // Snapshots.
            .bind(column(&snapshots, |s| s.id.as_uuid()))
            .bind(column(&snapshots, |s| s.version as i64))
            .bind(column(&snapshots, |s| {
                serde_json::to_string(s).expect("a state serialises")
            }))
            // Answers kept.
            .bind(column(&replies, |r| r.user.as_uuid()))
            .bind(column(&replies, |r| r.key.clone()))
            .bind(column(&replies, |r| r.fingerprint.clone()))
            .bind(column(&replies, |r| answer_json(&r.answer)))
            .bind(column(&replies, |r| micros(r.created_at)))
            .bind(column(&replies, |r| micros(r.expires_at)))
            // Outbox rows.
            .bind(column(&outbox, |r| r.message_id))
            .bind(column(&outbox, |r| r.aggregate))
            .bind(column(&outbox, |r| r.version))
            .bind(column(&outbox, |r| r.event_type))
            .bind(column(&outbox, |r| r.payload.clone()))
            .bind(column(&outbox, |r| r.request_id.clone()))
            .bind(column(&outbox, |r| r.traceparent.clone()))
            // Shards whose leases are checked.
            .bind(shards)
    }

    /// The answers stored (and unexpired) for `keys`.
    pub(super) async fn select_answers(
        conn: &mut sqlx::PgConnection,
        keys: &[(Uuid, String)],
        now: i64,
    ) -> Result<Vec<AnswerRow>, sqlx::Error> {
        // One primary-key lookup per key, whatever the plan cache holds
        // (see `BATCH`).
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
}
