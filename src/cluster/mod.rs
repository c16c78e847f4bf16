//! This node's place in the cluster. Nodes that share a database form the
//! cluster by themselves: each registers (id, the address the others reach
//! it at, start time) and heartbeats; a node whose heartbeat is older than
//! the lease TTL is dead for placement. The shard count is fixed in the
//! database by the first node; a node configured otherwise refuses to
//! start. Which node should own each shard follows from the live members
//! (`turnout_actors::placement`); `placement` keeps this node's shard
//! leases in line with it, and `forward` sends each command to the node
//! holding its event's shard.

pub mod forward;
pub mod placement;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use secrecy::SecretString;
use serde::Deserialize;
use turnout_actors::placement::{NodeId, ShardCount};
use uuid::Uuid;

use crate::background::{Background, every};
use crate::store::{Heartbeat, NodeRecord, Store};

/// `[cluster]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterSettings {
    /// This node's id; generated at each start when absent.
    pub node_id: Option<Uuid>,
    /// The address other nodes reach this one at; the bind address when
    /// absent (a wildcard such as 0.0.0.0 is advertised as it is, with a
    /// warning: the other nodes cannot reach it).
    pub advertise: Option<String>,
    /// Shards in the cluster: fixed when the database is first used.
    pub shards: u32,
    /// A node silent for longer is dead for placement.
    pub lease_ttl_ms: u64,
    /// How often a node says it is alive.
    pub heartbeat_ms: u64,
    /// Comma-separated keys nodes sign their calls to each other with
    /// (the first signs, any verifies: rotatable). The JWT keys when
    /// absent.
    pub internal_secrets: Option<SecretString>,
}

impl ClusterSettings {
    /// The internal keys, if configured apart from the JWT keys.
    pub fn internal_keys(&self) -> Vec<SecretString> {
        crate::config::key_list(self.internal_secrets.as_ref())
    }
}

/// How long a node may be silent before its row is deleted.
const FORGET_SILENT_NODES_AFTER: Duration = Duration::from_secs(24 * 3600);

/// This node: who it is, and whether it is leaving.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: NodeId,
    pub address: String,
    pub shards: ShardCount,
    pub lease_ttl: Duration,
    /// When it began to start, by the database's clock.
    started_at: i64,
    /// Set when the node starts handing its shards over to leave: it stops
    /// heartbeating and taking shards.
    leaving: Arc<AtomicBool>,
    /// Told when another process took this node's id over (see
    /// [`Node::superseded`]).
    superseded: Arc<tokio::sync::Notify>,
}

impl Node {
    /// Who this node is: checks the shard count against the database's,
    /// works out the address to advertise, and under a configured id waits
    /// for the process before it to be gone. Not yet in the membership:
    /// see [`Node::register`].
    pub async fn join(
        store: &Arc<dyn Store>,
        settings: &ClusterSettings,
        bind: &str,
    ) -> anyhow::Result<Self> {
        let configured =
            ShardCount::new(settings.shards).context("cluster.shards must be at least 1")?;
        let stored = store
            .shard_count(i64::from(configured.get()))
            .await
            .context("cannot read the cluster's shard count")?;
        anyhow::ensure!(
            stored == i64::from(configured.get()),
            "this database's cluster has {stored} shards but cluster.shards is {}: every node of a \
             cluster must be configured with the shard count its database was first used with \
             (set TURNOUT_CLUSTER__SHARDS={stored})",
            configured.get()
        );
        let address = advertised(settings.advertise.as_deref(), bind);
        let id = settings.node_id.map_or_else(NodeId::new, NodeId::from);
        let lease_ttl = Duration::from_millis(settings.lease_ttl_ms);
        if settings.node_id.is_some() {
            wait_for_the_last_process_of(id, lease_ttl, store).await?;
        }
        let now = store
            .clock()
            .await
            .context("cannot read the database's clock")?;
        Ok(Self {
            id,
            address,
            shards: configured,
            lease_ttl,
            started_at: now,
            leaving: Arc::default(),
            superseded: Arc::default(),
        })
    }

    /// Enters the membership: the others place shards on this node from
    /// now on, and hand over those it is to hold. Only once it can take
    /// them (its actors and catalog started, within a heartbeat of its
    /// first placement round): registered earlier, the shards the others
    /// let go would be held by nobody until it could — and, were the wait
    /// longer than a lease's TTL, taken back and handed over again.
    pub async fn register(&self, store: &Arc<dyn Store>) -> anyhow::Result<()> {
        let now = store
            .clock()
            .await
            .context("cannot read the database's clock")?;
        store
            .register_node(&self.record(now))
            .await
            .context("cannot register this node")?;
        tracing::info!(node = %self.id.as_uuid(), address = %self.address, shards = self.shards.get(), "joined the cluster");
        // A process that died without leaving (a crash, a kill) left its
        // row, under an id generated for it alone: forgotten after a day,
        // or the table would grow with every such restart, read by every
        // placement round. (Its leases lapsed long before.)
        match store
            .forget_nodes_silent_since(now - FORGET_SILENT_NODES_AFTER.as_micros() as i64)
            .await
        {
            Ok(0) => {}
            Ok(forgotten) => tracing::info!(forgotten, "forgot nodes silent for a day"),
            Err(error) => tracing::warn!(%error, "cannot forget the nodes long silent"),
        }
        Ok(())
    }

    /// Heartbeats among the background tasks until shutdown, then leaves.
    pub fn keep_alive(&self, store: Arc<dyn Store>, every_ms: u64, background: &mut Background) {
        let (id, node) = (self.id.as_uuid(), self.clone());
        let beats = Arc::clone(&store);
        background.spawn(
            "cluster heartbeat",
            every(
                Duration::from_millis(every_ms),
                background.shutdown(),
                move |_| {
                    let (store, node) = (Arc::clone(&beats), node.clone());
                    async move { node.beat(&store).await }
                },
            ),
        );
        let mut shutdown = background.shutdown();
        let started_at = self.started_at;
        background.spawn("cluster leave", async move {
            shutdown.requested().await;
            if let Err(error) = store.deregister_node(id, started_at).await {
                tracing::warn!(%error, "cannot leave the cluster cleanly; the others will time this node out");
            }
        });
    }

    /// Until another process registers under this node's id while this
    /// one is away (a twin started in its place): this one must stop.
    pub async fn superseded(&self) {
        self.superseded.notified().await;
    }

    /// One heartbeat, and the count of live nodes.
    async fn beat(&self, store: &Arc<dyn Store>) {
        if self.is_leaving() {
            return;
        }
        let now = match store.clock().await {
            Ok(now) => now,
            Err(error) => return tracing::warn!(%error, "cannot heartbeat"),
        };
        match store
            .heartbeat(self.id.as_uuid(), self.started_at, now)
            .await
        {
            Ok(Heartbeat::Heard) => {}
            Ok(Heartbeat::Gone) => self.register_again(store, now).await,
            Ok(Heartbeat::Superseded) => self.superseded_by_another(),
            Err(error) => tracing::warn!(%error, "cannot heartbeat"),
        }
        if let Ok(nodes) = store.nodes().await {
            let live = (nodes.iter())
                .filter(|n| self.is_live(n.heartbeat_at, now))
                .count();
            metrics::gauge!("turnout_cluster_nodes").set(live as f64);
        }
    }

    /// Its row was deleted (by an operator, say): registers again — not
    /// over a twin's row registered since the beat (that one is the process
    /// to keep), and not once the node began to leave (its leaving removed
    /// the row, and the others would place shards on it that nobody then
    /// takes; a leaving that began while it registered removes it again).
    async fn register_again(&self, store: &Arc<dyn Store>, now: i64) {
        if self.is_leaving() {
            return;
        }
        match store.register_node_if_absent(&self.record(now)).await {
            Ok(true) if self.is_leaving() => {
                if let Err(error) = store
                    .deregister_node(self.id.as_uuid(), self.started_at)
                    .await
                {
                    tracing::warn!(%error, "cannot leave the membership");
                }
            }
            Ok(true) => tracing::info!(node = %self.id.as_uuid(), "registered this node again"),
            Ok(false) => self.superseded_by_another(),
            Err(error) => tracing::warn!(%error, "cannot register this node again"),
        }
    }

    /// This process's row in the membership, heard from at `now`.
    fn record(&self, now: i64) -> NodeRecord {
        NodeRecord {
            id: self.id.as_uuid(),
            address: self.address.clone(),
            started_at: self.started_at,
            heartbeat_at: now,
        }
    }

    /// Whether `row`, under this node's id, is another process's.
    fn is_superseded_by(&self, row: &NodeRecord) -> bool {
        row.id == self.id.as_uuid() && row.started_at != self.started_at
    }

    /// Away past its TTL, this process was taken for gone and another
    /// started under its id, which took its shards (the heartbeat or a
    /// placement round met its row). Going on, the two would take them
    /// from each other back and forth: this one takes nothing more and
    /// stops (the server shuts down: `Application::run_until_stopped`).
    fn superseded_by_another(&self) {
        if !self.is_leaving() {
            tracing::error!(
                node = %self.id.as_uuid(),
                "another process registered as this node while it was away; this one stops"
            );
        }
        self.start_leaving();
        self.superseded.notify_one();
    }

    /// Marks the node as leaving (see [`placement::Placement::leave`]).
    pub fn start_leaving(&self) {
        self.leaving.store(true, Ordering::Release);
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// Whether a node last heard of at `heartbeat_at` is alive at `now`
    /// (both unix microseconds, by the database's clock).
    pub fn is_live(&self, heartbeat_at: i64, now: i64) -> bool {
        heard_within(self.lease_ttl, heartbeat_at, now)
    }
}

/// Whether a node last heard of at `heartbeat_at` is alive at `now`.
fn heard_within(lease_ttl: Duration, heartbeat_at: i64, now: i64) -> bool {
    now - heartbeat_at <= lease_ttl.as_micros() as i64
}

/// A configured node id may still be heartbeating in another process (a
/// deploy that starts the new process before the old one stops, or a
/// copied configuration): two processes under one id would each take the
/// shards the other holds, back and forth. Waits until the id's last
/// process has been silent a TTL and holds no lease — one leaving cleanly
/// removes its row first, then hands its shards over one by one, and a
/// lease that names this id would be this process's to take at once —
/// and refuses to start if it keeps beating or holding.
async fn wait_for_the_last_process_of(
    id: NodeId,
    lease_ttl: Duration,
    store: &Arc<dyn Store>,
) -> anyhow::Result<()> {
    let give_up = tokio::time::Instant::now() + 2 * lease_ttl + Duration::from_secs(1);
    loop {
        let (now, nodes, leases) = tokio::try_join!(store.clock(), store.nodes(), store.leases())
            .context("cannot read the cluster's nodes")?;
        let alive =
            |n: &&NodeRecord| n.id == id.as_uuid() && heard_within(lease_ttl, n.heartbeat_at, now);
        let running = nodes.iter().find(alive);
        let holding = (leases.iter())
            .filter(|l| l.holder_at(now) == Some(id.as_uuid()))
            .count();
        if running.is_none() && holding == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= give_up {
            anyhow::bail!(match running {
                Some(running) => format!(
                    "another process is running as node {} (at {}, heard from {} ms ago): stop \
                     it, or give this one another cluster.node_id",
                    running.id,
                    running.address,
                    (now - running.heartbeat_at) / 1000
                ),
                None => format!(
                    "node {}'s last process still holds {holding} shards (handing them over as it \
                     stops, or cut off from the database): stop it, or give this one another \
                     cluster.node_id",
                    id.as_uuid()
                ),
            });
        }
        tokio::time::sleep(lease_ttl / 10).await;
    }
}

/// The address to advertise: configured, or the bind address — said to be
/// unreachable when it is a wildcard (enough for a node on its own).
fn advertised(configured: Option<&str>, bind: &str) -> String {
    if let Some(address) = configured {
        return address.to_owned();
    }
    if is_wildcard(bind) {
        tracing::warn!(
            bind,
            "the bind address is a wildcard other nodes cannot reach: in a cluster, set \
             cluster.advertise (TURNOUT_CLUSTER__ADVERTISE) to this node's address"
        );
    }
    bind.to_owned()
}

fn is_wildcard(bind: &str) -> bool {
    let host = bind.rsplit_once(':').map_or(bind, |(host, _)| host);
    matches!(host, "0.0.0.0" | "[::]" | "::" | "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_advertises_the_configured_address_or_its_bind_address() {
        assert_eq!(advertised(None, "127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(
            advertised(Some("10.0.0.5:8080"), "0.0.0.0:8080"),
            "10.0.0.5:8080"
        );
        assert!(is_wildcard("0.0.0.0:8080") && is_wildcard("[::]:8080"));
        assert!(!is_wildcard("10.0.0.5:8080"));
    }
}
