//! The outbox relay: publishes the outbox rows that commits wrote, in id
//! order, to one Redis stream per topic (`<stream_prefix><topic>`).
//!
//! - One relay at a time per database, whatever the number of server
//!   processes: it holds a lease (`leases` table) that it renews every pass.
//!   Its epoch fences Redis: a batch is published by a script
//!   ([`RELAY_BATCH`]) that Redis runs whole, and that refuses a relay whose
//!   epoch is below the highest it has seen (kept at
//!   `<stream_prefix>outbox-relay-fence`). So once a relay that took the
//!   lease over has published, nothing from the one before it lands, even
//!   a batch Redis took in before a long stall and runs after it. The
//!   timing keeps that from happening at all as a rule: a batch is sent
//!   only if it answers or times out while the lease is surely held, and
//!   a pass held up by the database is cut short ([`LEASE_MARGIN`]).
//! - In order: a batch is the oldest pending rows; the script adds them to
//!   their streams in id order, stops at the first row Redis refuses
//!   (below), and the rows it added are then marked published. Delivery
//!   is at least once (a crash between the two republishes the batch):
//!   consumers dedupe on `message_id` (see `inbox`).
//! - Redis unreachable: nothing is counted against the rows; the relay backs
//!   off (exponentially, to 30 s) and the outbox grows until Redis returns,
//!   then drains in order.
//! - Redis refusing a row for what it holds: the rows before it are marked
//!   published, none behind it was added; its attempt count rises and it
//!   is retried with backoff; after `max_attempts` it is marked dead
//!   (listed and replayed through the admin API) and the rows behind it
//!   move on. Redis refusing for its own
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
    /// Rows published per batch (one script run by Redis).
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
/// How long a batch (the script [`RELAY_BATCH`] adding up to a batch of
/// entries) may take to answer. The client's default, half a second, would
/// take a Redis slowed by an fsync or a trim for gone, and the batch it
/// had added would be published again on every pass. With a reconnect
/// before it, inside what a pass has of its lease (the assertion below
/// [`Pass`]): one request, so the script is loaded as the relay connects,
/// and a Redis that lost it since is away until the relay connects again.
const BATCH_TIMEOUT: Duration = Duration::from_secs(4);
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
    // A new one after a refusal by the fence (see `Pass::Fenced`).
    let mut holder = Uuid::now_v7().to_string();
    let poll = Duration::from_millis(settings.poll_ms);
    let mut connection: Option<ConnectionManager> = None;
    let mut redis_failures = 0u32;
    // After a store that failed, or a lease not held: the store's pace.
    let wait = poll.max(Duration::from_secs(1));
    // When the lease was last asked for and taken, and its epoch.
    let mut lease: Option<(Instant, i64)> = None;
    while !shutdown.is_requested() {
        if lease.is_none_or(|(taken, _)| taken.elapsed() >= LEASE_RENEW) {
            let asked = Instant::now();
            // By the database's clock, as the cluster's leases: another
            // node's clock running ahead must not take a lease still held.
            let taken = async {
                let now = store.clock().await?;
                store
                    .take_lease(LEASE, &holder, now, LEASE_TTL.as_micros() as i64)
                    .await
            };
            // From when it was asked: a slow answer shortens the time the
            // lease is believed, never lengthens it.
            lease = match taken.await {
                Ok(epoch) => epoch.map(|epoch| (asked, epoch)),
                Err(error) => {
                    tracing::warn!(%error, "outbox relay cannot reach the store");
                    None
                }
            };
        }
        relaying.store(lease.is_some(), Ordering::Relaxed);
        let Some((taken, epoch)) = lease else {
            shutdown.sleep(wait).await;
            continue;
        };
        let held = Held {
            epoch,
            ends: taken + LEASE_TTL - LEASE_MARGIN,
        };
        let passed = tokio::time::timeout_at(
            held.ends.into(),
            pass(&store, client.as_ref(), &mut connection, &settings, held),
        )
        .await;
        let Ok(passed) = passed else {
            // Only the database can be this slow (a batch is sent only
            // if it answers in time, a connection is tried briefly):
            // what the pass published goes again (at least once), after a
            // pause as long as a failing store's.
            tracing::warn!("an outbox pass outlasted its lease; the next asks for it again");
            metrics::counter!("turnout_outbox_passes_cut_total").increment(1);
            lease = None;
            shutdown.sleep(wait).await;
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
            Pass::StoreAway => wait,
            Pass::LeaseShort => {
                // Renewed at once by the next turn (more than LEASE_RENEW
                // has gone by), unless the database is this slow again.
                tracing::warn!("the outbox lease was too far gone to publish; renewing it first");
                metrics::counter!("turnout_outbox_passes_cut_total").increment(1);
                Duration::ZERO
            }
            Pass::Fenced { fence } => {
                // Another relay took the lease over and published; or the
                // database still names this one (it lost that change of
                // hands: a failover to a replica behind), or another
                // database's relay publishes to these streams (an
                // operator's mistake). Under a new name the lease changes
                // hands once this one's runs out, and its epoch rises past
                // the fence's (which is at most the time it was taken).
                tracing::error!(
                    epoch,
                    fence,
                    "redis refused the outbox relay: a relay with a later lease epoch has published \
                     to these streams; this one asks for the lease again under a new name"
                );
                metrics::counter!("turnout_outbox_fenced_total").increment(1);
                holder = Uuid::now_v7().to_string();
                lease = None;
                wait
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
    /// Too little of the lease was left to send a batch: renew it first.
    LeaseShort,
    /// Redis refused the batch: a relay with a later epoch (`fence`) has
    /// published.
    Fenced {
        fence: i64,
    },
}

/// The lease a pass runs under.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// Its fencing token (see [`RELAY_BATCH`]).
    epoch: i64,
    /// When the pass must be over: another relay may take the lease from
    /// [`LEASE_MARGIN`] later.
    ends: Instant,
}

// A pass begun as late as the lease allows (LEASE_RENEW after it was
// taken) can still connect and publish before it runs out.
const _: () = assert!(
    LEASE_RENEW.as_secs() + CONNECT_TIMEOUT.as_secs() + BATCH_TIMEOUT.as_secs()
        < LEASE_TTL.as_secs() - LEASE_MARGIN.as_secs()
);

async fn pass(
    store: &Arc<dyn Store>,
    client: Option<&redis::Client>,
    connection: &mut Option<ConnectionManager>,
    settings: &OutboxSettings,
    held: Held,
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
            .set_response_timeout(Some(BATCH_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(0);
        let connected = async {
            let mut redis = ConnectionManager::new_with_config(client.clone(), config).await?;
            RELAY_BATCH.load_async(&mut redis).await?;
            Ok::<_, redis::RedisError>(redis)
        };
        match connected.await {
            Ok(c) => *connection = Some(c),
            Err(error) => {
                tracing::warn!(error = ?error.kind(), "outbox relay cannot connect to redis; backing off");
                return Pass::RedisAway;
            }
        }
    }
    // Sent, a batch cannot be taken back: one is sent only if it answers
    // (or times out) while the lease is surely held — the send may first
    // wait for a reconnect — so that as a rule the fence has nothing to
    // refuse.
    if Instant::now() + CONNECT_TIMEOUT + BATCH_TIMEOUT > held.ends {
        return Pass::LeaseShort;
    }
    let redis = connection.as_mut().expect("connected above");
    let started = Instant::now();
    let outcome = match publish(
        redis,
        &settings.stream_prefix,
        held.epoch,
        &rows,
        &traces,
        settings.stream_max_len,
    )
    .await
    {
        Ok(outcome) => outcome,
        Err(error) => {
            // Nothing in the batch is to blame (the script checks each row
            // itself): Redis unreachable, slow, or refusing for its state.
            tracing::warn!(error = ?error.kind(), code = error.code(), "redis is away; the outbox waits");
            *connection = None;
            return Pass::RedisAway;
        }
    };
    metrics::histogram!("turnout_outbox_pipeline_seconds").record(started.elapsed().as_secs_f64());
    match outcome {
        Published::All => mark_published(store, &rows, settings).await,
        Published::Fenced { fence } => Pass::Fenced { fence },
        Published::Stopped { added, error } => {
            // The rows before the one refused are in their streams.
            let added = added.min(rows.len() - 1);
            if added > 0
                && let Pass::StoreAway = mark_published(store, &rows[..added], settings).await
            {
                return Pass::StoreAway;
            }
            match blame(&error) {
                Blame::Redis(code) => {
                    // A replica after a failover, say: the next pass
                    // connects again, to wherever the primary is now.
                    tracing::warn!(code, "redis is away; the outbox waits");
                    *connection = None;
                    Pass::RedisAway
                }
                Blame::Row(code) => charge(store, &rows[added], code, settings).await,
            }
        }
    }
}

/// The relay's batch, run whole by Redis. The fence first: a relay whose
/// lease epoch is below the highest seen is refused before it adds
/// anything; a higher one is recorded. Then each row to its stream, in
/// order, stopping at the first that Redis refuses, with its error.
///
/// `KEYS[1]` the fence, `KEYS[2..]` each row's stream; `ARGV[1]` the
/// epoch, `ARGV[2]` the streams' cap, then each row's [`FIELDS`] names and
/// values. Answers `{what, n, error}`: `added` and how many, `stopped`
/// after `n` added and the refusal, or `fenced` and the fence. A row's
/// values are named one by one rather than gathered into a table for
/// `unpack`: with the table a row cost Redis 2.7 µs more than its `XADD`
/// sent in a pipeline (5.7 against 3.0); named, 1.1 µs more (BENCHMARKS,
/// "The outbox relay's batch as a script").
static RELAY_BATCH: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local fence = tonumber(redis.call('GET', KEYS[1]) or '0')
if not fence then
  return redis.error_reply('FENCE ' .. KEYS[1] .. ' holds no lease epoch')
end
local epoch = tonumber(ARGV[1])
if epoch < fence then
  return {'fenced', fence, ''}
end
if epoch > fence then
  redis.call('SET', KEYS[1], ARGV[1])
end
-- a: the arguments, as a local; at: where the row's values begin, less one
local cap, a, at = ARGV[2], ARGV, 2
for i = 2, #KEYS do
  local added = redis.pcall('XADD', KEYS[i], 'MAXLEN', '~', cap, '*',
    a[at + 1], a[at + 2], a[at + 3], a[at + 4], a[at + 5], a[at + 6],
    a[at + 7], a[at + 8], a[at + 9], a[at + 10], a[at + 11], a[at + 12],
    a[at + 13], a[at + 14], a[at + 15], a[at + 16], a[at + 17], a[at + 18])
  at = at + 18
  if type(added) == 'table' and added.err then
    return {'stopped', i - 2, added.err}
  end
end
return {'added', #KEYS - 1, ''}
",
    )
});

// The script names each of a row's 18 names and values.
const _: () = assert!(FIELDS == 9);

/// What Redis did with a batch ([`RELAY_BATCH`]).
#[derive(Debug, PartialEq, Eq)]
enum Published {
    /// Every row is in its stream.
    All,
    /// The first `added` rows are in their streams; the next was refused
    /// with `error` (Redis's, its code first) and none after it was tried.
    Stopped { added: usize, error: String },
    /// A relay whose lease epoch is `fence`, later than this one's, has
    /// published: nothing was added.
    Fenced { fence: i64 },
}

/// Publishes `rows` (with their traces) under lease `epoch`.
async fn publish(
    redis: &mut impl redis::aio::ConnectionLike,
    prefix: &str,
    epoch: i64,
    rows: &[OutboxMessage],
    traces: &[Option<String>],
    max_len: usize,
) -> redis::RedisResult<Published> {
    // One request, `EVALSHA` (the script is loaded as the relay connects):
    // the client's `invoke_async` would load a script Redis lost and send
    // the batch again, a second request past the one the lease was checked
    // for. A Redis without the script answers `NOSCRIPT`: away, so the
    // relay connects again, and loads it.
    let mut batch = redis::cmd("EVALSHA");
    batch
        .arg(RELAY_BATCH.get_hash())
        .arg(1 + rows.len())
        .arg(fence_key(prefix));
    for row in rows {
        batch.arg(format!("{prefix}{}", row.topic));
    }
    batch.arg(epoch).arg(max_len);
    for (row, traceparent) in rows.iter().zip(traces) {
        for (name, value) in fields(row, traceparent.as_deref()) {
            batch.arg(name).arg(value);
        }
    }
    let (what, n, error): (String, i64, String) = batch.query_async(redis).await?;
    match what.as_str() {
        "added" => Ok(Published::All),
        "stopped" => Ok(Published::Stopped {
            added: usize::try_from(n).unwrap_or(0),
            error,
        }),
        "fenced" => Ok(Published::Fenced { fence: n }),
        _ => Err(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "the outbox script answered something it never answers",
            what,
        ))),
    }
}

/// Where Redis keeps the highest lease epoch of a relay that published to
/// the streams of `prefix`.
pub fn fence_key(prefix: &str) -> String {
    format!("{prefix}outbox-relay-fence")
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

/// Who is to blame for a row Redis refused inside a batch, by its `error`
/// (Redis's message, its code first): Redis's own state ([`redis_away`])
/// or the row, with the code.
fn blame(error: &str) -> Blame<'_> {
    let code = error.split_whitespace().next().unwrap_or_default();
    if redis_away(code) {
        Blame::Redis(code)
    } else {
        Blame::Row(code)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Blame<'a> {
    Redis(&'a str),
    Row(&'a str),
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

/// How many fields a stream entry has.
const FIELDS: usize = 9;

/// The stream entry: the fact, when it was committed (unix µs) and where it
/// came from: the request that caused it, and the trace of its publishing
/// (W3C `traceparent`, empty when traces are off) for its consumers.
fn fields(row: &OutboxMessage, traceparent: Option<&str>) -> [(&'static str, String); FIELDS] {
    [
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

    /// Held by each test that runs the script: one flushes Redis's scripts.
    /// (Tests of other binaries run after these under `cargo test`; a
    /// runner that mixes binaries could load the script in between.)
    static SCRIPTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// A connection to the test Redis, a prefix of the test's own, and the
    /// scripts to itself; `None` unless `TURNOUT_TEST_REDIS_URL` is set.
    async fn test_redis() -> Option<(
        redis::aio::MultiplexedConnection,
        String,
        tokio::sync::MutexGuard<'static, ()>,
    )> {
        let Some(url) = std::env::var("TURNOUT_TEST_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            eprintln!("TURNOUT_TEST_REDIS_URL is not set: skipping a real Redis's answers");
            return None;
        };
        let client = redis::Client::open(url).unwrap();
        let mut redis = client.get_multiplexed_async_connection().await.unwrap();
        let scripts = SCRIPTS.lock().await;
        RELAY_BATCH.load_async(&mut redis).await.unwrap();
        Some((redis, format!("outbox-test-{}:", Uuid::now_v7()), scripts))
    }

    fn row(id: i64, topic: &str) -> OutboxMessage {
        OutboxMessage {
            id,
            message_id: Uuid::now_v7(),
            topic: topic.to_owned(),
            aggregate_id: Uuid::now_v7(),
            stream_version: id,
            event_type: "MemberJoined".to_owned(),
            payload: format!("{{\"row\":{id}}}"),
            request_id: None,
            traceparent: None,
            attempts: 0,
            next_attempt_at: 0,
            last_error: None,
            created_at: id,
        }
    }

    /// The `outbox_id`s in a stream, in its order.
    async fn published_ids(
        redis: &mut redis::aio::MultiplexedConnection,
        stream: &str,
    ) -> Vec<i64> {
        let entries: redis::streams::StreamRangeReply = redis.xrange_all(stream).await.unwrap();
        entries
            .ids
            .iter()
            .map(|entry| entry.get::<String>("outbox_id").unwrap().parse().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_batch_stops_at_the_row_redis_refuses() {
        let Some((mut redis, prefix, _scripts)) = test_redis().await else {
            return;
        };
        // A key of another type where the third row's stream should be.
        let _: () = redis
            .set(format!("{prefix}broken"), "not a stream")
            .await
            .unwrap();
        let rows = [
            row(1, "events"),
            row(2, "events"),
            row(3, "broken"),
            row(4, "events"),
        ];
        let traces = vec![None; rows.len()];

        let outcome = publish(&mut redis, &prefix, 10, &rows, &traces, 1000)
            .await
            .unwrap();

        let Published::Stopped { added, error } = outcome else {
            panic!("the batch went through a key of another type: {outcome:?}");
        };
        assert_eq!(added, 2);
        assert_eq!(blame(&error), Blame::Row("WRONGTYPE"), "{error}");
        let stream = format!("{prefix}events");
        assert_eq!(
            published_ids(&mut redis, &stream).await,
            [1, 2],
            "nothing behind the refused row"
        );
        let broken = format!("{prefix}broken");
        let _: () = redis
            .del(&[stream, broken, fence_key(&prefix)])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_relay_behind_the_fence_publishes_nothing() {
        let Some((mut redis, prefix, _scripts)) = test_redis().await else {
            return;
        };
        let stream = format!("{prefix}events");
        let traces = [None];

        let first = publish(&mut redis, &prefix, 10, &[row(1, "events")], &traces, 1000).await;
        assert_eq!(first.unwrap(), Published::All);
        let late = publish(&mut redis, &prefix, 9, &[row(2, "events")], &traces, 1000).await;
        assert_eq!(
            late.unwrap(),
            Published::Fenced { fence: 10 },
            "an earlier epoch is fenced off"
        );
        let again = publish(&mut redis, &prefix, 10, &[row(3, "events")], &traces, 1000).await;
        assert_eq!(
            again.unwrap(),
            Published::All,
            "the fence's own epoch goes on"
        );
        let next = publish(&mut redis, &prefix, 11, &[row(4, "events")], &traces, 1000).await;
        assert_eq!(
            next.unwrap(),
            Published::All,
            "a later epoch raises the fence"
        );
        let late = publish(&mut redis, &prefix, 10, &[row(5, "events")], &traces, 1000).await;
        assert_eq!(late.unwrap(), Published::Fenced { fence: 11 });

        assert_eq!(published_ids(&mut redis, &stream).await, [1, 3, 4]);
        let fence: i64 = redis.get(fence_key(&prefix)).await.unwrap();
        assert_eq!(fence, 11);
        let _: () = redis.del(&[stream, fence_key(&prefix)]).await.unwrap();
    }

    /// A Redis that lost its scripts (restarted, failed over) refuses the
    /// batch whole, as a Redis away: the relay connects again, loading it.
    #[tokio::test]
    async fn a_batch_that_finds_the_script_gone_adds_nothing() {
        let Some((mut redis, prefix, _scripts)) = test_redis().await else {
            return;
        };
        let stream = format!("{prefix}events");
        let traces = [None];
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut redis)
            .await
            .unwrap();

        let first = publish(&mut redis, &prefix, 10, &[row(1, "events")], &traces, 1000).await;
        let refused = first.unwrap_err();
        assert_eq!(
            refused.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
        );
        assert_eq!(published_ids(&mut redis, &stream).await, Vec::<i64>::new());
        RELAY_BATCH.load_async(&mut redis).await.unwrap();
        let again = publish(&mut redis, &prefix, 10, &[row(1, "events")], &traces, 1000).await;
        assert_eq!(again.unwrap(), Published::All);
        assert_eq!(published_ids(&mut redis, &stream).await, [1]);
        let _: () = redis.del(&[stream, fence_key(&prefix)]).await.unwrap();
    }

    /// A fence key that holds no epoch (written by something else) stops
    /// the relay with an error that names it, and no row is blamed.
    #[tokio::test]
    async fn a_fence_that_holds_no_epoch_is_named_in_the_error() {
        let Some((mut redis, prefix, _scripts)) = test_redis().await else {
            return;
        };
        let _: () = redis.set(fence_key(&prefix), "not an epoch").await.unwrap();

        let refused = publish(&mut redis, &prefix, 10, &[row(1, "events")], &[None], 1000).await;

        let error = refused.unwrap_err();
        assert_eq!(error.code(), Some("FENCE"), "{error:?}");
        let _: () = redis.del(fence_key(&prefix)).await.unwrap();
    }

    #[test]
    fn an_outage_answered_as_an_error_charges_no_row() {
        for (error, code) in [
            ("LOADING Redis is loading the dataset in memory", "LOADING"),
            (
                "OOM command not allowed when used memory > 'maxmemory'.",
                "OOM",
            ),
            (
                "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
                "MISCONF",
            ),
            (
                "READONLY You can't write against a read only replica.",
                "READONLY",
            ),
            (
                "NOREPLICAS Not enough good replicas to write.",
                "NOREPLICAS",
            ),
        ] {
            assert_eq!(blame(error), Blame::Redis(code));
        }
    }

    #[test]
    fn a_refusal_of_a_message_is_charged_to_that_message() {
        for (error, code) in [
            (
                "WRONGTYPE Operation against a key holding the wrong kind of value",
                "WRONGTYPE",
            ),
            (
                "ERR The ID specified in XADD is equal or smaller than the target stream top item",
                "ERR",
            ),
        ] {
            assert_eq!(blame(error), Blame::Row(code));
        }
    }
}
