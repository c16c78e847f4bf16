//! The shards this node holds right now, each with the epoch of its lease:
//! what the registry checks before it routes a command to an event's actor,
//! and what that actor's appends carry as their fencing token. Read by every
//! command, so reading takes no lock.
//!
//! Holding a shard here is this node's belief; the lease row in the
//! database is the truth, and the journal checks every commit against it.
//! A node that lost a lease without noticing (paused, cut off) keeps
//! believing until its next placement round, but cannot write.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::domain::EventId;
use crate::placement::{ShardCount, ShardId, ShardLease, shard_of};

/// Epoch 0 is never a lease: the first taking of a shard makes it 1.
const NOT_HELD: u64 = 0;

/// The event's shard is not held here: another node holds it, or nobody
/// does for the moment (it is moving).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shard {} is not held by this node", .0.get())]
pub struct NotHeld(pub ShardId);

pub struct HeldShards {
    count: ShardCount,
    epochs: Box<[AtomicU64]>,
    /// Whether appends carry leases. A node alone on its database by
    /// construction (SQLite's file lock) holds everything and needs none.
    fenced: bool,
}

impl HeldShards {
    /// A node alone on its database: it holds every shard for good, and
    /// its appends need no fencing token.
    pub fn everything(count: ShardCount) -> Self {
        Self {
            count,
            epochs: (0..count.get()).map(|_| AtomicU64::new(u64::MAX)).collect(),
            fenced: false,
        }
    }

    /// A member of a cluster: it holds nothing until it takes leases.
    pub fn none(count: ShardCount) -> Self {
        Self {
            count,
            epochs: (0..count.get()).map(|_| AtomicU64::new(NOT_HELD)).collect(),
            fenced: true,
        }
    }

    pub fn count(&self) -> ShardCount {
        self.count
    }

    /// Whether this node shares its database with others and so writes
    /// under leases.
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// The shard an event is in.
    pub fn shard_of(&self, event: EventId) -> ShardId {
        shard_of(event, self.count)
    }

    /// The lease an event's actor writes under (`None` when no fencing is
    /// needed), or [`NotHeld`].
    pub fn lease_for(&self, event: EventId) -> Result<Option<ShardLease>, NotHeld> {
        let shard = self.shard_of(event);
        match self.epoch(shard) {
            None => Err(NotHeld(shard)),
            Some(_) if !self.fenced => Ok(None),
            Some(epoch) => Ok(Some(ShardLease { shard, epoch })),
        }
    }

    /// The epoch this node holds `shard` at, if it holds it.
    pub fn epoch(&self, shard: ShardId) -> Option<u64> {
        let epoch = self.epochs[shard.get() as usize].load(Ordering::Acquire);
        (epoch != NOT_HELD).then_some(epoch)
    }

    /// Records a lease this node took.
    pub fn hold(&self, lease: ShardLease) {
        assert!(self.fenced, "a node alone holds every shard already");
        assert_ne!(lease.epoch, NOT_HELD, "epoch 0 is never a lease");
        self.epochs[lease.shard.get() as usize].store(lease.epoch, Ordering::Release);
    }

    /// Stops routing to `shard`'s actors: it is being handed over, or was
    /// found taken by another node.
    pub fn let_go(&self, shard: ShardId) {
        if self.fenced {
            self.epochs[shard.get() as usize].store(NOT_HELD, Ordering::Release);
        }
    }

    /// Every shard held, with its epoch.
    pub fn held(&self) -> Vec<ShardLease> {
        self.count
            .all()
            .filter_map(|shard| self.epoch(shard).map(|epoch| ShardLease { shard, epoch }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(n: u32) -> ShardCount {
        ShardCount::new(n).unwrap()
    }

    #[test]
    fn a_node_alone_holds_every_event_and_writes_without_a_lease() {
        let held = HeldShards::everything(shards(4));
        assert_eq!(held.lease_for(EventId::new()), Ok(None));
        assert_eq!(held.held().len(), 4);
    }

    #[test]
    fn a_cluster_member_routes_only_what_it_holds_at_the_epoch_it_took() {
        let held = HeldShards::none(shards(4));
        let event = EventId::new();
        let shard = held.shard_of(event);
        assert_eq!(held.lease_for(event), Err(NotHeld(shard)));

        held.hold(ShardLease { shard, epoch: 7 });
        assert_eq!(
            held.lease_for(event),
            Ok(Some(ShardLease { shard, epoch: 7 }))
        );
        assert_eq!(held.held(), vec![ShardLease { shard, epoch: 7 }]);

        held.let_go(shard);
        assert_eq!(held.lease_for(event), Err(NotHeld(shard)));
        assert!(held.held().is_empty());
    }
}
