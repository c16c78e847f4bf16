//! In-process consumers of the outbox. Delivery is at least once, so every
//! handler is made idempotent by the inbox: it records `(message_id,
//! handler)` in the same transaction as its effect and skips a message it
//! has seen (`Store::count_daily_facts` shows the pattern). Facts are
//! handled in batches, a transaction each, so that a consumer does not cost
//! a commit per fact.
//!
//! With Redis, consumers read the outbox stream in a consumer group (the
//! nodes share the work; an entry left unacknowledged by a node that died
//! is claimed by another after a minute). Without Redis, the relay hands
//! them the rows, and a handler's effect and the rows' mark as published
//! are one transaction: exactly once, with no inbox row to write.
//!
//! The one consumer today, `daily-facts`, counts the facts committed per UTC
//! day and kind, for `GET /v1/admin/stats`.

use std::sync::Arc;
use std::time::Duration;

use redis::streams::{StreamAutoClaimOptions, StreamId, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, AsyncConnectionConfig};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::background::{Background, Shutdown};
use crate::store::{DailyFact, Store, from_micros};
use turnout_actors::store::StoreError;

const GROUP: &str = "turnout-daily-facts";
/// Entries another consumer left unacknowledged this long are taken over.
const CLAIM_IDLE_MS: u64 = 60_000;
/// How often the group's lag is read for `turnout_outbox_consumer_lag`.
const LAG_EVERY: Duration = Duration::from_secs(10);

/// One fact, as consumers see it.
#[derive(Debug, Clone)]
pub struct Fact {
    pub message_id: Uuid,
    pub event_type: String,
    /// When it was committed, unix microseconds.
    pub committed_at: i64,
    /// The trace of its publishing, when traces are exported.
    pub traceparent: Option<String>,
}

/// Handles a batch of facts in one transaction; returns how many were new
/// (the rest were redeliveries and changed nothing).
pub async fn handle(store: &dyn Store, facts: &[Fact]) -> Result<usize, StoreError> {
    if facts.is_empty() {
        return Ok(0);
    }
    let _handling = consuming(facts);
    let handled = store.count_daily_facts(&daily(facts)).await?;
    counted(facts.len(), handled);
    Ok(handled)
}

/// Without Redis: handles the relay's outbox rows (`ids`, one per fact)
/// and marks them published in the same transaction, so each is handled
/// exactly once and no inbox row is written. Returns how many were
/// handled (rows no longer pending are not).
pub async fn handle_outbox_rows(
    store: &dyn Store,
    facts: &[Fact],
    ids: &[i64],
    now: i64,
) -> Result<usize, StoreError> {
    let _handling = consuming(facts);
    let rows: Vec<(i64, DailyFact)> = ids.iter().copied().zip(daily(facts)).collect();
    let handled = store.count_daily_facts_and_publish(&rows, now).await?;
    counted(facts.len(), handled);
    Ok(handled)
}

/// One span per traced fact, a child of its publishing, to be held open
/// while the batch that handles it is.
fn consuming(facts: &[Fact]) -> Vec<tracing::Span> {
    facts
        .iter()
        .filter_map(|fact| {
            let traceparent = fact.traceparent.as_deref()?;
            let span = tracing::info_span!(
                parent: None,
                "outbox.consume",
                otel.name = "daily-facts consume",
                otel.kind = "consumer",
                message_id = %fact.message_id,
            );
            Some(crate::telemetry::following(span, traceparent))
        })
        .collect()
}

fn daily(facts: &[Fact]) -> Vec<DailyFact> {
    facts
        .iter()
        .map(|fact| DailyFact {
            message_id: fact.message_id,
            day: from_micros(fact.committed_at)
                .format("%Y-%m-%d")
                .to_string(),
            event_type: fact.event_type.clone(),
        })
        .collect()
}

fn counted(delivered: usize, handled: usize) {
    metrics::counter!("turnout_consumer_messages_total", "handler" => "daily-facts", "outcome" => "handled")
        .increment(handled as u64);
    metrics::counter!("turnout_consumer_messages_total", "handler" => "daily-facts", "outcome" => "redelivered")
        .increment((delivered - handled) as u64);
}

fn fact_of(entry: &StreamId) -> Option<Fact> {
    Some(Fact {
        message_id: entry.get::<String>("message_id")?.parse().ok()?,
        event_type: entry.get("event_type")?,
        committed_at: entry.get::<String>("committed_at")?.parse().ok()?,
        traceparent: entry.get::<String>("traceparent").filter(|t| !t.is_empty()),
    })
}

/// Starts the stream consumer of this node among the background tasks.
pub fn start(
    store: Arc<dyn Store>,
    redis_url: &SecretString,
    stream: String,
    background: &mut Background,
) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url.expose_secret())
        .map_err(|e| anyhow::anyhow!("invalid Redis URL: {:?}", e.kind()))?;
    let shutdown = background.shutdown();
    background.spawn("outbox consumer", consume(store, client, stream, shutdown));
    Ok(())
}

/// Consumes until shutdown. Stopping mid-batch is safe: what was handled
/// but not acknowledged is delivered again, and the inbox makes that a
/// no-op.
async fn consume(
    store: Arc<dyn Store>,
    client: redis::Client,
    stream: String,
    mut shutdown: Shutdown,
) {
    let consumer = format!("node-{}", Uuid::now_v7().simple());
    let mut failures = 0u32;
    loop {
        let stopped = tokio::select! {
            _ = shutdown.requested() => return,
            stopped = consume_until_error(&store, &client, &stream, &consumer, &mut failures) => stopped,
        };
        if let Err(error) = stopped {
            failures += 1;
            tracing::warn!(%error, "the daily-facts consumer stopped; retrying");
            let pause = Duration::from_millis(200 * 2u64.pow(failures.min(7)));
            if !shutdown.sleep(pause).await {
                return;
            }
        }
    }
}

/// How many of `stream`'s entries `group` has yet to be handed: the
/// stream is capped near `outbox.stream_max_len` entries as it is written,
/// so a group that far behind loses the oldest it had not read. `None`
/// when Redis cannot tell (after some deletions) or the group is unknown.
pub async fn group_lag(
    redis: &mut impl AsyncCommands,
    stream: &str,
    group: &str,
) -> redis::RedisResult<Option<u64>> {
    let groups: redis::streams::StreamInfoGroupsReply = redis.xinfo_groups(stream).await?;
    Ok(groups
        .groups
        .into_iter()
        .find(|g| g.name == group)
        .and_then(|g| g.lag)
        .map(|lag| lag as u64))
}

/// Consumers of the group that have had nothing pending and read nothing
/// for `idle_for`, other than `keep`, are deleted; returns how many. Every
/// process start joins the group under a name of its own, so without this
/// the group lists one consumer per process ever started. One with entries
/// pending is kept whatever its age: deleting it would drop them from the
/// group's pending list, where the others claim them from.
pub async fn forget_idle_consumers(
    redis: &mut impl AsyncCommands,
    stream: &str,
    group: &str,
    keep: &str,
    idle_for: Duration,
) -> redis::RedisResult<usize> {
    let consumers: redis::streams::StreamInfoConsumersReply =
        redis.xinfo_consumers(stream, group).await?;
    let mut forgotten = 0;
    for gone in consumers.consumers.into_iter().filter(|c| {
        c.name != keep && c.pending == 0 && Duration::from_millis(c.idle as u64) >= idle_for
    }) {
        let _: usize = redis.xgroup_delconsumer(stream, group, &gone.name).await?;
        forgotten += 1;
    }
    Ok(forgotten)
}

/// How long a consumer with nothing pending may stay silent before it is
/// taken for a process that is gone: a live one reads every `BLOCK`.
const CONSUMER_GONE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How long a read waits on a quiet stream.
const BLOCK: Duration = Duration::from_secs(2);
/// How much longer than a blocking read Redis may take to answer.
const RESPONSE_MARGIN: Duration = Duration::from_secs(5);

async fn consume_until_error(
    store: &Arc<dyn Store>,
    client: &redis::Client,
    stream: &str,
    consumer: &str,
    failures: &mut u32,
) -> anyhow::Result<()> {
    // XREADGROUP blocks for up to `BLOCK` on a quiet stream, longer than the
    // client's default of half a second; past it with margin, Redis is gone
    // (a half-open connection after a failover answers nothing and closes
    // nothing): the error ends this loop and the caller connects again.
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(BLOCK + RESPONSE_MARGIN));
    let mut redis = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    // From the start of the stream: a new group catches up on history, and
    // the inbox makes that safe.
    let created: redis::RedisResult<()> = redis.xgroup_create_mkstream(stream, GROUP, "0").await;
    if let Err(error) = created
        && error.code() != Some("BUSYGROUP")
    {
        return Err(error.into());
    }
    match forget_idle_consumers(&mut redis, stream, GROUP, consumer, CONSUMER_GONE_AFTER).await {
        Ok(0) => {}
        Ok(forgotten) => tracing::info!(
            forgotten,
            "deleted the stream consumers of processes long gone"
        ),
        Err(error) => {
            tracing::warn!(%error, "could not look for the stream consumers of processes gone")
        }
    }
    let read = StreamReadOptions::default()
        .group(GROUP, consumer)
        .count(100)
        .block(BLOCK.as_millis() as usize);
    let mut last_claim = tokio::time::Instant::now() - Duration::from_secs(3600);
    let mut last_lag = last_claim;
    loop {
        if last_lag.elapsed() > LAG_EVERY {
            last_lag = tokio::time::Instant::now();
            if let Some(lag) = group_lag(&mut redis, stream, GROUP).await? {
                metrics::gauge!("turnout_outbox_consumer_lag").set(lag as f64);
            }
        }
        let mut entries: Vec<StreamId> = Vec::new();
        if last_claim.elapsed() > Duration::from_secs(30) {
            last_claim = tokio::time::Instant::now();
            let claimed: redis::streams::StreamAutoClaimReply = redis
                .xautoclaim_options(
                    stream,
                    GROUP,
                    consumer,
                    CLAIM_IDLE_MS,
                    "0-0",
                    StreamAutoClaimOptions::default().count(100),
                )
                .await?;
            entries.extend(claimed.claimed);
        }
        let reply: Option<StreamReadReply> = redis.xread_options(&[stream], &[">"], &read).await?;
        entries.extend(reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids));
        if entries.is_empty() {
            continue;
        }
        let facts: Vec<Fact> = entries
            .iter()
            .filter_map(|entry| {
                let fact = fact_of(entry);
                if fact.is_none() {
                    tracing::warn!(id = %entry.id, "skipping a malformed outbox entry");
                }
                fact
            })
            .collect();
        handle(store.as_ref(), &facts).await?;
        let ids: Vec<&str> = entries.iter().map(|entry| entry.id.as_str()).collect();
        let _: usize = redis.xack(stream, GROUP, &ids).await?;
        *failures = 0;
    }
}
