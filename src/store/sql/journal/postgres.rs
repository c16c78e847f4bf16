//! Postgres's group commit, on the journal's own connection
//! ([`PgWriter`]). An attempt is one round trip when its checks pass: one
//! autocommitted statement that makes the batch's checks, writes every
//! table and, if a check failed, raises, so that it writes nothing
//! (`BATCH_OR_REFUSE`). Only then is the batch run again in a transaction
//! that reads what each check found (`BEGIN`, `BATCH`, then `ROLLBACK`
//! and the next attempt leaves the failed appends out — or `COMMIT`, if
//! the checks pass this time). A batch the one statement cannot check
//! takes the transaction from the start: its writes depend on rows it
//! writes (an event's new tags, a cancelled event's memberships), a key is
//! taken twice in it, or an append is stale whatever is stored.
//!
//! Why one statement: each round trip to the database costs a commit a
//! quarter to half a millisecond on a busy machine and wakes the journal's
//! task twice. All parts of a statement see the database as it was when it
//! began, so the checks in it (keys answered before, the latest version of
//! streams whose append has no facts) read what they would have read first
//! in a transaction; the lease check locks the newest version of its rows,
//! whenever in the statement it runs; and whatever the statement wrote is
//! undone when it raises.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgArguments, PgConnectOptions, PgDatabaseError, PgSeverity};
use sqlx::{Arguments, Connection, PgConnection, Postgres, QueryBuilder};
use tokio::sync::{Mutex, MutexGuard};
use turnout_actors::domain::{EventId, EventState};
use turnout_actors::idempotency::Given;
use turnout_actors::store::{Append, EventSummary, IdempotencyRecord, StoreError, membership_rows};
use uuid::Uuid;

use super::{
    AnswerRow, Checked, LogRow, OutboxRow, Step, Steps, answer_json, answered, keyed,
    latest_snapshots, latest_summaries, lost, retagged, stale, stored_answer,
    streams_without_facts, unstale_versions,
};
use crate::store::SqlStore;
use crate::store::sql::live_statuses;
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

/// The batch's checks and writes, up to what the statement answers (a
/// macro, so that `BATCH` and `BATCH_OR_REFUSE` can `concat!` it): `$1` is
/// the commit's time; each table's rows come as one array per column. What
/// the checks read: the leases this node holds of the shards asked about
/// (`held`: shard, epoch), the facts written (`written`: stream, version),
/// the streams asked about (`latest`: its latest stored version, NULL for
/// none) and the keys answered before (`answered`: user, key, fingerprint,
/// answer).
///
/// The leases are locked against a taking until the statement's
/// transaction ends, so a node taking a shard waits for this commit and
/// then loads what it wrote; in shard order, as a taking and a renewal
/// lock them, so no deadlock. A locking read takes the newest version of a
/// row, not the statement's snapshot: a taking committed while the
/// statement ran is seen.
///
/// The lookups are written so that whatever plan the journal's one
/// connection keeps for the statement, each is an index probe per row: a
/// `LATERAL … LIMIT 1` for the keys (a join Postgres might hash over the
/// whole table), scalar subqueries for the versions. A key's answer is
/// written once; a row still there after it expired (the purge runs on an
/// interval) is replaced, not left to shadow the new one. The outbox takes
/// only the facts written: another writer's fact at the same version has
/// its own row, which a second one would collide with.
macro_rules! batch_writes {
    () => {
        concat!(
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
               payload, request_id, recorded_at) SELECT s, v, t, sv, p::json, r, $1",
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
               SELECT s, v, st::json, $1 FROM UNNEST($37::uuid[], $38::int8[], $39::text[]) \
                 AS y(s, v, st) \
               ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, \
                 state = excluded.state, taken_at = excluded.taken_at \
                 WHERE snapshots.version <= excluded.version), \
             reply_rows AS (INSERT INTO idempotency_keys (user_id, key, fingerprint, answer, \
               created_at, expires_at) \
               SELECT u, k, f, a::json, ca, ea FROM UNNEST($40::uuid[], $41::text[], $42::text[], \
                 $43::text[], $44::int8[], $45::int8[]) AS z(u, k, f, a, ca, ea) \
               ON CONFLICT (user_id, key) DO UPDATE SET fingerprint = excluded.fingerprint, \
                 answer = excluded.answer, created_at = excluded.created_at, \
                 expires_at = excluded.expires_at WHERE idempotency_keys.expires_at <= $1 \
               RETURNING user_id, key), \
             outbox_rows AS (INSERT INTO outbox (message_id, topic, aggregate_id, stream_version, \
               event_type, payload, request_id, traceparent, next_attempt_at, created_at) \
               SELECT m, 'events', a, o.v, t, p::json, r, tp, 0, $1 \
               FROM UNNEST($46::uuid[], $47::uuid[], $48::int8[], $49::text[], $50::text[], \
                 $51::text[], $52::text[]) WITH ORDINALITY AS o(m, a, v, t, p, r, tp, n) \
               JOIN written ON written.stream_id = o.a AND written.version = o.v \
               ORDER BY o.n)"
        )
    };
}

/// The batch's checks and writes, answering a row for each thing a check
/// read: a lease held, a fact written, a stream's latest version, a key
/// answered before. Run in a transaction, which is rolled back if a check
/// failed.
const BATCH: &str = concat!(
    batch_writes!(),
    " SELECT 'held', NULL::uuid, epoch, shard, NULL::text, NULL::text, NULL::text FROM held \
     UNION ALL SELECT 'written', stream_id, version, NULL, NULL, NULL, NULL FROM written \
     UNION ALL SELECT 'latest', s, v, NULL, NULL, NULL, NULL FROM latest \
     UNION ALL SELECT 'answered', user_id, NULL, NULL, key, fingerprint, answer FROM answered \
     UNION ALL SELECT 'replied', user_id, NULL, NULL, key, NULL, NULL FROM reply_rows"
);

/// The batch's checks and writes as one autocommitted statement, which
/// raises (`REFUSED`, from `turnout_refuse_unless`) and so writes nothing
/// unless every check passed: every lease expected (`$54`: shard, `$55`:
/// epoch; each pair once) is held, no key was answered before, each stream
/// expected to be at a version (`$56`, `$57`; see `unstale_versions`) is,
/// every fact was written and every answer kept. (A key another node's
/// journal wrote after this statement's snapshot was taken is not in
/// `answered`: the upsert waits for that commit and then leaves the row,
/// unexpired, alone.)
///
/// A lease counts as held only once its row is read, and `held` reads
/// its rows `FOR SHARE`: a statement that passes has locked every lease it
/// checked, until it commits.
const BATCH_OR_REFUSE: &str = concat!(
    batch_writes!(),
    " SELECT turnout_refuse_unless( \
       (SELECT count(*) FROM held \
         JOIN UNNEST($54::int8[], $55::int8[]) AS f(shard, epoch) \
         ON held.shard = f.shard AND held.epoch = f.epoch) = cardinality($54::int8[]) \
       AND NOT EXISTS (SELECT 1 FROM answered) \
       AND NOT EXISTS (SELECT 1 FROM UNNEST($56::uuid[], $57::int8[]) AS e(s, v) \
         JOIN latest ON latest.s = e.s WHERE COALESCE(latest.v, 0) <> e.v) \
       AND (SELECT count(*) FROM written) = cardinality($5::uuid[]) \
       AND (SELECT count(*) FROM reply_rows) = cardinality($40::uuid[]))"
);

/// The SQLSTATE `turnout_refuse_unless` raises (migration 0013).
const REFUSED: &str = "TN001";

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
    Held {
        shard: i64,
        epoch: i64,
    },
    Written {
        stream: Uuid,
        version: i64,
    },
    Latest {
        stream: Uuid,
        version: Option<i64>,
    },
    Answered(AnswerRow),
    /// An answer written by this batch.
    Replied {
        user: Uuid,
        key: String,
    },
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
            (kind, Some(user), _, _, Some(key), ..) if kind == "replied" => {
                Found::Replied { user, key }
            }
            (kind, ..) => {
                return Err(sqlx::Error::Protocol(format!(
                    "the batch statement answered a row of kind {kind} without its columns"
                )));
            }
        })
    }
}

/// What the re-read found of the answers a batch meant to write and did
/// not (`missing`: index, stream, key): a key answered meanwhile is a
/// replay. A key neither written nor found had an answer that expired,
/// and the purge deleted it, between the statement and the re-read: the
/// key is free again, so its stream's appends are left out for their
/// actors to decide again, as after a lost race. `None`: nothing missing.
fn meanwhile<'a>(
    missing: impl IntoIterator<Item = (usize, EventId, &'a IdempotencyRecord)>,
    stored: &HashMap<(Uuid, String), Given>,
) -> Option<Checked> {
    let mut answered = Vec::new();
    let mut vanished = HashSet::new();
    for (i, stream, record) in missing {
        match stored.get(&(record.user.as_uuid(), record.key.clone())) {
            Some(given) => answered.push((i, given.clone())),
            None => {
                vanished.insert(stream);
            }
        }
    }
    if !answered.is_empty() {
        Some(Checked::Answered(answered))
    } else if !vanished.is_empty() {
        Some(Checked::Lost(vanished))
    } else {
        None
    }
}

/// The journal's own Postgres connection: one connection, not a pool of
/// one, because a pool checks a connection with a round trip when it
/// hands it out and again when it takes it back (sqlx's
/// `test_before_acquire` and its check on release), two of what were a
/// commit's five round trips. This one is checked only after it sat idle
/// for `IDLE_CHECK`, when the server or the network may have closed it,
/// and opened again after any failure that was not the database's answer
/// to a statement.
///
/// Postgres does not notice a client gone while a statement runs: a commit
/// the journal cut off at its `commit_timeout` (its callers told 503, its
/// actor gone) would run on and land under a replacement that loaded
/// without it. So the connection gives up on any statement, or a wait for
/// a lock, at three fifths of that timeout, and the one autocommitted
/// statement (which commits by itself) is sent only within the first fifth
/// of a commit: begun later, say after a retried attempt or a reconnect, it
/// could still be running when the journal gives up. A later attempt takes
/// the transaction, which a connection dropped before its `COMMIT` rolls
/// back.
pub struct PgWriter {
    options: PgConnectOptions,
    connection: Mutex<Option<Open>>,
    one_statement_within: Duration,
}

/// The writer's connection, and when it was last used.
struct Open {
    connection: PgConnection,
    used: Instant,
}

/// How long the journal's connection may sit unused before its next use
/// checks it first.
const IDLE_CHECK: Duration = Duration::from_secs(10);

impl Open {
    /// A new connection, counted for operators.
    async fn new(options: &PgConnectOptions) -> Result<Self, sqlx::Error> {
        let connection = PgConnection::connect_with(options).await?;
        metrics::counter!("turnout_journal_connections_opened_total").increment(1);
        Ok(Self {
            connection,
            used: Instant::now(),
        })
    }
}

impl PgWriter {
    /// The writer of a journal that waits `commit_within` for a commit.
    pub async fn connect(
        options: PgConnectOptions,
        commit_within: Duration,
    ) -> Result<Self, sqlx::Error> {
        let gives_up = format!("{}ms", (commit_within * 3 / 5).as_millis().max(1));
        let options = options.options([
            ("statement_timeout", gives_up.as_str()),
            ("lock_timeout", gives_up.as_str()),
        ]);
        let open = Open::new(&options).await?;
        Ok(Self {
            options,
            connection: Mutex::new(Some(open)),
            one_statement_within: commit_within / 5,
        })
    }

    /// The connection, for one attempt: checked first if it sat idle, and
    /// opened again if it was found broken.
    async fn lock(&self) -> Result<Writing<'_>, sqlx::Error> {
        let mut slot = self.connection.lock().await;
        let mut kept = slot.take();
        if let Some(open) = kept.as_mut()
            && open.used.elapsed() > IDLE_CHECK
            && open.connection.ping().await.is_err()
        {
            kept = None;
        }
        let open = match kept {
            Some(open) => open,
            None => Open::new(&self.options).await?,
        };
        Ok(Writing { slot, open })
    }
}

/// The writer's connection, taken out for one attempt. Only `settle`
/// puts it back: an attempt cut off (the journal's timeout drops the
/// commit's future) may have left a statement running or a transaction
/// open on it, so its connection is closed with it, which ends both on the
/// server, and the next attempt opens another.
struct Writing<'a> {
    slot: MutexGuard<'a, Option<Open>>,
    open: Open,
}

impl Writing<'_> {
    fn connection(&mut self) -> &mut PgConnection {
        &mut self.open.connection
    }

    /// What the attempt came to; the connection goes back unless the
    /// failure left it unusable (see `leaves_usable`).
    fn settle<T>(self, outcome: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        let Writing { mut slot, mut open } = self;
        match &outcome {
            Err(error) if !leaves_usable(error) => {
                tracing::warn!(%error, "the journal's Postgres connection failed; the next commit opens another");
            }
            _ => {
                open.used = Instant::now();
                *slot = Some(open);
            }
        }
        outcome
    }
}

/// Whether a connection that failed with `e` can take the next attempt:
/// yes after the database's answer to a statement (a refusal, a
/// constraint) and after a value that would not encode or decode; no after
/// a socket or protocol failure, or an error the server ends the session
/// with (severity `FATAL` or `PANIC`: shut down by an administrator, an
/// idle transaction timed out).
fn leaves_usable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .try_downcast_ref::<PgDatabaseError>()
            .is_none_or(|pg| !matches!(pg.severity(), PgSeverity::Fatal | PgSeverity::Panic)),
        sqlx::Error::Encode(_) | sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => true,
        _ => false,
    }
}

/// A batch's rows, each table's worked out once for whichever statement
/// takes them.
struct Rows<'a> {
    live: &'a [(usize, &'a Append)],
    appends: Vec<&'a Append>,
    log: Vec<LogRow>,
    keyed: Vec<(usize, &'a IdempotencyRecord)>,
    /// Streams whose latest version is asked for.
    streams: Vec<Uuid>,
    summaries: Vec<&'a EventSummary>,
    /// Shard and epoch of each lease the appends were decided under, each
    /// pair once, in shard order.
    leases: Vec<(i64, i64)>,
}

impl<'a> Rows<'a> {
    fn of(live: &'a [(usize, &'a Append)]) -> Self {
        let appends: Vec<&Append> = live.iter().map(|(_, a)| *a).collect();
        let mut leases: Vec<(i64, i64)> = appends
            .iter()
            .filter_map(|a| a.lease.map(|l| (i64::from(l.shard.get()), l.epoch as i64)))
            .collect();
        leases.sort_unstable();
        leases.dedup();
        Self {
            live,
            log: LogRow::of_batch(&appends),
            keyed: keyed(live),
            streams: streams_without_facts(live),
            summaries: latest_summaries(&appends),
            leases,
            appends,
        }
    }

    /// The answers the batch writes, with their appends' indexes: a key
    /// taken twice once (the check leaves the later append
    /// out, and an upsert may not touch a row twice in one statement).
    fn replies(&self) -> impl Iterator<Item = (usize, &'a IdempotencyRecord)> + '_ {
        let mut seen = HashSet::new();
        self.keyed
            .iter()
            .copied()
            .filter(move |(_, r)| seen.insert((r.user, r.key.as_str())))
    }

    /// Each append's index, stream, base version and number of facts.
    fn versions(&self) -> impl Iterator<Item = (usize, EventId, u64, usize)> + '_ {
        self.live
            .iter()
            .map(|(i, a)| (*i, a.stream, a.base_version, a.facts.len()))
    }

    /// What the one statement must find, besides every lease held at its
    /// epoch, for no append to be left out: the latest stored version of
    /// each stream whose append without facts comes before any of its facts
    /// (none stored: 0). `None` if the batch needs the transaction: its
    /// writes depend on rows it writes (an event's new tags, a cancelled
    /// event's memberships), a key is taken twice in it, or an append is
    /// stale whatever is stored.
    fn expected_versions(&self) -> Option<Vec<(Uuid, u64)>> {
        if retagged(&self.summaries, &self.appends).next().is_some()
            || self.appends.iter().any(|a| a.cancels())
        {
            return None;
        }
        let mut keys = HashSet::with_capacity(self.keyed.len());
        if !self
            .keyed
            .iter()
            .all(|(_, r)| keys.insert((r.user, r.key.as_str())))
        {
            return None;
        }
        unstale_versions(self.versions())
    }

    /// `BATCH`'s parameters, then, for `BATCH_OR_REFUSE`, the leases and
    /// versions it expects.
    fn arguments(
        &self,
        now: i64,
        expected: Option<&[(Uuid, u64)]>,
    ) -> Result<PgArguments, sqlx::Error> {
        self.bind(now, expected).map_err(sqlx::Error::Encode)
    }

    fn bind(
        &self,
        now: i64,
        expected: Option<&[(Uuid, u64)]>,
    ) -> Result<PgArguments, sqlx::error::BoxDynError> {
        let (keyed, log, summaries) = (&self.keyed, &self.log, &self.summaries);
        let replies: Vec<&IdempotencyRecord> = self.replies().map(|(_, r)| r).collect();
        let memberships = membership_rows(self.appends.iter().copied());
        let snapshots: Vec<&EventState> = latest_snapshots(&self.appends);
        let outbox: Vec<OutboxRow> = log.iter().map(LogRow::outbox).collect();
        let mut shards: Vec<i64> = self.leases.iter().map(|(shard, _)| *shard).collect();
        shards.dedup();

        let mut a = PgArguments::default();
        a.add(now)?;
        // Keys asked about.
        a.add(column(keyed, |(_, r)| r.user.as_uuid()))?;
        a.add(column(keyed, |(_, r)| r.key.clone()))?;
        // Streams whose latest version is asked for.
        a.add(&self.streams)?;
        // The facts.
        a.add(column(log, |r| r.stream))?;
        a.add(column(log, |r| r.version))?;
        a.add(column(log, |r| r.event_type))?;
        a.add(column(log, |r| r.schema_version))?;
        a.add(column(log, |r| r.payload.clone()))?;
        a.add(column(log, |r| r.request_id.clone()))?;
        a.add(column(log, |r| r.after_own))?;
        // Event rows.
        a.add(column(summaries, |s| s.id.as_uuid()))?;
        a.add(column(summaries, |s| s.owner.as_uuid()))?;
        a.add(column(summaries, |s| s.details.venue_id.as_uuid()))?;
        a.add(column(summaries, |s| s.details.title.as_str().to_owned()))?;
        a.add(column(summaries, |s| {
            s.details
                .description
                .as_ref()
                .map(|d| d.as_str().to_owned())
        }))?;
        a.add(column(summaries, |s| micros(s.details.starts_at)))?;
        a.add(column(summaries, |s| s.details.ends_at.map(micros)))?;
        a.add(column(summaries, |s| i64::from(s.capacity)))?;
        a.add(column(summaries, |s| s.lifecycle.as_str()))?;
        a.add(column(summaries, |s| s.active_count as i64))?;
        a.add(column(summaries, |s| s.offered_count as i64))?;
        a.add(column(summaries, |s| s.waitlist_count as i64))?;
        a.add(column(summaries, |s| s.policy.mode.as_str()))?;
        a.add(column(summaries, |s| i64::from(s.policy.offer_hold)))?;
        a.add(column(summaries, |s| i64::from(s.policy.max_party)))?;
        a.add(column(summaries, |s| s.policy.fill.as_str()))?;
        a.add(column(summaries, |s| s.version as i64))?;
        // Memberships.
        a.add(column(&memberships, |r| r.event_id.as_uuid()))?;
        a.add(column(&memberships, |r| r.user_id.as_uuid()))?;
        a.add(column(&memberships, |r| r.status.as_str()))?;
        a.add(column(&memberships, |r| r.order_key))?;
        a.add(column(&memberships, |r| i64::from(r.seats)))?;
        a.add(column(&memberships, |r| r.offer_expires_at.map(micros)))?;
        a.add(column(&memberships, |r| micros(r.joined_at)))?;
        a.add(column(&memberships, |r| micros(r.updated_at)))?;
        // Snapshots.
        a.add(column(&snapshots, |s| s.id.as_uuid()))?;
        a.add(column(&snapshots, |s| s.version as i64))?;
        a.add(column(&snapshots, |s| {
            serde_json::to_string(s).expect("a state serialises")
        }))?;
        // Answers kept.
        a.add(column(&replies, |r| r.user.as_uuid()))?;
        a.add(column(&replies, |r| r.key.clone()))?;
        a.add(column(&replies, |r| r.fingerprint.clone()))?;
        a.add(column(&replies, |r| answer_json(&r.answer)))?;
        a.add(column(&replies, |r| micros(r.created_at)))?;
        a.add(column(&replies, |r| micros(r.expires_at)))?;
        // Outbox rows.
        a.add(column(&outbox, |r| r.message_id))?;
        a.add(column(&outbox, |r| r.aggregate))?;
        a.add(column(&outbox, |r| r.version))?;
        a.add(column(&outbox, |r| r.event_type))?;
        a.add(column(&outbox, |r| r.payload.clone()))?;
        a.add(column(&outbox, |r| r.request_id.clone()))?;
        a.add(column(&outbox, |r| r.traceparent.clone()))?;
        // Shards whose leases are checked.
        a.add(shards)?;
        if let Some(versions) = expected {
            a.add(column(&self.leases, |(shard, _)| *shard))?;
            a.add(column(&self.leases, |(_, epoch)| *epoch))?;
            a.add(column(versions, |(stream, _)| *stream))?;
            a.add(column(versions, |(_, version)| *version as i64))?;
        }
        Ok(a)
    }
}

/// Whether `BATCH_OR_REFUSE` refused: a check failed, and it wrote nothing.
fn refused(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some(REFUSED))
}

impl SqlStore<Postgres> {
    /// One attempt at a batch, on the journal's own connection, of a
    /// commit that `began` then.
    pub(super) async fn attempt(
        &self,
        live: &[(usize, &Append)],
        now: i64,
        began: Instant,
    ) -> Result<Checked, StoreError> {
        let mut writing = self.writer.lock().await.map_err(unavailable)?;
        let one_statement = began.elapsed() < self.writer.one_statement_within;
        let checked = Self::attempt_on(writing.connection(), live, now, one_statement).await;
        writing.settle(checked).map_err(unavailable)
    }

    /// The batch as one statement, if it can be (and `one_statement` allows
    /// it: see [`PgWriter`]), written whole unless a check fails; else, or
    /// then, in a transaction that reads which check failed, committed
    /// only if none did.
    async fn attempt_on(
        conn: &mut PgConnection,
        live: &[(usize, &Append)],
        now: i64,
        one_statement: bool,
    ) -> Result<Checked, sqlx::Error> {
        let rows = Rows::of(live);
        let mut steps = Steps::start();
        if let Some(versions) = rows.expected_versions().filter(|_| one_statement) {
            let written = sqlx::query_with(BATCH_OR_REFUSE, rows.arguments(now, Some(&versions))?)
                .execute(&mut *conn)
                .await;
            steps.done(Step::Statement);
            match written {
                Ok(_) => return Ok(Checked::Written),
                Err(e) if refused(&e) => {
                    metrics::counter!("turnout_journal_rechecked_total").increment(1);
                }
                Err(e) => return Err(e),
            }
        }
        let mut tx = conn.begin().await?;
        steps.done(Step::Begin);
        let checked = match Self::write_batch(&mut tx, &rows, now).await {
            Ok(checked) => checked,
            Err(e) => {
                // Rolled back now rather than on the connection's next use:
                // until then it would hold its leases' locks and its rows.
                tx.rollback().await?;
                return Err(e);
            }
        };
        steps.done(Step::Batch);
        match checked {
            Checked::Written => tx.commit().await?,
            _ => tx.rollback().await?,
        }
        steps.done(Step::Commit);
        Ok(checked)
    }

    /// The keys to be kept that `BATCH` did not write, read again: another
    /// node's journal committed them after the statement's snapshot was
    /// taken (it found no answer, and its upsert, having waited for that
    /// commit, left the unexpired row alone), so they were answered before
    /// this batch after all. A statement of its own sees that commit.
    async fn answered_meanwhile(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        rows: &Rows<'_>,
        replied: &HashSet<(Uuid, String)>,
    ) -> Result<Option<Checked>, sqlx::Error> {
        let missing: Vec<(usize, &IdempotencyRecord)> = rows
            .replies()
            .filter(|(_, r)| !replied.contains(&(r.user.as_uuid(), r.key.clone())))
            .collect();
        if missing.is_empty() {
            return Ok(None);
        }
        let stored: Vec<AnswerRow> = sqlx::query_as(
            "SELECT user_id, key, fingerprint, answer::text FROM idempotency_keys \
             WHERE (user_id, key) IN (SELECT * FROM UNNEST($1::uuid[], $2::text[]))",
        )
        .bind(column(&missing, |(_, r)| r.user.as_uuid()))
        .bind(column(&missing, |(_, r)| r.key.clone()))
        .fetch_all(&mut **tx)
        .await?;
        let stored: HashMap<(Uuid, String), Given> = stored
            .into_iter()
            .map(stored_answer)
            .collect::<Result<_, _>>()?;
        let stream_of = |i: usize| {
            rows.live
                .iter()
                .find(|(j, _)| *j == i)
                .map(|(_, a)| a.stream)
        };
        let missing = missing
            .into_iter()
            .filter_map(|(i, r)| stream_of(i).map(|stream| (i, stream, r)));
        Ok(meanwhile(missing, &stored))
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
        rows: &Rows<'_>,
        now: i64,
    ) -> Result<Checked, sqlx::Error> {
        let found: Vec<FoundRow> = sqlx::query_as_with(BATCH, rows.arguments(now, None)?)
            .fetch_all(&mut **tx)
            .await?;
        let (live, log) = (rows.live, &rows.log);
        let mut held: HashMap<i64, i64> = HashMap::new();
        let mut written: HashSet<(Uuid, i64)> = HashSet::with_capacity(log.len());
        let mut latest: HashMap<Uuid, u64> = HashMap::with_capacity(rows.streams.len());
        let mut stored: HashMap<(Uuid, String), Given> = HashMap::new();
        let mut replied: HashSet<(Uuid, String)> = HashSet::with_capacity(rows.keyed.len());
        for row in found {
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
                Found::Replied { user, key } => {
                    replied.insert((user, key));
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
        let answered = answered(rows.keyed.clone(), stored);
        if !answered.is_empty() {
            return Ok(Checked::Answered(answered));
        }
        if let Some(checked) = Self::answered_meanwhile(tx, rows, &replied).await? {
            return Ok(checked);
        }
        if !rows.streams.is_empty() {
            let stale = stale(rows.versions(), latest);
            if !stale.is_empty() {
                return Ok(Checked::Stale(stale));
            }
        }
        let lost = lost(log, &written);
        if !lost.is_empty() {
            return Ok(Checked::Lost(lost));
        }

        for s in retagged(&rows.summaries, &rows.appends) {
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
        for a in rows.appends.iter().filter(|a| a.cancels()) {
            // Every membership of a cancelled event ends.
            sqlx::query(concat!(
                "UPDATE joins SET status = 'cancelled', updated_at = $1 \
                     WHERE event_id = $2 AND status IN ",
                live_statuses!()
            ))
            .bind(now)
            .bind(a.stream.as_uuid())
            .execute(&mut **tx)
            .await?;
        }
        Ok(Checked::Written)
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

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use turnout_actors::domain::UserId;
    use turnout_actors::idempotency::Answer;

    use super::*;

    fn record(key: &str) -> IdempotencyRecord {
        IdempotencyRecord {
            user: UserId::from(Uuid::nil()),
            key: key.to_owned(),
            fingerprint: "POST /v1/events/e/join".to_owned(),
            answer: Answer {
                changed: true,
                membership: None,
            },
            created_at: Utc::now(),
            expires_at: Utc::now(),
        }
    }

    #[test]
    fn a_key_answered_meanwhile_is_replayed() {
        let (stream, k) = (EventId::from(Uuid::now_v7()), record("k"));
        let given = Given {
            fingerprint: "POST /v1/events/other/join".to_owned(),
            answer: k.answer,
        };
        let stored = HashMap::from([((Uuid::nil(), "k".to_owned()), given.clone())]);

        let checked = meanwhile([(3, stream, &k)], &stored);

        assert!(matches!(checked, Some(Checked::Answered(a)) if a == vec![(3, given)]));
    }

    #[test]
    fn a_key_neither_written_nor_found_sends_its_stream_back_to_its_actor() {
        let (stream, k) = (EventId::from(Uuid::now_v7()), record("k"));

        let checked = meanwhile([(0, stream, &k)], &HashMap::new());

        assert!(matches!(checked, Some(Checked::Lost(l)) if l == HashSet::from([stream])));
    }

    #[test]
    fn nothing_missing_is_nothing_to_do() {
        assert!(meanwhile([], &HashMap::new()).is_none());
    }
}
