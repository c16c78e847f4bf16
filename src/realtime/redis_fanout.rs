//! Cross-node fan-out through Redis pub/sub. Each node routes its own
//! committed changes straight to its hubs and publishes them on a Redis
//! channel; every node subscribes and routes the other nodes' changes to its
//! hubs. Hubs ignore anything not newer than what they hold, so order across
//! nodes cannot move a count backwards.
//!
//! Publishing runs in one task, so one node's changes reach Redis in commit
//! order, as many as have queued up in one pipelined round trip; when Redis
//! is away the task reconnects with backoff, and changes
//! beyond a bounded queue are dropped and counted rather than held forever.
//! The publisher numbers what it sends, dropped changes included, so a
//! receiver that sees a number skipped knows it missed something and has
//! its hubs reload, as it does after its own subscription was down. An idle
//! node publishes a heartbeat carrying its count, so a tail it dropped shows
//! too. A node that goes silent for `SILENCE` (it died, or lost Redis) may
//! have committed changes it never published: the receivers reload then as
//! well, and compare its numbers again if it comes back. A subscription that
//! hears nothing at all, not even its own node's heartbeat, for `SILENCE` is
//! taken for dead and reconnected.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use turnout_actors::changes::{ChangeSink, EventChange};
use uuid::Uuid;

use super::router::Router;
use crate::fanout_link::FanoutLink;

/// Changes waiting to be published while Redis is slow or away.
const PUBLISH_QUEUE: usize = 10_000;
/// At most this many changes go to Redis in one round trip.
const PUBLISH_BATCH: usize = 256;
/// A node with nothing to publish says so this often; it hears its own
/// messages back, so its subscription is known to be alive.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A subscription that hears nothing for this long (not even the node's own
/// heartbeat) is taken for dead: a connection cut without a reset, which
/// TCP alone would notice only after many minutes.
const SILENCE: Duration = Duration::from_secs(15);

/// A message on the Redis channel: `C` is the change, owned when read and
/// borrowed when written.
#[derive(Serialize, Deserialize)]
struct Wire<C> {
    node: Uuid,
    /// The node's count of changes, from 1, whether or not each reached
    /// Redis (a heartbeat: the count so far); 0 from a node that does not
    /// number them.
    #[serde(default)]
    seq: u64,
    /// None in a heartbeat.
    change: Option<C>,
}

pub struct RedisFanout {
    router: Router,
    publish: mpsc::Sender<Arc<EventChange>>,
    /// Changes the full queue refused since the publisher last looked: they
    /// take numbers too, so receivers see the gap.
    dropped: Arc<AtomicU64>,
}

impl RedisFanout {
    /// Starts the publisher and subscriber tasks on the current runtime.
    /// `link` is told whether the subscription is up.
    pub fn start(
        url: &SecretString,
        channel: String,
        router: Router,
        link: FanoutLink,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(url.expose_secret())
            .map_err(|e| anyhow::anyhow!("invalid Redis URL: {:?}", e.kind()))?;
        let node = Uuid::now_v7();
        let (publish, queue) = mpsc::channel(PUBLISH_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let numbering = Numbering {
            node,
            numbered: 0,
            dropped: Arc::clone(&dropped),
        };
        actix_web::rt::spawn(publisher(client.clone(), channel.clone(), queue, numbering));
        actix_web::rt::spawn(subscriber(client, channel, node, router.clone(), link));
        Ok(Self {
            router,
            publish,
            dropped,
        })
    }
}

impl ChangeSink for RedisFanout {
    fn committed(&self, change: Arc<EventChange>) {
        self.router.route(Arc::clone(&change));
        if self.publish.try_send(change).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("turnout_fanout_dropped_total").increment(1);
        }
    }
}

/// Numbers a node's changes as the one publisher task sends them, so the
/// numbers follow the queue's order whichever thread committed each.
struct Numbering {
    node: Uuid,
    numbered: u64,
    dropped: Arc<AtomicU64>,
}

impl Numbering {
    fn change(&mut self, change: &EventChange) -> String {
        self.numbered += 1 + self.dropped.swap(0, Ordering::Relaxed);
        self.wire(self.numbered, Some(change))
    }

    /// The count so far, changes the full queue refused included: a
    /// receiver that heard less knows the tail went missing.
    fn heartbeat(&mut self) -> String {
        self.numbered += self.dropped.swap(0, Ordering::Relaxed);
        self.wire(self.numbered, None)
    }

    fn wire(&self, seq: u64, change: Option<&EventChange>) -> String {
        let wire = Wire {
            node: self.node,
            seq,
            change,
        };
        serde_json::to_string(&wire).expect("changes serialise")
    }
}

async fn backoff(attempt: &mut u32) {
    let delay = Duration::from_millis(100 * 2u64.pow((*attempt).min(6)));
    *attempt += 1;
    tokio::time::sleep(delay).await;
}

async fn publisher(
    client: redis::Client,
    channel: String,
    mut queue: mpsc::Receiver<Arc<EventChange>>,
    mut numbering: Numbering,
) {
    let mut attempt = 0;
    // Published together, in order, as one pipeline: one round trip to Redis
    // for as many changes as have queued up, not one each. `changes` of them
    // are changes; the rest is a heartbeat.
    let mut batch: Vec<String> = Vec::new();
    let mut changes = 0;
    loop {
        let mut connection = match client.get_multiplexed_async_connection().await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(error = ?error.kind(), "redis publisher cannot connect; retrying");
                backoff(&mut attempt).await;
                continue;
            }
        };
        loop {
            if batch.is_empty() {
                let idle = match tokio::time::timeout(HEARTBEAT, queue.recv()).await {
                    Ok(Some(change)) => {
                        batch.push(numbering.change(&change));
                        false
                    }
                    Ok(None) => return,
                    Err(_) => {
                        batch.push(numbering.heartbeat());
                        true
                    }
                };
                while batch.len() < PUBLISH_BATCH
                    && let Ok(change) = queue.try_recv()
                {
                    batch.push(numbering.change(&change));
                }
                changes = batch.len() - usize::from(idle);
            }
            let mut pipeline = redis::pipe();
            for payload in &batch {
                pipeline.publish(&channel, payload).ignore();
            }
            let published: redis::RedisResult<()> = pipeline.query_async(&mut connection).await;
            if let Err(error) = published {
                // The batch is sent again whole; a receiver drops the
                // numbers it has already seen.
                tracing::warn!(error = ?error.kind(), "redis publish failed; reconnecting");
                // Backing off here too: an error Redis keeps giving (LOADING,
                // NOPERM) must not become a tight reconnect loop.
                backoff(&mut attempt).await;
                break;
            }
            attempt = 0;
            metrics::counter!("turnout_fanout_published_total").increment(changes as u64);
            batch.clear();
        }
    }
}

/// What this node last heard from each other node, and when.
struct Heard {
    nodes: HashMap<Uuid, Last>,
    /// When the subscription began.
    since: Instant,
}

struct Last {
    seq: u64,
    at: Instant,
    /// Silent for `SILENCE` (and reloaded for): its numbers are still
    /// compared if it speaks again.
    lapsed: bool,
}

/// A node silent this long after it lapsed is forgotten (a process gone for
/// good; each start is a new node).
const FORGET_AFTER: Duration = Duration::from_secs(3_600);

/// Subscribed this long, a node has heard every node that is up (each
/// says so every [`HEARTBEAT`]): one heard for the first time after that,
/// with changes numbered before, made them while it was not heard — cut
/// off from Redis, or silent long enough to be forgotten — and they went
/// missing. Before that, its earlier changes predate the subscription,
/// and the reload at its start covers them.
const HEARS_EVERY_NODE: Duration = Duration::from_secs(2 * HEARTBEAT.as_secs());

impl Heard {
    fn since(start: Instant) -> Self {
        Self {
            nodes: HashMap::new(),
            since: start,
        }
    }

    /// Whether a node first heard at `now` would have been heard before.
    fn settled(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) >= HEARS_EVERY_NODE
    }

    /// Whether a change is new, and whether changes before it went missing.
    fn hear(&mut self, node: Uuid, seq: u64, now: Instant) -> (bool, bool) {
        let settled = self.settled(now);
        let (last, first) = self.heard_from(node, seq, now);
        if first {
            return (true, settled && seq > 1);
        }
        if seq <= last.seq {
            // A publish retried after its answer was lost: seen already.
            return (false, false);
        }
        let missed = seq > last.seq + 1;
        last.seq = seq;
        (true, missed)
    }

    /// A heartbeat: the node's count so far. Whether changes went missing.
    fn counted(&mut self, node: Uuid, count: u64, now: Instant) -> bool {
        let settled = self.settled(now);
        let (last, first) = self.heard_from(node, count, now);
        if first {
            return settled && count > 0;
        }
        let missed = count > last.seq;
        last.seq = last.seq.max(count);
        missed
    }

    /// `node` was heard at `now`: what was heard from it before (a node
    /// heard for the first time starts at `seq`), and whether it is new.
    fn heard_from(&mut self, node: Uuid, seq: u64, now: Instant) -> (&mut Last, bool) {
        let mut first = false;
        let last = self.nodes.entry(node).or_insert_with(|| {
            first = true;
            Last {
                seq,
                at: now,
                lapsed: false,
            }
        });
        last.at = now;
        last.lapsed = false;
        (last, first)
    }

    /// Whether a node went silent for `SILENCE` since the last call: what
    /// it committed last may never have been published.
    fn lapsed(&mut self, now: Instant) -> bool {
        let mut any = false;
        self.nodes.retain(|_, last| {
            let silent = now.saturating_duration_since(last.at);
            if !last.lapsed && silent >= SILENCE {
                last.lapsed = true;
                any = true;
            }
            silent < FORGET_AFTER
        });
        any
    }
}

async fn subscriber(
    client: redis::Client,
    channel: String,
    node: Uuid,
    router: Router,
    link: FanoutLink,
) {
    metrics::gauge!("turnout_fanout_connected").set(0.0);
    let mut attempt = 0;
    loop {
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(error) => {
                tracing::warn!(error = ?error.kind(), "redis subscriber cannot connect; retrying");
                backoff(&mut attempt).await;
                continue;
            }
        };
        if let Err(error) = pubsub.subscribe(&channel).await {
            tracing::warn!(error = ?error.kind(), "redis subscribe failed; retrying");
            backoff(&mut attempt).await;
            continue;
        }
        attempt = 0;
        tracing::info!(%channel, "receiving other nodes' changes through redis");
        metrics::gauge!("turnout_fanout_connected").set(1.0);
        // Whatever other nodes committed before this subscription (at boot,
        // while hubs were loading) or while it was down never arrived here:
        // forgotten before anything is answered from memory again.
        router.resync_all();
        link.mark(true);
        let mut heard = Heard::since(Instant::now());
        let mut last_check = Instant::now();
        let mut messages = pubsub.into_on_message();
        loop {
            let message = match tokio::time::timeout(SILENCE, messages.next()).await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(silent_for = ?SILENCE, "redis subscription went silent");
                    break;
                }
            };
            // Read once, the change left as raw text: our own changes come
            // back too, and are skipped without building one (a whole
            // event's details).
            let wire = serde_json::from_slice::<Wire<&RawValue>>(message.get_payload_bytes());
            let Ok(wire) = wire else {
                tracing::warn!("ignoring a malformed fan-out message");
                continue;
            };
            let now = Instant::now();
            if now.saturating_duration_since(last_check) >= Duration::from_secs(1) {
                last_check = now;
                if heard.lapsed(now) {
                    metrics::counter!("turnout_fanout_gaps_total").increment(1);
                    tracing::warn!(
                        "another node went silent; its last changes may be lost; reloading"
                    );
                    router.resync_all();
                }
            }
            if wire.node == node {
                // Our own change or heartbeat: the link is alive.
                continue;
            }
            let Some(change) = wire.change else {
                // A node from before heartbeats counted sends 0: heard, and
                // nothing to compare.
                if heard.counted(wire.node, wire.seq, now) {
                    metrics::counter!("turnout_fanout_gaps_total").increment(1);
                    tracing::warn!(from = %wire.node, "changes from another node went missing; reloading");
                    router.resync_all();
                }
                continue;
            };
            let Ok(change) = serde_json::from_str::<EventChange>(change.get()) else {
                tracing::warn!("ignoring a malformed fan-out message");
                continue;
            };
            let (new, missed) = match wire.seq {
                // A node that does not number its changes: heard, no more.
                0 => {
                    heard.counted(wire.node, 0, now);
                    (true, false)
                }
                seq => heard.hear(wire.node, seq, now),
            };
            if missed {
                metrics::counter!("turnout_fanout_gaps_total").increment(1);
                tracing::warn!(from = %wire.node, "changes from another node went missing; reloading");
                router.resync_all();
            }
            if new {
                metrics::counter!("turnout_fanout_received_total").increment(1);
                router.route(Arc::new(change));
            }
        }
        metrics::gauge!("turnout_fanout_connected").set(0.0);
        link.mark(false);
        tracing::warn!("redis subscription ended; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sender_is_read_without_the_change() {
        let node = Uuid::now_v7();
        let heartbeat = Numbering {
            node,
            numbered: 0,
            dropped: Arc::default(),
        }
        .heartbeat();
        let sender = serde_json::from_str::<Wire<&RawValue>>(&heartbeat).unwrap();
        assert_eq!((sender.node, sender.change.is_none()), (node, true));
        // Whatever the change holds, it is skipped, not built.
        let change = format!(r#"{{"node":"{node}","seq":7,"change":{{"any":["shape",1]}}}}"#);
        let sender = serde_json::from_str::<Wire<&RawValue>>(&change).unwrap();
        assert_eq!(
            (sender.node, sender.seq, sender.change.is_some()),
            (node, 7, true)
        );
    }

    #[test]
    fn heartbeats_carry_no_change_and_unnumbered_changes_still_parse() {
        let mut numbering = Numbering {
            node: Uuid::now_v7(),
            numbered: 0,
            dropped: Arc::default(),
        };
        let heartbeat = numbering.heartbeat();
        assert!(
            serde_json::from_str::<Wire<EventChange>>(&heartbeat)
                .unwrap()
                .change
                .is_none()
        );
        let unnumbered = format!(r#"{{"node":"{}","change":null}}"#, Uuid::now_v7());
        assert_eq!(
            serde_json::from_str::<Wire<EventChange>>(&unnumbered)
                .unwrap()
                .seq,
            0
        );
    }

    #[test]
    fn a_skipped_number_is_a_gap_and_a_repeated_one_is_old_news() {
        let (a, b, now) = (Uuid::now_v7(), Uuid::now_v7(), Instant::now());
        let mut heard = Heard::since(now);
        assert_eq!(
            heard.hear(a, 7, now),
            (true, false),
            "the first heard from a node"
        );
        assert_eq!(heard.hear(a, 8, now), (true, false));
        assert_eq!(heard.hear(a, 8, now), (false, false), "a retried publish");
        assert_eq!(heard.hear(a, 5, now), (false, false));
        assert_eq!(
            heard.hear(b, 1, now),
            (true, false),
            "each node counts alone"
        );
        assert_eq!(heard.hear(a, 10, now), (true, true), "9 went missing");
        assert_eq!(heard.hear(a, 11, now), (true, false));
    }

    #[test]
    fn a_heartbeat_counting_more_than_was_heard_is_a_gap() {
        let (a, now) = (Uuid::now_v7(), Instant::now());
        let dropped = Arc::new(AtomicU64::new(0));
        let mut numbering = Numbering {
            node: a,
            numbered: 0,
            dropped: Arc::clone(&dropped),
        };
        let mut heard = Heard::since(now);
        let seq = |wire: String| serde_json::from_str::<Wire<&RawValue>>(&wire).unwrap().seq;

        // One change published and heard.
        numbering.numbered = 1;
        assert_eq!(heard.hear(a, 1, now), (true, false));
        assert!(!heard.counted(a, seq(numbering.heartbeat()), now));
        // The queue was full for the next two: the tail went missing.
        dropped.fetch_add(2, Ordering::Relaxed);
        assert!(heard.counted(a, seq(numbering.heartbeat()), now));
        assert!(!heard.counted(a, seq(numbering.heartbeat()), now), "once");
    }

    #[test]
    fn a_node_that_does_not_number_its_changes_is_heard_all_the_same() {
        let (old, now) = (Uuid::now_v7(), Instant::now());
        let mut heard = Heard::since(now);
        assert!(!heard.counted(old, 0, now));
        assert!(!heard.counted(old, 0, now + SILENCE / 2), "no gap in 0s");
        assert!(!heard.lapsed(now + SILENCE), "heard {:?} ago", SILENCE / 2);
    }

    #[test]
    fn a_node_silent_for_long_is_told_once_and_compared_again_when_back() {
        let (a, now) = (Uuid::now_v7(), Instant::now());
        let mut heard = Heard::since(now);
        heard.hear(a, 3, now);
        assert!(!heard.lapsed(now + SILENCE / 2));
        assert!(heard.lapsed(now + SILENCE), "it may have died mid-publish");
        assert!(!heard.lapsed(now + SILENCE * 2), "told once");
        // Back, it is compared with what was heard before it went quiet.
        assert_eq!(heard.hear(a, 6, now + SILENCE * 3), (true, true));
        assert!(!heard.lapsed(now + SILENCE * 3));
        assert!(heard.lapsed(now + SILENCE * 3 + FORGET_AFTER));
        assert!(heard.nodes.is_empty(), "gone for good: forgotten");
        // Heard again, its numbers say what was made while it was not.
        let back = now + SILENCE * 3 + FORGET_AFTER;
        assert_eq!(heard.hear(a, 9, back), (true, true));
    }

    /// A node first heard once every node that is up has been heard made
    /// the changes it numbered before unheard: cut off from Redis since
    /// before this subscription.
    #[test]
    fn a_node_first_heard_late_with_earlier_numbers_is_a_gap() {
        let (a, b, c, now) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Instant::now(),
        );
        let mut heard = Heard::since(now);
        let early = now + HEARS_EVERY_NODE / 2;
        assert_eq!(
            heard.hear(a, 7, early),
            (true, false),
            "numbered before we listened"
        );
        let late = now + HEARS_EVERY_NODE;
        assert_eq!(heard.hear(b, 7, late), (true, true));
        assert_eq!(heard.hear(c, 1, late), (true, false), "a node just started");
        assert!(
            heard.counted(Uuid::now_v7(), 3, late),
            "a heartbeat counting unheard changes"
        );
        assert!(!heard.counted(Uuid::now_v7(), 0, late));
    }
}
