//! The journal's group commit: the event log, snapshots, read models,
//! idempotency keys and outbox rows of a batch in one transaction (the
//! [`EventStore`] port). What a batch writes and how its checks are read is
//! here; each database's attempt at it is in `postgres` and `sqlite`.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::Utc;
use sqlx::types::Json;
use sqlx::{Postgres, Sqlite};
use turnout_actors::domain::{EventId, EventState, StoredEvent, UserId, current_schema_version};
use turnout_actors::idempotency::{Answer, Given};
use turnout_actors::store::{
    Append, CommitReport, EventStore, EventSummary, IdempotencyRecord, Rehydration, StoreError,
};
use uuid::Uuid;

use super::SqlStore;

/// What an event row's upsert replaces: everything but its owner and when
/// it was created, and only with a newer version. (A macro, so that each
/// database's statement can `concat!` it.)
macro_rules! events_upsert {
    () => {
        " ON CONFLICT (id) DO UPDATE SET venue_id = excluded.venue_id, \
         title = excluded.title, description = excluded.description, \
         starts_at = excluded.starts_at, ends_at = excluded.ends_at, \
         capacity = excluded.capacity, status = excluded.status, \
         active_count = excluded.active_count, offered_count = excluded.offered_count, \
         waitlist_count = excluded.waitlist_count, waitlist_mode = excluded.waitlist_mode, \
         offer_hold_secs = excluded.offer_hold_secs, max_party = excluded.max_party, \
         waitlist_fill = excluded.waitlist_fill, version = excluded.version, \
         updated_at = excluded.updated_at WHERE events.version <= excluded.version"
    };
}

mod postgres;
mod sqlite;
pub use postgres::PgWriter;
pub use sqlite::{SqliteWriter, WAL_CHECKPOINT_PAGES};

use crate::store::{micros, unavailable};

/// A step of one attempt at a batch, in the order an attempt takes them.
#[derive(Clone, Copy)]
enum Step {
    /// On Postgres, the batch as one autocommitted statement: its checks,
    /// writes and commit (`begin` to `commit` follow only if it refused).
    Statement,
    /// Starting the transaction: on SQLite, waiting for the write lock.
    Begin,
    /// The fencing check (on Postgres, part of `Batch`).
    Leases,
    /// Answers stored before.
    Keys,
    /// On Postgres, the steps from `Leases` to `Outbox`: one statement.
    Batch,
    Stale,
    /// The facts.
    Log,
    /// Event rows and their tags.
    Events,
    Memberships,
    Snapshots,
    /// Idempotency keys and their answers.
    Replies,
    Outbox,
    /// On disk.
    Commit,
}

impl Step {
    /// Every step in declaration order. `Commit` is the last of an attempt
    /// and of the enum, so a step added before it must be listed here too.
    const ALL: [Step; Step::Commit as usize + 1] = [
        Step::Statement,
        Step::Begin,
        Step::Leases,
        Step::Keys,
        Step::Batch,
        Step::Stale,
        Step::Log,
        Step::Events,
        Step::Memberships,
        Step::Snapshots,
        Step::Replies,
        Step::Outbox,
        Step::Commit,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Step::Statement => "statement",
            Step::Begin => "begin",
            Step::Leases => "leases",
            Step::Keys => "keys",
            Step::Batch => "batch",
            Step::Stale => "stale",
            Step::Log => "log",
            Step::Events => "events",
            Step::Memberships => "memberships",
            Step::Snapshots => "snapshots",
            Step::Replies => "replies",
            Step::Outbox => "outbox",
            Step::Commit => "commit",
        }
    }
}

/// Times the steps of one attempt at a batch, each as
/// `turnout_journal_step_seconds{step}`: where a commit's time goes, on a
/// live server, without a profiler.
struct Steps {
    since: std::time::Instant,
}

impl Steps {
    fn start() -> Self {
        Self {
            since: std::time::Instant::now(),
        }
    }

    /// `step` has just finished: it took the time since the last one did.
    fn done(&mut self, step: Step) {
        let now = std::time::Instant::now();
        step_histograms()[step as usize].record(now.duration_since(self.since).as_secs_f64());
        self.since = now;
    }
}

/// One handle per step, looked up once: finding a labelled histogram in the
/// recorder builds and hashes its key, which at a dozen steps was most of
/// the timing's cost for a commit of one join. The recorder is installed
/// first, so the handles are the ones it exports (it forgets no series).
fn step_histograms() -> &'static [metrics::Histogram; Step::ALL.len()] {
    static HISTOGRAMS: std::sync::OnceLock<[metrics::Histogram; Step::ALL.len()]> =
        std::sync::OnceLock::new();
    HISTOGRAMS.get_or_init(|| {
        crate::telemetry::metrics();
        Step::ALL.map(
            |step| metrics::histogram!("turnout_journal_step_seconds", "step" => step.as_str()),
        )
    })
}

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
///
/// `written` holds each (stream, version) once, so two facts of a batch
/// claiming one version would both look written while the log kept one:
/// a version claimed twice is lost, whichever was written. No path builds
/// such a batch (one writer holds a stream), and this keeps it so.
fn lost(rows: &[LogRow], written: &HashSet<(Uuid, i64)>) -> HashSet<EventId> {
    let mut claimed = HashSet::with_capacity(rows.len());
    rows.iter()
        .filter(|r| {
            let version = (r.stream, r.version);
            let first_claim = claimed.insert(version);
            !(first_claim && written.contains(&version))
        })
        .map(|r| EventId::from(r.stream))
        .collect()
}

/// What a batch's checks found, or that it was written. Anything but
/// `Written` rolls the transaction back and leaves those appends out.
enum Checked {
    Written,
    /// Appends whose shard this node no longer holds at their epoch.
    Fenced(Vec<usize>),
    /// Appends whose keys were answered before: replays.
    Answered(Vec<(usize, Given)>),
    /// Appends without facts decided on a version no longer the latest.
    Stale(Vec<usize>),
    /// Streams whose facts lost the race for their versions.
    Lost(HashSet<EventId>),
}

/// A batch committed in as many attempts as it takes: each leaves out the
/// appends the one before found replayed, conflicting or fenced (and the
/// appends of a stream that stood on a replayed one) and tries the rest,
/// until one is written or none is left.
struct Attempts<'a> {
    batch: &'a [Append],
    left_out: HashSet<usize>,
    report: CommitReport,
    written: bool,
}

impl<'a> Attempts<'a> {
    fn new(batch: &'a [Append]) -> Self {
        Self {
            batch,
            left_out: HashSet::new(),
            report: CommitReport::default(),
            written: false,
        }
    }

    /// The appends the next attempt tries, if one is needed.
    fn next(&self) -> Option<Vec<(usize, &'a Append)>> {
        let live: Vec<(usize, &Append)> = self
            .batch
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.left_out.contains(i))
            .collect();
        (!self.written && !live.is_empty()).then_some(live)
    }

    /// What the attempt at `live` found.
    fn settle(&mut self, live: &[(usize, &Append)], checked: Checked) {
        let (batch, report, left_out) = (self.batch, &mut self.report, &mut self.left_out);
        match checked {
            Checked::Written => self.written = true,
            Checked::Fenced(fenced) => {
                // A node that lost a shard must not write to it, even
                // where the stream's version would fit.
                for i in fenced {
                    left_out.insert(i);
                    report.fenced.push(i);
                }
            }
            Checked::Answered(answered) => {
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
            }
            Checked::Stale(stale) => {
                for i in stale {
                    if left_out.insert(i) {
                        report.conflicted.push(i);
                    }
                }
            }
            Checked::Lost(lost) => {
                // Retry without the streams that lost the race; their
                // actors reload and decide again.
                for (i, a) in live {
                    if lost.contains(&a.stream) && left_out.insert(*i) {
                        report.conflicted.push(*i);
                    }
                }
            }
        }
    }
}

/// Of the appends without facts, those decided on a version that is no
/// longer their stream's latest, given each stream's stored latest
/// version. `appends` are the batch's, in order: index, stream, base
/// version and number of facts; each moves its stream on.
fn stale(
    appends: impl IntoIterator<Item = (usize, EventId, u64, usize)>,
    mut latest: HashMap<Uuid, u64>,
) -> Vec<usize> {
    let mut stale = Vec::new();
    for (i, stream, base_version, facts) in appends {
        let Some(version) = latest.get_mut(&stream.as_uuid()) else {
            continue;
        };
        if facts == 0 && base_version != *version {
            stale.push(i);
        }
        *version = base_version + facts as u64;
    }
    stale
}

/// What `stale` needs stored for it to find no append stale: the latest
/// version of each stream whose first append in the batch has no facts
/// (the others are checked against versions the batch itself moved them
/// to), or `None` if an append is stale whatever is stored. Same order and
/// arguments as `stale`; one statement's commit checks these in the
/// database instead of reading the versions back (`journal::postgres`).
fn unstale_versions(
    appends: impl IntoIterator<Item = (usize, EventId, u64, usize)>,
) -> Option<Vec<(Uuid, u64)>> {
    let mut moved: HashMap<Uuid, u64> = HashMap::new();
    let mut expected = Vec::new();
    for (_, stream, base_version, facts) in appends {
        let stream = stream.as_uuid();
        match moved.get(&stream) {
            None if facts == 0 => expected.push((stream, base_version)),
            Some(&version) if facts == 0 && base_version != version => return None,
            _ => {}
        }
        moved.insert(stream, base_version + facts as u64);
    }
    Some(expected)
}

/// The streams of a batch's appends without facts, each once.
fn streams_without_facts(live: &[(usize, &Append)]) -> Vec<Uuid> {
    let mut streams: Vec<Uuid> = live
        .iter()
        .filter(|(_, a)| a.facts.is_empty())
        .map(|(_, a)| a.stream.as_uuid())
        .collect();
    streams.sort_unstable();
    streams.dedup();
    streams
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
    ($db:ty) => {
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
                let after = snapshot.as_ref().map_or(0, |s| s.version);
                let facts = self.logged_facts(stream, after, i64::MAX as u64).await?;
                Ok(Rehydration { snapshot, facts })
            }

            async fn logged_facts(
                &self,
                stream: EventId,
                after: u64,
                through: u64,
            ) -> Result<Vec<StoredEvent>, StoreError> {
                let rows: Vec<(String, i64, Json<serde_json::Value>)> = sqlx::query_as(
                    "SELECT event_type, schema_version, payload FROM event_log \
                     WHERE stream_id = $1 AND version > $2 AND version <= $3 ORDER BY version",
                )
                .bind(stream.as_uuid())
                .bind(after as i64)
                .bind(through as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok(rows
                    .into_iter()
                    .map(|(event_type, schema_version, Json(payload))| StoredEvent {
                        event_type,
                        schema_version: schema_version as i32,
                        payload,
                    })
                    .collect())
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
                let began = std::time::Instant::now();
                let mut attempts = Attempts::new(batch);
                while let Some(live) = attempts.next() {
                    let checked = self.attempt(&live, now, began).await?;
                    attempts.settle(&live, checked);
                }
                Ok(attempts.report)
            }
        }
    };
}

impl_event_store!(Sqlite);
impl_event_store!(Postgres);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn fact(stream: Uuid, version: i64) -> LogRow {
        LogRow {
            stream,
            version,
            event_type: "member_joined",
            schema_version: 1,
            payload: "{}".to_owned(),
            request_id: None,
            traceparent: None,
            after_own: false,
        }
    }

    #[test]
    fn a_fact_not_written_loses_its_stream_the_race() {
        let (won, beaten) = (Uuid::now_v7(), Uuid::now_v7());
        let rows = [fact(won, 1), fact(won, 2), fact(beaten, 4)];
        let written = HashSet::from([(won, 1), (won, 2)]);

        assert_eq!(
            lost(&rows, &written),
            HashSet::from([EventId::from(beaten)])
        );
    }

    #[test]
    fn a_version_claimed_twice_in_one_batch_is_lost_though_one_was_written() {
        let stream = Uuid::now_v7();
        let rows = [fact(stream, 3), fact(stream, 3)];
        let written = HashSet::from([(stream, 3)]);

        assert_eq!(
            lost(&rows, &written),
            HashSet::from([EventId::from(stream)])
        );
    }

    #[test]
    fn every_step_has_its_own_histogram() {
        for (index, step) in Step::ALL.into_iter().enumerate() {
            assert_eq!(step as usize, index, "{}", step.as_str());
        }
    }

    proptest! {
        /// `unstale_versions` is `stale` turned around: whatever the batch
        /// and whatever is stored, no append is stale exactly when each
        /// stream stands where `unstale_versions` expects it.
        #[test]
        fn unstale_versions_expect_what_stale_accepts(
            appends in prop::collection::vec((0..3usize, 0..4u64, 0..3usize), 0..8),
            stored in prop::collection::vec(0..4u64, 3),
        ) {
            let streams: Vec<EventId> = (0..3).map(|_| EventId::new()).collect();
            let appends: Vec<(usize, EventId, u64, usize)> = appends
                .iter()
                .enumerate()
                .map(|(i, &(s, base, facts))| (i, streams[s], base, facts))
                .collect();
            // As the journal reads them: each stream with an append without
            // facts, at its stored version.
            let latest: HashMap<Uuid, u64> = appends
                .iter()
                .filter(|(_, _, _, facts)| *facts == 0)
                .map(|(_, s, _, _)| {
                    let i = streams.iter().position(|t| t == s).expect("one of the streams");
                    (s.as_uuid(), stored[i])
                })
                .collect();
            let accepted = stale(appends.iter().copied(), latest.clone()).is_empty();
            let expected = unstale_versions(appends.iter().copied())
                .is_some_and(|e| e.iter().all(|(s, v)| latest.get(s) == Some(v)));
            prop_assert_eq!(accepted, expected);
        }
    }
}
