//! Placement rounds: which shards this node holds, kept in line with the
//! live membership. Every round a node reads the members and the leases,
//! takes the shards rendezvous hashing gives it once they are free, hands
//! over those it should no longer hold (its actors stop, the journal
//! flushes, the lease is released), and lets go of any it finds taken by
//! another node. It also refreshes the directory commands are forwarded by.
//!
//! Every decision is a row changed in one statement: a taking is a
//! compare-and-set on the shard's epoch that succeeds only while the lease
//! is free, expired or already this node's.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix::Addr;
use tokio::sync::oneshot;
use turnout_actors::placement::{NodeId, ShardId, ShardLease};
use turnout_actors::shards::HeldShards;
use turnout_actors::{EventRegistry, Flush, Journal};
use uuid::Uuid;

use super::Node;
use crate::background::{Background, every};
use crate::store::{LeaseRecord, NodeRecord, Store};

/// Where a shard lives, as this node last read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    pub node: Uuid,
    pub address: Arc<str>,
}

/// The holder of every shard held by a live node, refreshed each round.
#[derive(Default)]
pub struct Directory(RwLock<Arc<Vec<Option<Holder>>>>);

impl Directory {
    pub fn holder(&self, shard: ShardId) -> Option<Holder> {
        let holders = Arc::clone(&self.0.read().expect("directory lock"));
        holders.get(shard.get() as usize).cloned().flatten()
    }

    fn replace(&self, holders: Vec<Option<Holder>>) {
        *self.0.write().expect("directory lock") = Arc::new(holders);
    }
}

/// This node's part in placement.
#[derive(Clone)]
pub struct Placement {
    node: Node,
    store: Arc<dyn Store>,
    held: Arc<HeldShards>,
    registry: EventRegistry,
    journal: Addr<Journal>,
    directory: Arc<Directory>,
}

/// What a round decided for one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Free, expired or already this node's in the database: take it.
    Take { seen_epoch: i64 },
    /// Held here but placed elsewhere: hand it over.
    HandOver { epoch: u64 },
    /// Held here in memory, but the lease says otherwise: stop using it.
    Lost,
    /// The lease names this node, which does not hold the shard in memory
    /// (a release that failed) and is not placed it: free it.
    Release { epoch: i64 },
}

/// The moves for one round — pure: the leases and live nodes as read, what
/// this node believes it holds, and the time.
pub fn plan(
    me: NodeId,
    leases: &[LeaseRecord],
    live: &[NodeId],
    believed: impl Fn(ShardId) -> Option<u64>,
    shard: impl Fn(i64) -> Option<ShardId>,
    now: i64,
) -> Vec<(ShardId, Move)> {
    let placed = |s: ShardId| turnout_actors::placement::owner(s, live);
    let mut moves = Vec::new();
    for lease in leases {
        let Some(id) = shard(lease.shard) else {
            continue;
        };
        let mine = lease.node == Some(me.as_uuid());
        match believed(id) {
            Some(epoch) if !(mine && lease.epoch as u64 == epoch) => moves.push((id, Move::Lost)),
            Some(epoch) => {
                if placed(id).is_some_and(|owner| owner != me) {
                    moves.push((id, Move::HandOver { epoch }));
                }
            }
            None => {
                if placed(id) == Some(me) && lease.is_takeable_by(me.as_uuid(), now) {
                    moves.push((
                        id,
                        Move::Take {
                            seen_epoch: lease.epoch,
                        },
                    ));
                } else if mine {
                    moves.push((id, Move::Release { epoch: lease.epoch }));
                }
            }
        }
    }
    moves
}

impl Placement {
    pub fn new(
        node: Node,
        store: Arc<dyn Store>,
        held: Arc<HeldShards>,
        registry: EventRegistry,
        journal: Addr<Journal>,
    ) -> Self {
        Self {
            node,
            store,
            held,
            registry,
            journal,
            directory: Arc::default(),
        }
    }

    pub fn directory(&self) -> Arc<Directory> {
        Arc::clone(&self.directory)
    }

    /// Seeds the lease rows and runs a first round, so a node alone is
    /// serving its shards before it answers its first request.
    pub async fn start(&self) -> anyhow::Result<()> {
        self.store
            .seed_leases(i64::from(self.node.shards.get()))
            .await?;
        self.round().await;
        Ok(())
    }

    /// Rounds among the background tasks, four per heartbeat, until
    /// shutdown; then every shard is handed over.
    pub fn run(self, heartbeat: Duration, background: &mut Background) {
        let placement = self.clone();
        background.spawn(
            "placement",
            every(
                (heartbeat / 4).max(Duration::from_millis(50)),
                background.shutdown(),
                move |_| {
                    let placement = placement.clone();
                    async move { placement.round().await }
                },
            ),
        );
        let renewals = self.clone();
        background.spawn(
            "lease renewal",
            every(heartbeat, background.shutdown(), move |_| {
                let placement = renewals.clone();
                async move { placement.renew().await }
            }),
        );
    }

    /// This node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Hands every shard over: the node leaves the membership first, so the
    /// others place its shards among themselves and take each as soon as it
    /// is released.
    pub async fn leave(&self) {
        self.node.start_leaving();
        let (id, started_at) = (self.node.id.as_uuid(), self.node.started_at);
        if let Err(error) = self.store.deregister_node(id, started_at).await {
            tracing::warn!(%error, "cannot leave the membership; the others will time this node out");
        }
        let held = self.held.held();
        tracing::info!(shards = held.len(), "handing every shard over");
        self.hand_over(held).await;
    }

    /// Until when a lease written with an expiry one TTL after `asked`
    /// is believed here. `asked` is taken on this node's monotonic clock
    /// before the database's clock was read for the expiry, so the lease
    /// runs at least a TTL from it; a tenth of the TTL less, for the rates
    /// of the two clocks drifting apart. (Both are durations: the nodes'
    /// wall clocks need not agree.)
    fn believed_until(&self, asked: Instant) -> Instant {
        asked + self.node.lease_ttl - self.node.lease_ttl / 10
    }

    /// Renews every lease held; each one renewed is believed for another
    /// TTL. (One that was not has been taken or released: the next round
    /// finds out which.)
    async fn renew(&self) {
        let asked = Instant::now();
        let now = match self.store.clock().await {
            Ok(now) => now,
            Err(error) => return tracing::warn!(%error, "cannot renew this node's shard leases"),
        };
        let until = now + self.node.lease_ttl.as_micros() as i64;
        let held = self.held.held();
        let leases: Vec<(i64, i64)> = held
            .iter()
            .map(|lease| (i64::from(lease.shard.get()), lease.epoch as i64))
            .collect();
        match self
            .store
            .renew_shards(self.node.id.as_uuid(), &leases, until)
            .await
        {
            Ok(renewed) => {
                if renewed.len() < held.len() {
                    tracing::warn!(
                        renewed = renewed.len(),
                        held = held.len(),
                        "some of this node's shard leases were not renewed"
                    );
                }
                let count = self.node.shards;
                let renewed: Vec<ShardId> = renewed
                    .into_iter()
                    .filter_map(|n| u32::try_from(n).ok().and_then(|n| count.shard(n)))
                    .collect();
                self.held.renewed(&renewed, self.believed_until(asked));
            }
            Err(error) => tracing::warn!(%error, "cannot renew this node's shard leases"),
        }
    }

    /// Takes and hands over shards as placement says, and refreshes the
    /// directory of holders. A leaving node only refreshes the directory: it
    /// forwards what reaches it while it drains.
    async fn round(&self) {
        let asked = Instant::now();
        let read = tokio::try_join!(self.store.clock(), self.store.nodes(), self.store.leases());
        let (now, nodes, leases) = match read {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(%error, "cannot read the cluster's leases; placement waits");
                return;
            }
        };
        // A twin took this node's id over while it was away: the row under
        // the id is the twin's, and the leases naming the id its shards.
        // Leaving, the node moves no shard from here on; the round still
        // refreshes where the others' shards are, for the commands it
        // forwards while it drains.
        if nodes.iter().any(|n| self.node.is_superseded_by(n)) {
            self.node.superseded_by_another();
        }
        let live: Vec<&NodeRecord> = nodes
            .iter()
            .filter(|n| self.node.is_live(n.heartbeat_at, now))
            .collect();
        let live_ids: Vec<NodeId> = live.iter().map(|n| NodeId::from(n.id)).collect();
        let count = self.node.shards;
        let moves = if self.node.is_leaving() {
            Vec::new()
        } else {
            plan(
                self.node.id,
                &leases,
                &live_ids,
                |s| self.held.believed(s),
                |n| u32::try_from(n).ok().and_then(|n| count.shard(n)),
                now,
            )
        };

        let (mut handing_over, mut taken) = (Vec::new(), 0);
        for (shard, planned) in moves {
            match planned {
                // Not once the node began to leave, in a round that began
                // before.
                Move::Take { .. } if self.node.is_leaving() => {}
                Move::Take { seen_epoch } => {
                    taken += usize::from(self.take(shard, seen_epoch, now, asked).await);
                }
                Move::HandOver { epoch } => handing_over.push(ShardLease { shard, epoch }),
                Move::Release { epoch } => {
                    self.release(shard, epoch).await;
                }
                Move::Lost => {
                    tracing::warn!(
                        shard = shard.get(),
                        "another node took a shard this node held"
                    );
                    metrics::counter!("turnout_cluster_shards_lost_total").increment(1);
                    self.held.let_go(shard);
                    actix::spawn(self.registry.retire(shard));
                }
            }
        }
        if taken > 0 {
            // One line a round: a node alone on a fresh database takes
            // every shard at once.
            tracing::info!(shards = taken, "took shards");
        }
        if !handing_over.is_empty() {
            self.hand_over(handing_over).await;
        }

        let holders = leases
            .iter()
            .map(|lease| {
                let holder = lease.holder_at(now)?;
                let node = live.iter().find(|n| n.id == holder)?;
                Some(Holder {
                    node: holder,
                    address: Arc::from(node.address.as_str()),
                })
            })
            .collect();
        self.directory.replace(holders);
        metrics::gauge!("turnout_cluster_shards_held").set(self.held.held().len() as f64);
    }

    /// Whether the shard was taken.
    async fn take(&self, shard: ShardId, seen_epoch: i64, now: i64, asked: Instant) -> bool {
        let until = now + self.node.lease_ttl.as_micros() as i64;
        match self
            .store
            .take_shard(
                i64::from(shard.get()),
                self.node.id.as_uuid(),
                seen_epoch,
                now,
                until,
            )
            .await
        {
            Ok(Some(epoch)) => {
                metrics::counter!("turnout_cluster_lease_takeovers_total").increment(1);
                tracing::debug!(shard = shard.get(), epoch, "took a shard");
                let lease = ShardLease {
                    shard,
                    epoch: epoch as u64,
                };
                self.held.hold(lease, self.believed_until(asked));
                // Taken by a round that began before the node began to
                // leave, after `leave` listed what it hands over: handed
                // over here, or nobody would take it until it lapsed.
                if self.node.is_leaving() {
                    self.hand_over(vec![lease]).await;
                }
                true
            }
            Ok(None) => false,
            Err(error) => {
                tracing::warn!(%error, shard = shard.get(), "cannot take a shard");
                false
            }
        }
    }

    /// Stops routing to the shards, lets their actors finish what is in
    /// flight, flushes the journal, and releases the leases.
    async fn hand_over(&self, leases: Vec<ShardLease>) {
        for lease in &leases {
            self.held.let_go(lease.shard);
        }
        for lease in &leases {
            self.registry.retire(lease.shard).await;
        }
        let (done, flushed) = oneshot::channel();
        self.journal.do_send(Flush(done));
        let _ = flushed.await;
        for lease in leases {
            if self.release(lease.shard, lease.epoch as i64).await {
                metrics::counter!("turnout_cluster_handovers_total").increment(1);
            }
        }
    }

    /// Frees a lease this node holds at `epoch`; whether it did. One that
    /// cannot be freed now is not renewed, so it lapses within the TTL, and
    /// the next round tries again.
    async fn release(&self, shard: ShardId, epoch: i64) -> bool {
        match self
            .store
            .release_shard(i64::from(shard.get()), self.node.id.as_uuid(), epoch)
            .await
        {
            Ok(released) => released,
            Err(error) => {
                tracing::warn!(%error, shard = shard.get(), "cannot release a shard");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use turnout_actors::placement::ShardCount;

    const NOW: i64 = 1_000_000_000;

    fn lease(shard: i64, node: Option<NodeId>, epoch: i64, expires_at: i64) -> LeaseRecord {
        LeaseRecord {
            shard,
            node: node.map(NodeId::as_uuid),
            epoch,
            expires_at,
        }
    }

    fn shards(n: u32) -> impl Fn(i64) -> Option<ShardId> {
        move |i| ShardCount::new(n).unwrap().shard(i as u32)
    }

    /// Some shard of 64 that rendezvous hashing gives `node` among `live`.
    fn placed_on(node: NodeId, live: &[NodeId], shard: impl Fn(i64) -> Option<ShardId>) -> i64 {
        (0..64)
            .find(|s| turnout_actors::placement::owner(shard(*s).unwrap(), live) == Some(node))
            .unwrap()
    }

    #[test]
    fn a_lone_node_takes_every_free_shard() {
        let me = NodeId::new();
        let leases: Vec<_> = (0..4).map(|s| lease(s, None, 3, 0)).collect();
        let moves = plan(me, &leases, &[me], |_| None, shards(4), NOW);
        assert_eq!(moves.len(), 4);
        assert!(
            moves
                .iter()
                .all(|(_, m)| *m == Move::Take { seen_epoch: 3 })
        );
    }

    #[test]
    fn a_live_holders_lease_is_not_taken_until_it_runs_out_or_is_released() {
        let (me, other) = (NodeId::new(), NodeId::new());
        let held = [lease(0, Some(other), 5, NOW + 1)];
        assert!(plan(me, &held, &[me], |_| None, shards(1), NOW).is_empty());
        let expired = [lease(0, Some(other), 5, NOW - 1)];
        assert_eq!(
            plan(me, &expired, &[me], |_| None, shards(1), NOW),
            vec![(shards(1)(0).unwrap(), Move::Take { seen_epoch: 5 })]
        );
    }

    #[test]
    fn a_shard_placed_elsewhere_is_handed_over_and_one_taken_away_is_let_go() {
        let (me, other) = (NodeId::new(), NodeId::new());
        let live = [me, other];
        let shard = shards(64);
        let theirs = placed_on(other, &live, &shard);
        let mine_in_db = [lease(theirs, Some(me), 2, NOW + 1)];
        assert_eq!(
            plan(me, &mine_in_db, &live, |_| Some(2), &shard, NOW),
            vec![(shard(theirs).unwrap(), Move::HandOver { epoch: 2 })]
        );
        let taken = [lease(theirs, Some(other), 3, NOW + 1)];
        assert_eq!(
            plan(me, &taken, &live, |_| Some(2), &shard, NOW),
            vec![(shard(theirs).unwrap(), Move::Lost)]
        );
    }

    #[test]
    fn a_lease_left_naming_this_node_after_a_failed_release_is_freed() {
        let (me, other) = (NodeId::new(), NodeId::new());
        let live = [me, other];
        let shard = shards(64);
        let theirs = placed_on(other, &live, &shard);
        // This node let go of the shard in memory, but its release failed.
        let left_behind = [lease(theirs, Some(me), 4, NOW + 1)];
        assert_eq!(
            plan(me, &left_behind, &live, |_| None, &shard, NOW),
            vec![(shard(theirs).unwrap(), Move::Release { epoch: 4 })]
        );
    }
}
