//! The outbox relay: publishes the outbox rows that commits wrote, in id
//! order, to one Redis stream per topic (`<stream_prefix><topic>`).
//!
//! - One relay at a time per database, whatever the number of server
//!   processes: it holds a lease (`leases` table) that it renews every pass.
//!   A pipeline is begun only if it answers or times out while the lease
//!   is surely held, and a pass held up by the database is cut short
//!   ([`LEASE_MARGIN`]), so that a relay that takes the lease over does
//!   not publish beside one that still believes it holds it. (Redis may
//!   still carry out a pipeline it took in long after the relay gave up
//!   on its answer — after a stall longer than [`PIPELINE_TIMEOUT`] —
//!   which then lands beside the next relay's: consumers dedupe on
//!   `message_id`.)
//! - In order: a batch is the oldest pending rows; it is published in one
//!   pipeline and then marked published. Delivery is at least once (a crash
//!   between the two republishes the batch): consumers dedupe on
//!   `message_id` (see `inbox`). Redis runs each command of a pipeline on
//!   its own, so where it refuses one row of a batch (below), the rows
//!   behind it are in the stream already, and go again when the batch is
//!   retried: a row refused can be overtaken by those behind it.
//! - Redis unreachable: nothing is counted against the rows; the relay backs
//!   off (exponentially, to 30 s) and the outbox grows until Redis returns,
//!   then drains in order.
//! - Redis refusing a row for what it holds: the rows before it are marked
//!   published; its attempt count rises and it is retried with backoff;
//!   after `max_attempts` it is marked dead (listed and replayed through the
//!   admin API) and the rows behind it move on. Redis refusing for its own
//!   state (out of memory, loading, a replica) charges no row.
//! - A stream keeps what `outbox.retention_hours` keeps of the outbox and the
//!   inbox, and no longer (`trim_stream`, with the purge): a redelivery,
//!   or a consumer group created anew reading from the start, never meets
//!   an entry whose inbox row is gone, which it would count again.
//!   `stream_max_len` bounds it meanwhile.
//! - Without Redis (the embedded default) there is nobody outside the process
//!   to publish to: the rows go to the in-process consumers (`consumers`),
//!   which mark them published in the transaction of their effect (so the
//!   retention purge keeps the table small).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use uuid::Uuid;

use crate::background::{Background, Shutdown, every, purge_in_batches};
use crate::store::{OutboxMessage, OutboxStatus, Store, micros};

/// `[outbox]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct OutboxSettings {
    /// Streams are named `<stream_prefix><topic>`.
    pub stream_prefix: String,
    /// Rows published per pipeline.
    pub batch: i64,
    /// Pause between passes when there is nothing to do.
    pub poll_ms: u64,
    /// Failed attempts (Redis answering with an error) before a row is dead.
    pub max_attempts: i64,
    /// Each stream is trimmed to about this many entries.
    pub stream_max_len: usize,
    /// Published rows are deleted after this long.
    pub retention_hours: i64,
}

/// The topic of every outbox row the journal writes (its SQL writes it as
/// `'events'`): one stream, `<stream_prefix>events`.
pub const EVENTS_TOPIC: &str = "events";

const LEASE: &str = "outbox-relay";
const LEASE_TTL: Duration = Duration::from_secs(10);
/// The lease is renewed this often (a write: not on every pass).
const LEASE_RENEW: Duration = Duration::from_secs(2);
/// A pass ends this long before the lease it began under could run out
/// (another relay may take it from then on): one that has not is cut
/// short, its rows left pending for the next.
const LEASE_MARGIN: Duration = Duration::from_secs(1);
/// How long a pipeline of up to a batch of `XADD`s may take to answer.
/// The client's default, half a second, is per request and counts the
/// whole pipeline: a Redis slowed by an fsync or a trim would be taken
/// for gone, and the batch it had added published again on every pass.
/// With a reconnect before it, inside what a pass has of its lease (the
/// assertion below [`Pass`]).
const PIPELINE_TIMEOUT: Duration = Duration::from_secs(4);
/// How long connecting to Redis may take, once per pass.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts the relay (publishing to Redis when a URL is given) and the
/// outbox gauges among the background tasks.
pub fn start(
    store: Arc<dyn Store>,
    redis_url: Option<&SecretString>,
    settings: OutboxSettings,
    background: &mut Background,
) -> anyhow::Result<()> {
    let client = redis_url
        .map(|url| {
            redis::Client::open(url.expose_secret())
                .map_err(|e| anyhow::anyhow!("invalid Redis URL: {:?}", e.kind()))
        })
        .transpose()?;
    let shutdown = background.shutdown();
    let (retention_hours, prefix) = (settings.retention_hours, settings.stream_prefix.clone());
    let relaying = Arc::new(AtomicBool::new(false));
    background.spawn(
        "outbox relay",
        relay(
            Arc::clone(&store),
            client.clone(),
            settings,
            Arc::clone(&relaying),
            shutdown.clone(),
        ),
    );
    // Apart from the relay: a backlog's purge takes a while (see
    // `purge_in_batches`), and the relay must keep publishing and renewing
    // its lease meanwhile.
    background.spawn(
        "outbox purge",
        every(Duration::from_secs(60), shutdown.clone(), {
            let store = Arc::clone(&store);
            move |mut shutdown| {
                let (store, relaying) = (Arc::clone(&store), Arc::clone(&relaying));
                let (client, prefix) = (client.clone(), prefix.clone());
                async move {
                    // One node purges: the one whose relay holds the lease.
                    if relaying.load(Ordering::Relaxed) {
                        let mut trimmed = true;
                        if let Some(client) = &client
                            && let Err(error) = trim_stream(client, &prefix, retention_hours).await
                        {
                            tracing::warn!(error = ?error.kind(), "cannot trim the outbox streams");
                            trimmed = false;
                        }
                        purge(&store, retention_hours, trimmed, &mut shutdown).await;
                    }
                }
            }
        }),
    );
    background.spawn(
        "outbox gauges",
        every(Duration::from_secs(5), shutdown, move |_| {
            let store = Arc::clone(&store);
            async move {
                if let Ok((pending, dead)) = store.outbox_counts().await {
                    metrics::gauge!("turnout_outbox_pending").set(pending as f64);
                    metrics::gauge!("turnout_outbox_dead").set(dead as f64);
                }
            }
        }),
    );
    Ok(())
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100 * 2u64.pow(failures.min(8))).min(Duration::from_secs(30))
}

fn now_micros() -> i64 {
    micros(chrono::Utc::now())
}

/// Publishes until shutdown, which it heeds between passes, so a batch is
/// never left published but unmarked by a stop.
async fn relay(
    store: Arc<dyn Store>,
    client: Option<redis::Client>,
    settings: OutboxSettings,
    relaying: Arc<AtomicBool>,
    mut shutdown: Shutdown,
) {
    let holder = Uuid::now_v7().to_string();
    let poll = Duration::from_millis(settings.poll_ms);
    let mut connection: Option<ConnectionManager> = None;
    let mut redis_failures = 0u32;
    let mut lease: Option<Instant> = None;
    while !shutdown.is_requested() {
        let asked = Instant::now();
        let held = match lease {
            Some(renewed) if renewed.elapsed() < LEASE_RENEW => true,
            // By the database's clock, as the cluster's leases: another
            // node's clock running ahead must not take a lease still held.
            _ => match async {
                let now = store.clock().await?;
                store
                    .take_lease(LEASE, &holder, now, LEASE_TTL.as_micros() as i64)
                    .await
            }
            .await
            {
                Ok(true) => {
                    // From when it was asked: a slow answer shortens the
                    // time the lease is believed, never lengthens it.
                    lease = Some(asked);
                    true
                }
                Ok(false) => {
                    lease = None;
                    false
                }
                Err(error) => {
                    tracing::warn!(%error, "outbox relay cannot reach the store");
                    lease = None;
                    false
                }
            },
        };
        relaying.store(held, Ordering::Relaxed);
        let Some(asked) = lease.filter(|_| held) else {
            shutdown.sleep(poll.max(Duration::from_secs(1))).await;
            continue;
        };
        let lease_ends = asked + LEASE_TTL - LEASE_MARGIN;
        let passed = tokio::time::timeout_at(
            lease_ends.into(),
            pass(
                &store,
                client.as_ref(),
                &mut connection,
                &settings,
                lease_ends,
            ),
        )
        .await;
        let Ok(passed) = passed else {
            // Only the database can be this slow (a pipeline is begun
            // only if it ends in time, a connection is tried briefly):
            // what the pass published goes again (at least once), after a
            // pause as long as a failing store's.
            tracing::warn!("an outbox pass outlasted its lease; the next asks for it again");
            metrics::counter!("turnout_outbox_passes_cut_total").increment(1);
            lease = None;
            shutdown.sleep(poll.max(Duration::from_secs(1))).await;
            continue;
        };
        let pause = match passed {
            Pass::Busy => {
                redis_failures = 0;
                Duration::ZERO
            }
            Pass::Idle => {
                redis_failures = 0;
                poll
            }
            Pass::RedisAway => {
                redis_failures += 1;
                backoff(redis_failures)
            }
            Pass::StoreAway => poll.max(Duration::from_secs(1)),
            Pass::LeaseShort => {
                // Renewed at once by the next turn (more than LEASE_RENEW
                // has gone by), unless the database is this slow again.
                tracing::warn!("the outbox lease was too far gone to publish; renewing it first");
                metrics::counter!("turnout_outbox_passes_cut_total").increment(1);
                Duration::ZERO
            }
        };
        if !pause.is_zero() {
            shutdown.sleep(pause).await;
        }
    }
}

enum Pass {
    /// A full batch went out: go again at once.
    Busy,
    /// Nothing (more) to do.
    Idle,
    RedisAway,
    StoreAway,
    /// Too little of the lease was left to begin a pipeline: renew it
    /// first.
    LeaseShort,
}

// A pass begun as late as the lease allows (LEASE_RENEW after it was
// taken) can still connect and publish before it runs out.
const _: () = assert!(
    LEASE_RENEW.as_secs() + CONNECT_TIMEOUT.as_secs() + PIPELINE_TIMEOUT.as_secs()
        < LEASE_TTL.as_secs() - LEASE_MARGIN.as_secs()
);

async fn pass(
    store: &Arc<dyn Store>,
    client: Option<&redis::Client>,
    connection: &mut Option<ConnectionManager>,
    settings: &OutboxSettings,
    lease_ends: Instant,
) -> Pass {
    let now = now_micros();
    let rows = match store.outbox(OutboxStatus::Pending, 0, settings.batch).await {
        Ok(rows) => rows,
        Err(error) => {
            tracing::warn!(%error, "outbox relay cannot read the outbox");
            return Pass::StoreAway;
        }
    };
    let Some(head) = rows.first() else {
        return Pass::Idle;
    };
    // The head is backing off after an error: nothing behind it may overtake it.
    if head.next_attempt_at > now {
        return Pass::Idle;
    }
    // Open until the rows are marked published.
    let publishing: Vec<Option<tracing::Span>> = rows.iter().map(publish_span).collect();
    let traces: Vec<Option<String>> = publishing
        .iter()
        .map(|span| span.as_ref().and_then(crate::telemetry::traceparent))
        .collect();
    let Some(client) = client else {
        // Nobody outside: the in-process consumers get the rows here.
        let facts: Vec<crate::consumers::Fact> = rows
            .iter()
            .zip(&traces)
            .map(|(row, traceparent)| crate::consumers::Fact {
                message_id: row.message_id,
                event_type: row.event_type.clone(),
                committed_at: row.created_at,
                traceparent: traceparent.clone(),
            })
            .collect();
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let handled =
            crate::consumers::handle_outbox_rows(store.as_ref(), &facts, &ids, now_micros()).await;
        return match handled {
            // Those no longer pending were another relay's.
            Ok(marked) => published(&rows, marked, settings),
            Err(error) => {
                tracing::warn!(%error, "an outbox consumer failed; retrying");
                Pass::StoreAway
            }
        };
    };
    if connection.is_none() {
        // Tried once, briefly: the relay's own backoff paces the retries,
        // and a pass must not spend its lease on them.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(PIPELINE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(0);
        match ConnectionManager::new_with_config(client.clone(), config).await {
            Ok(c) => *connection = Some(c),
            Err(error) => {
                tracing::warn!(error = ?error.kind(), "outbox relay cannot connect to redis; backing off");
                return Pass::RedisAway;
            }
        }
    }
    // Sent, a pipeline's commands cannot be taken back: one is begun only
    // if it answers (or times out) while the lease is surely held — the
    // send may first wait for a reconnect — or a relay that took the lease
    // over could be publishing beside it.
    if Instant::now() + CONNECT_TIMEOUT + PIPELINE_TIMEOUT > lease_ends {
        return Pass::LeaseShort;
    }
    let redis = connection.as_mut().expect("connected above");
    let mut pipe = redis::pipe();
    for (row, traceparent) in rows.iter().zip(&traces) {
        pipe.cmd("XADD")
            .arg(format!("{}{}", settings.stream_prefix, row.topic))
            .arg("MAXLEN")
            .arg("~")
            .arg(settings.stream_max_len)
            .arg("*")
            .arg(fields(row, traceparent.as_deref()))
            .ignore();
    }
    let started = Instant::now();
    match pipe.query_async::<()>(redis).await {
        Ok(()) => {
            metrics::histogram!("turnout_outbox_pipeline_seconds")
                .record(started.elapsed().as_secs_f64());
            mark_published(store, &rows, settings).await
        }
        Err(error) => match refusal(&error) {
            Refusal::RedisAway(code) => {
                tracing::warn!(error = ?error.kind(), code, "redis is away; the outbox waits");
                *connection = None;
                Pass::RedisAway
            }
            Refusal::Row { index, code } => {
                // The rows before the one refused are in the stream.
                let index = index.min(rows.len() - 1);
                let (added, refused) = (&rows[..index], &rows[index]);
                if !added.is_empty()
                    && let Pass::StoreAway = mark_published(store, added, settings).await
                {
                    return Pass::StoreAway;
                }
                charge(store, refused, &code, settings).await
            }
        },
    }
}

/// Counts a failed publish against `row`, which goes dead after
/// `max_attempts`; until then it backs off, and the rows behind it wait.
async fn charge(
    store: &Arc<dyn Store>,
    row: &OutboxMessage,
    code: &str,
    settings: &OutboxSettings,
) -> Pass {
    let attempts = row.attempts + 1;
    let dead = attempts >= settings.max_attempts;
    let message = format!("redis refused the message: {code}");
    let retry_at = now_micros() + backoff(attempts as u32).as_micros() as i64;
    match store
        .outbox_failed(row.id, attempts, retry_at, &message, dead)
        .await
    {
        Ok(true) if dead => {
            metrics::counter!("turnout_outbox_dead_total").increment(1);
            tracing::error!(outbox_id = row.id, message_id = %row.message_id, attempts, "outbox row is dead: {message}");
            Pass::Idle
        }
        Ok(true) => {
            tracing::warn!(
                outbox_id = row.id,
                attempts,
                "outbox publish failed: {message}"
            );
            Pass::Idle
        }
        // No longer pending: published meanwhile, nothing to charge.
        Ok(false) => Pass::Idle,
        Err(_) => Pass::StoreAway,
    }
}

/// Why Redis did not take a batch.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// For its own state: see [`redis_away`]. With the error code, if any.
    RedisAway(Option<String>),
    /// For what the row at `index` of the batch holds.
    Row { index: usize, code: String },
}

/// What a failed pipeline says. A pipeline's failure carries the error of
/// each command refused, with its place in the batch: the code of one
/// alone (`RedisError::code`) is known only for the codes redis-rs names,
/// and `OOM` or `MISCONF` are not among them.
fn refusal(error: &redis::RedisError) -> Refusal {
    let transport = error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout();
    let refused = match error.clone().into_server_errors() {
        Some(refused) if !transport => refused,
        _ => return Refusal::RedisAway(error.code().map(str::to_owned)),
    };
    if let Some((_, outage)) = refused.iter().find(|(_, e)| redis_away(e.code())) {
        return Refusal::RedisAway(Some(outage.code().to_owned()));
    }
    match refused.iter().min_by_key(|(index, _)| *index) {
        Some((index, first)) => Refusal::Row {
            index: *index,
            code: first.code().to_owned(),
        },
        None => Refusal::RedisAway(None),
    }
}

/// Whether an error `code` says Redis refuses for its own state, not for
/// what a row holds: answering every write with an error until it recovers
/// — loading its dump after a restart, out of memory, unable to persist, a
/// replica after a failover. Nothing is then counted against the rows
/// (nor when Redis is unreachable): charged to a row, such an outage would
/// mark good rows dead one after another, and the stream would go on
/// without them. (Its credentials refused count too: no row is to blame.)
fn redis_away(code: &str) -> bool {
    const OUTAGES: [&str; 12] = [
        "LOADING",
        "BUSY",
        "OOM",
        "MISCONF",
        "READONLY",
        "MASTERDOWN",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "NOREPLICAS",
        // Credentials or ACLs changed under the relay: every write fails
        // until an operator fixes them, whatever the row.
        "NOAUTH",
        "WRONGPASS",
        "NOPERM",
    ];
    OUTAGES.contains(&code)
}

async fn mark_published(
    store: &Arc<dyn Store>,
    rows: &[OutboxMessage],
    settings: &OutboxSettings,
) -> Pass {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    if let Err(error) = store.outbox_published(&ids, now_micros()).await {
        // Published but not marked: the next pass publishes them again (at
        // least once); consumers dedupe on message_id.
        tracing::warn!(%error, "outbox rows published but not marked");
        return Pass::StoreAway;
    }
    published(rows, rows.len(), settings)
}

/// Counts the `marked` of `rows` just marked published, and says whether
/// a full batch suggests more are waiting.
fn published(rows: &[OutboxMessage], marked: usize, settings: &OutboxSettings) -> Pass {
    metrics::counter!("turnout_outbox_published_total").increment(marked as u64);
    let now = now_micros();
    let latency = metrics::histogram!("turnout_outbox_publish_latency_seconds");
    for row in rows {
        latency.record((now - row.created_at).max(0) as f64 / 1e6);
    }
    if rows.len() as i64 == settings.batch {
        Pass::Busy
    } else {
        Pass::Idle
    }
}

/// The span of a row's publishing, a child of the command that wrote it;
/// none for a row written while traces were off.
fn publish_span(row: &OutboxMessage) -> Option<tracing::Span> {
    let traceparent = row.traceparent.as_deref()?;
    let span = tracing::info_span!(
        parent: None,
        "outbox.publish",
        otel.name = "outbox publish",
        otel.kind = "producer",
        message_id = %row.message_id,
        event_type = %row.event_type,
    );
    Some(crate::telemetry::following(span, traceparent))
}

/// The stream entry: the fact, when it was committed (unix µs) and where it
/// came from: the request that caused it, and the trace of its publishing
/// (W3C `traceparent`, empty when traces are off) for its consumers.
fn fields(row: &OutboxMessage, traceparent: Option<&str>) -> Vec<(&'static str, String)> {
    vec![
        ("outbox_id", row.id.to_string()),
        ("message_id", row.message_id.to_string()),
        ("event_type", row.event_type.clone()),
        ("aggregate_id", row.aggregate_id.to_string()),
        ("stream_version", row.stream_version.to_string()),
        ("request_id", row.request_id.clone().unwrap_or_default()),
        ("traceparent", traceparent.unwrap_or_default().to_owned()),
        ("committed_at", row.created_at.to_string()),
        ("payload", row.payload.clone()),
    ]
}

/// Drops the stream's entries older than the retention: an entry's id is
/// its time of publishing in milliseconds, and the inbox row of its
/// delivery, made later, is kept for as long (see the module's doc). But
/// none a consumer group still needs: from each group's oldest entry
/// handed out and not acknowledged, or else the last it was handed, on,
/// everything stays (a group down or behind longer than the retention
/// keeps its entries; the stream's cap still bounds them, and
/// `turnout_outbox_consumer_lag` shows it). Trimmed exactly, not `~`: this
/// runs once a minute, and a rough trim keeps whole blocks of older
/// entries. The number trimmed.
pub async fn trim_stream(
    client: &redis::Client,
    prefix: &str,
    retention_hours: i64,
) -> redis::RedisResult<u64> {
    let mut redis = client.get_multiplexed_async_connection().await?;
    let stream = format!("{prefix}{EVENTS_TOPIC}");
    let exists: bool = redis.exists(&stream).await?;
    if !exists {
        return Ok(0);
    }
    let oldest_kept = (chrono::Utc::now().timestamp_millis() - retention_hours * 3_600_000).max(0);
    let mut trim_below = EntryId(oldest_kept as u64, 0);
    let groups: redis::streams::StreamInfoGroupsReply = redis.xinfo_groups(&stream).await?;
    for group in groups.groups {
        let mut needed = EntryId::parse(&group.last_delivered_id);
        if group.pending > 0
            && let redis::streams::StreamPendingReply::Data(pending) =
                redis.xpending(&stream, &group.name).await?
        {
            needed = needed.min(EntryId::parse(&pending.start_id));
        }
        trim_below = trim_below.min(needed);
    }
    let trimmed: u64 = redis::cmd("XTRIM")
        .arg(&stream)
        .arg("MINID")
        .arg(trim_below.to_string())
        .query_async(&mut redis)
        .await?;
    if trimmed > 0 {
        tracing::info!(trimmed, "trimmed outbox stream entries past the retention");
    }
    Ok(trimmed)
}

/// A stream entry's id: milliseconds, then a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct EntryId(u64, u64);

impl EntryId {
    /// An id as Redis writes it; one it cannot read is the stream's start
    /// (so nothing is trimmed for it).
    fn parse(id: &str) -> Self {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        match (ms.parse(), seq.parse()) {
            (Ok(ms), Ok(seq)) => Self(ms, seq),
            _ => Self(0, 0),
        }
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// Deletes the rows published, and the consumers' inbox rows of messages
/// handled, more than the retention ago: a redelivery can only come while
/// a message's row is kept. The inbox rows only once the stream was
/// trimmed (`stream_trimmed`): an entry left in it would count twice for
/// a group that reads it anew.
async fn purge(
    store: &Arc<dyn Store>,
    retention_hours: i64,
    stream_trimmed: bool,
    shutdown: &mut Shutdown,
) {
    let before = now_micros() - retention_hours * 3_600_000_000;
    let outbox = purge_in_batches(shutdown, |limit| {
        store.purge_published_outbox(before, limit)
    });
    match outbox.await {
        Ok(0) => {}
        Ok(n) => tracing::info!(deleted = n, "purged published outbox rows"),
        Err(error) => tracing::warn!(%error, "cannot purge the outbox"),
    }
    if !stream_trimmed {
        return;
    }
    let inbox = purge_in_batches(shutdown, |limit| store.purge_inbox(before, limit));
    match inbox.await {
        Ok(0) => {}
        Ok(n) => tracing::info!(deleted = n, "purged inbox rows"),
        Err(error) => tracing::warn!(%error, "cannot purge the inbox"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a real Redis's pipeline failure says, for a batch of a
    /// command that succeeds and one answered with the error `reply`
    /// (`CODE message`). Runs when `TURNOUT_TEST_REDIS_URL` is set.
    async fn pipeline_refused_with(reply: &str) -> Option<Refusal> {
        let Some(url) = std::env::var("TURNOUT_TEST_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            eprintln!("TURNOUT_TEST_REDIS_URL is not set: skipping a real pipeline's refusal");
            return None;
        };
        let client = redis::Client::open(url).unwrap();
        let mut redis = client.get_multiplexed_async_connection().await.unwrap();
        let mut pipe = redis::pipe();
        pipe.cmd("PING").ignore();
        pipe.cmd("EVAL")
            .arg("return redis.error_reply(ARGV[1])")
            .arg(0)
            .arg(reply)
            .ignore();
        let error = pipe.query_async::<()>(&mut redis).await.unwrap_err();
        Some(refusal(&error))
    }

    #[tokio::test]
    async fn an_outage_answered_as_an_error_charges_no_row() {
        for code in ["LOADING", "OOM", "MISCONF", "READONLY", "NOREPLICAS"] {
            let reply = format!("{code} Redis cannot take writes now");
            let Some(refusal) = pipeline_refused_with(&reply).await else {
                return;
            };
            assert_eq!(refusal, Refusal::RedisAway(Some(code.to_owned())));
        }
    }

    #[tokio::test]
    async fn a_refusal_of_a_message_is_charged_to_that_message() {
        for code in ["WRONGTYPE", "ERR"] {
            let reply = format!("{code} Operation against a key holding the wrong kind of value");
            let Some(refusal) = pipeline_refused_with(&reply).await else {
                return;
            };
            let code = code.to_owned();
            assert_eq!(refusal, Refusal::Row { index: 1, code });
        }
    }
}
