//! SQLite's group commit: the journal's connection on a thread of its own
//! (rusqlite, on an actix arbiter), its statements prepared once. The
//! journal actor runs on that thread too (`Store::journal_thread`), so an
//! attempt at a batch is a task queued on the thread it is already on, not
//! a hand-off that wakes another and an answer that wakes it back; while
//! SQLite commits, the actor's mailbox gathers the next batch. The outbox
//! relay's reads, marks and lease run on it too (`super::super::relay`): a commit
//! by another connection would make this one drop its whole page cache
//! before its next transaction, and the relay commits several times a
//! second.
//!
//! Its page cache is larger than SQLite's default and the WAL is
//! checkpointed less often ([`CACHE_KIB`], [`WAL_CHECKPOINT_PAGES`]): a
//! batch on a hot event touches index pages all over the joins' and keys'
//! indexes, and with 2 MiB of cache it spilled dirty pages into the WAL
//! mid-transaction and read them back, and a checkpoint every 1,000 pages
//! copied the same hot pages again and again. The cache is given back
//! once the journal has been quiet a while ([`IDLE_RELEASE`]), so a load
//! leaves no memory behind.
//!
//! Every other statement goes through sqlx, which runs a SQLite connection
//! on a worker thread and hands it each statement, and hands back each
//! result and each row: every hand-off wakes a thread. A commit of a join
//! or two is a dozen statements, so through sqlx a spread join cost some
//! thirty context switches and most of its CPU in the scheduler, almost
//! none in SQLite (docs/BENCHMARKS.md).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use actix::{Arbiter, ArbiterHandle};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sqlx::{QueryBuilder, Sqlite};
use tokio::sync::oneshot;
use turnout_actors::domain::EventId;
use turnout_actors::idempotency::Given;
use turnout_actors::store::{
    Append, EventSummary, IdempotencyRecord, MembershipRow, StoreError, membership_rows,
};
use uuid::Uuid;

use super::{
    AnswerRow, Checked, LogRow, OutboxRow, Step, Steps, answer_json, answered, latest_snapshots,
    latest_summaries, lost, retagged, stale, streams_without_facts,
};
use crate::store::sql::live_statuses;
use crate::store::{SqlStore, micros};

/// The journal's SQLite connection, on its thread: an actix arbiter, so
/// that the journal actor can run there too (`Store::journal_thread`) and
/// hand it a batch without waking another thread.
pub struct SqliteWriter {
    thread: Arbiter,
}

/// The journal's page cache, at most (SQLite's default is 2 MiB).
const CACHE_KIB: i64 = 16 * 1024;

/// WAL pages before a commit checkpoints them into the database (SQLite's
/// default is 1,000). Every connection to the file is opened with it: the
/// one that commits past it does the checkpoint.
pub const WAL_CHECKPOINT_PAGES: i64 = 10_000;

/// A journal that has attempted no batch for this long gives its cache
/// back. (The outbox relay's polls run on the same connection every 100 ms,
/// but a poll of an empty outbox reads a page or two.)
const IDLE_RELEASE: Duration = Duration::from_secs(30);

thread_local! {
    /// The writer's connection, set on the writer's thread before any task
    /// reaches it, and closed when that thread ends.
    static CONNECTION: RefCell<Option<Connection>> = const { RefCell::new(None) };
    /// Whether the journal attempted a batch since the last idle check.
    static ATTEMPTED: Cell<bool> = const { Cell::new(false) };
}

/// Every [`IDLE_RELEASE`], frees the cache's pages if the journal attempted
/// no batch since the last look: what a load read in is kept while it
/// lasts, not for good.
async fn release_when_idle() {
    let mut every = tokio::time::interval(IDLE_RELEASE);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if !ATTEMPTED.replace(false) {
            CONNECTION.with_borrow(|connection| {
                if let Some(connection) = connection
                    && let Err(e) = connection.release_memory()
                {
                    tracing::warn!(error = %e, "the journal's SQLite cache could not be released");
                }
            });
        }
    }
}

impl Drop for SqliteWriter {
    fn drop(&mut self) {
        self.thread.stop();
    }
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteWriter")
    }
}

impl SqliteWriter {
    /// Opens the database file (already created and migrated) as the
    /// journal's connection, with the settings every connection has: WAL,
    /// a commit on disk before it is acknowledged, foreign keys, plans
    /// that do not depend on bound values (see `store::stable_plans`), and
    /// five seconds' patience with another connection's write.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let connection = Connection::open(path)?;
        connection.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", true)?;
        connection.pragma_update(None, "cache_size", -CACHE_KIB)?;
        connection.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
        connection.set_prepared_statement_cache_capacity(32);
        let thread = Arbiter::try_new()?;
        thread.spawn_fn(move || CONNECTION.set(Some(connection)));
        thread.spawn(release_when_idle());
        thread.spawn_fn(crate::memory::give_back_when_idle);
        Ok(Self { thread })
    }

    /// The writer's thread.
    pub fn thread(&self) -> ArbiterHandle {
        self.thread.handle()
    }

    /// Runs `task` with the writer's connection, on its thread: one
    /// hand-off there and one back, whatever the task does. Called on that
    /// thread (the journal's commits), it is still queued as a task: run at
    /// once, a commit would finish the moment it is polled, and under load
    /// the journal actor would go from one to the next without giving the
    /// thread back, the relay's tasks there left waiting for the load to
    /// end (docs/BENCHMARKS.md, "Tried, not kept: the journal's attempt
    /// run at once").
    ///
    /// A task whose caller stopped waiting before its turn came (a commit
    /// past the journal's deadline, which fires between tasks) is not run:
    /// its callers were told it failed, and it must not land after all.
    pub(in crate::store::sql) async fn call<T: Send + 'static>(
        &self,
        task: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let stopped = || StoreError::Unavailable("the SQLite journal thread stopped".into());
        let (outcome, done) = oneshot::channel();
        let sent = self.thread.spawn_fn(move || {
            if outcome.is_closed() {
                return;
            }
            let result = CONNECTION.with_borrow_mut(|connection| {
                task(connection.as_mut().expect("set before any task"))
            });
            let _ = outcome.send(result);
        });
        if !sent {
            return Err(stopped());
        }
        done.await
            .map_err(|_| stopped())?
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

/// One attempt at a batch, in rows the writer's thread owns.
struct Batch {
    now: i64,
    /// The appends written under a shard lease: index, shard and epoch.
    leases: Vec<(usize, i64, i64)>,
    /// Each append's index in the batch, stream, base version and number
    /// of facts, in batch order (for the check of appends without facts).
    appends: Vec<(usize, EventId, u64, usize)>,
    keyed: Vec<(usize, IdempotencyRecord)>,
    /// Streams with an append without facts, each once.
    without_facts: Vec<Uuid>,
    log: Vec<LogRow>,
    events: Vec<EventSummary>,
    /// Events with nothing but members' comings and goings in this batch
    /// (or appends without facts): an `UPDATE` of the counts rewrites the
    /// row's page and no index's, where the upsert of every column
    /// (`events`) rewrites the two indexes on venue, status and start too —
    /// two pages fewer in the commit of a join.
    counted: Vec<EventSummary>,
    retagged: Vec<(Uuid, Vec<String>)>,
    memberships: Vec<MembershipRow>,
    cancelled: Vec<Uuid>,
    /// Stream, version and the state as JSON text.
    snapshots: Vec<(Uuid, i64, String)>,
    outbox: Vec<OutboxRow>,
}

impl Batch {
    fn of(live: &[(usize, &Append)], now: i64) -> Self {
        let appends: Vec<&Append> = live.iter().map(|(_, a)| *a).collect();
        let log = LogRow::of_batch(&appends);
        let summaries = latest_summaries(&appends);
        let changed: HashSet<EventId> = appends
            .iter()
            .filter(|a| a.changes_the_event())
            .map(|a| a.stream)
            .collect();
        let (events, counted) = summaries
            .iter()
            .map(|s| (*s).clone())
            .partition(|s| changed.contains(&s.id));
        Self {
            now,
            leases: live
                .iter()
                .filter_map(|(i, a)| {
                    a.lease
                        .map(|l| (*i, i64::from(l.shard.get()), l.epoch as i64))
                })
                .collect(),
            appends: live
                .iter()
                .map(|(i, a)| (*i, a.stream, a.base_version, a.facts.len()))
                .collect(),
            keyed: live
                .iter()
                .filter_map(|(i, a)| a.idempotency.clone().map(|r| (*i, r)))
                .collect(),
            without_facts: streams_without_facts(live),
            retagged: retagged(&summaries, &appends)
                .map(|s| {
                    let tags = s.details.tags.iter().map(|t| t.as_str().to_owned());
                    (s.id.as_uuid(), tags.collect())
                })
                .collect(),
            events,
            counted,
            memberships: membership_rows(appends.iter().copied()),
            cancelled: appends
                .iter()
                .filter(|a| a.cancels())
                .map(|a| a.stream.as_uuid())
                .collect(),
            snapshots: latest_snapshots(&appends)
                .into_iter()
                .map(|s| {
                    let state = serde_json::to_string(s).expect("a state serialises");
                    (s.id.as_uuid(), s.version as i64, state)
                })
                .collect(),
            outbox: log.iter().map(LogRow::outbox).collect(),
            log,
        }
    }
}

impl SqlStore<Sqlite> {
    /// `_began`: when the commit began (on SQLite the attempt runs on the
    /// journal's thread, bounded by the busy timeout, and nothing is left
    /// running when the journal gives up).
    pub(super) async fn attempt(
        &self,
        live: &[(usize, &Append)],
        now: i64,
        _began: std::time::Instant,
    ) -> Result<Checked, StoreError> {
        let batch = Batch::of(live, now);
        self.writer
            .call(move |connection| attempt(connection, &batch))
            .await
    }

    /// The stored, unexpired answers to `keys`, through the pool (requests
    /// must not queue behind the journal's commits on the writer's thread).
    pub(super) async fn select_answers(
        conn: &mut sqlx::SqliteConnection,
        keys: &[(Uuid, String)],
        now: i64,
    ) -> Result<Vec<AnswerRow>, sqlx::Error> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT user_id, key, fingerprint, answer FROM idempotency_keys WHERE expires_at > ",
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
}

/// One attempt, on the writer's thread: a write transaction (taken up
/// front: one that read first would fail at once when another connection
/// wrote in between), committed only if every check passed; dropped, it
/// rolls back.
fn attempt(connection: &mut Connection, batch: &Batch) -> rusqlite::Result<Checked> {
    ATTEMPTED.set(true);
    let mut steps = Steps::start();
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    steps.done(Step::Begin);
    let now = batch.now;

    // A node that lost a shard must not write to it, even where the
    // stream's version would fit (the write transaction keeps any taking
    // of the lease out until it ends).
    if !batch.leases.is_empty() {
        let mut epoch_of = tx.prepare_cached(
            "SELECT epoch FROM shard_leases WHERE node IS NOT NULL AND shard = ?1",
        )?;
        let mut held: HashMap<i64, Option<i64>> = HashMap::new();
        let mut fenced = Vec::new();
        for (i, shard, epoch) in &batch.leases {
            let holding = match held.get(shard) {
                Some(holding) => *holding,
                None => {
                    let holding = epoch_of
                        .query_row(params![shard], |row| row.get(0))
                        .optional()?;
                    held.insert(*shard, holding);
                    holding
                }
            };
            if holding != Some(*epoch) {
                fenced.push(*i);
            }
        }
        if !fenced.is_empty() {
            return Ok(Checked::Fenced(fenced));
        }
    }
    steps.done(Step::Leases);

    // Keys answered before: those appends are replays.
    let mut stored: HashMap<(Uuid, String), Given> = HashMap::new();
    let mut select = tx.prepare_cached(
        "SELECT fingerprint, answer FROM idempotency_keys \
         WHERE user_id = ?1 AND key = ?2 AND expires_at > ?3",
    )?;
    for (_, record) in &batch.keyed {
        let key = (record.user.as_uuid(), record.key.clone());
        let found = select
            .query_row(params![key.0, key.1, now], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .optional()?;
        if let Some((fingerprint, answer)) = found {
            let answer = serde_json::from_str(&answer).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.into())
            })?;
            stored.insert(
                key,
                Given {
                    fingerprint,
                    answer,
                },
            );
        }
    }
    drop(select);
    steps.done(Step::Keys);
    let answered = answered(batch.keyed.iter().map(|(i, r)| (*i, r)).collect(), stored);
    if !answered.is_empty() {
        return Ok(Checked::Answered(answered));
    }

    // Appends without facts decided on a version no longer the latest.
    if !batch.without_facts.is_empty() {
        let mut latest_of = tx.prepare_cached(
            "SELECT COALESCE(MAX(version), 0) FROM event_log WHERE stream_id = ?1",
        )?;
        let mut latest = HashMap::with_capacity(batch.without_facts.len());
        for stream in &batch.without_facts {
            let version: i64 = latest_of.query_row(params![stream], |row| row.get(0))?;
            latest.insert(*stream, version as u64);
        }
        let stale = stale(batch.appends.iter().copied(), latest);
        if !stale.is_empty() {
            return Ok(Checked::Stale(stale));
        }
    }
    steps.done(Step::Stale);

    // The facts: a version taken, or one that skips a version (decided on
    // top of a fact never written), is not written; the log has no gaps.
    // The predecessor is looked up apart from the insert, and only for the
    // first fact of its stream in the batch: an `INSERT … SELECT` that
    // reads its own table builds a temporary table for its one row, a
    // b-tree opened and freed per fact.
    let mut predecessor = tx.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM event_log WHERE stream_id = ?1 AND version = ?2)",
    )?;
    let mut insert_fact = tx.prepare_cached(
        "INSERT INTO event_log (stream_id, version, event_type, schema_version, payload, \
         request_id, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT DO NOTHING",
    )?;
    let mut written = HashSet::with_capacity(batch.log.len());
    for row in &batch.log {
        let follows = row.version == 1
            || row.after_own
            || predecessor.query_row(params![row.stream, row.version - 1], |r| r.get(0))?;
        if !follows {
            continue;
        }
        let inserted = insert_fact.execute(params![
            row.stream,
            row.version,
            row.event_type,
            row.schema_version,
            row.payload,
            row.request_id,
            now,
        ])?;
        if inserted == 1 {
            written.insert((row.stream, row.version));
        }
    }
    drop((predecessor, insert_fact));
    steps.done(Step::Log);
    let lost = lost(&batch.log, &written);
    if !lost.is_empty() {
        return Ok(Checked::Lost(lost));
    }

    write_read_models(&tx, batch, &mut steps)?;
    write_side_records(&tx, batch, &mut steps)?;
    tx.commit()?;
    steps.done(Step::Commit);
    Ok(Checked::Written)
}

fn write_read_models(
    tx: &rusqlite::Transaction<'_>,
    batch: &Batch,
    steps: &mut Steps,
) -> rusqlite::Result<()> {
    let now = batch.now;
    let mut upsert_event = tx.prepare_cached(concat!(
        "INSERT INTO events (id, owner_id, venue_id, title, description, starts_at, ends_at, \
         capacity, status, active_count, offered_count, waitlist_count, waitlist_mode, \
         offer_hold_secs, max_party, waitlist_fill, version, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
         ?18, ?18)",
        events_upsert!()
    ))?;
    for s in &batch.events {
        upsert_event.execute(params![
            s.id.as_uuid(),
            s.owner.as_uuid(),
            s.details.venue_id.as_uuid(),
            s.details.title.as_str(),
            s.details.description.as_ref().map(|d| d.as_str()),
            micros(s.details.starts_at),
            s.details.ends_at.map(micros),
            i64::from(s.capacity),
            s.lifecycle.as_str(),
            s.active_count as i64,
            s.offered_count as i64,
            s.waitlist_count as i64,
            s.policy.mode.as_str(),
            i64::from(s.policy.offer_hold),
            i64::from(s.policy.max_party),
            s.policy.fill.as_str(),
            s.version as i64,
            now,
        ])?;
    }

    let mut count = tx.prepare_cached(
        "UPDATE events SET active_count = ?1, offered_count = ?2, waitlist_count = ?3, \
         version = ?4, updated_at = ?5 WHERE id = ?6 AND version <= ?4",
    )?;
    for s in &batch.counted {
        count.execute(params![
            s.active_count as i64,
            s.offered_count as i64,
            s.waitlist_count as i64,
            s.version as i64,
            now,
            s.id.as_uuid(),
        ])?;
    }

    let mut untag = tx.prepare_cached("DELETE FROM event_tags WHERE event_id = ?1")?;
    let mut tag = tx.prepare_cached("INSERT INTO event_tags (tag, event_id) VALUES (?1, ?2)")?;
    for (event, tags) in &batch.retagged {
        untag.execute(params![event])?;
        for t in tags {
            tag.execute(params![t, event])?;
        }
    }
    steps.done(Step::Events);

    let mut upsert_membership = tx.prepare_cached(
        "INSERT INTO joins (event_id, user_id, status, order_key, seats, offer_expires_at, \
         joined_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (event_id, user_id) DO UPDATE SET status = excluded.status, \
         order_key = excluded.order_key, seats = excluded.seats, \
         offer_expires_at = excluded.offer_expires_at, joined_at = excluded.joined_at, \
         updated_at = excluded.updated_at",
    )?;
    for m in &batch.memberships {
        upsert_membership.execute(params![
            m.event_id.as_uuid(),
            m.user_id.as_uuid(),
            m.status.as_str(),
            m.order_key,
            i64::from(m.seats),
            m.offer_expires_at.map(micros),
            micros(m.joined_at),
            micros(m.updated_at),
        ])?;
    }

    let mut cancel = tx.prepare_cached(concat!(
        "UPDATE joins SET status = 'cancelled', updated_at = ?1 \
             WHERE event_id = ?2 AND status IN ",
        live_statuses!()
    ))?;
    for event in &batch.cancelled {
        cancel.execute(params![now, event])?;
    }
    steps.done(Step::Memberships);
    Ok(())
}

fn write_side_records(
    tx: &rusqlite::Transaction<'_>,
    batch: &Batch,
    steps: &mut Steps,
) -> rusqlite::Result<()> {
    let now = batch.now;
    let mut snapshot = tx.prepare_cached(
        "INSERT INTO snapshots (stream_id, version, state, taken_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, \
         state = excluded.state, taken_at = excluded.taken_at \
         WHERE snapshots.version <= excluded.version",
    )?;
    for (stream, version, state) in &batch.snapshots {
        snapshot.execute(params![stream, version, state, now])?;
    }
    steps.done(Step::Snapshots);

    // A key's answer is written once; a row still there after it expired
    // (the purge runs on an interval) is replaced, not left to shadow it.
    let mut reply = tx.prepare_cached(
        "INSERT INTO idempotency_keys (user_id, key, fingerprint, answer, created_at, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (user_id, key) DO UPDATE SET fingerprint = excluded.fingerprint, \
         answer = excluded.answer, created_at = excluded.created_at, \
         expires_at = excluded.expires_at WHERE idempotency_keys.expires_at <= ?7",
    )?;
    for (_, r) in &batch.keyed {
        reply.execute(params![
            r.user.as_uuid(),
            r.key,
            r.fingerprint,
            answer_json(&r.answer),
            micros(r.created_at),
            micros(r.expires_at),
            now,
        ])?;
    }
    steps.done(Step::Replies);

    let mut outbox = tx.prepare_cached(
        "INSERT INTO outbox (message_id, topic, aggregate_id, stream_version, event_type, \
         payload, request_id, traceparent, next_attempt_at, created_at) \
         VALUES (?1, 'events', ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8)",
    )?;
    for row in &batch.outbox {
        outbox.execute(params![
            row.message_id,
            row.aggregate,
            row.version,
            row.event_type,
            row.payload,
            row.request_id,
            row.traceparent,
            now,
        ])?;
    }
    steps.done(Step::Outbox);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// A commit that waited behind the thread's other work past its
    /// deadline is not run when its turn comes: its callers were told it
    /// failed, and it must not land after all.
    #[actix::test]
    async fn a_task_whose_caller_gave_up_before_it_began_is_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let writer = SqliteWriter::open(&dir.path().join("journal.db")).unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let busy = writer.call(|_| {
            std::thread::sleep(Duration::from_millis(200));
            Ok(())
        });
        let abandoned = {
            let ran = Arc::clone(&ran);
            tokio::time::timeout(
                Duration::from_millis(50),
                writer.call(move |_| {
                    ran.store(true, Ordering::SeqCst);
                    Ok(())
                }),
            )
        };
        let (busy, abandoned) = futures_util::join!(busy, abandoned);
        busy.unwrap();
        assert!(abandoned.is_err(), "the deadline passed");
        // Tasks run in the order they were queued: this one ran after it.
        writer.call(|_| Ok(())).await.unwrap();
        assert!(!ran.load(Ordering::SeqCst), "the abandoned task ran");
    }
}
