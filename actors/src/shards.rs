//! The shards this node holds right now, each with the epoch of its lease:
//! what the registry checks before it routes a command to an event's actor,
//! and what that actor's appends carry as their fencing token. Read by every
//! command, so reading takes no lock.
//!
//! Holding a shard here is this node's belief; the lease row in the
//! database is the truth, and the journal checks every commit against it.
//! A node that lost a lease without noticing (paused, cut off) cannot
//! write, and stops believing once most of a TTL has passed since it last
//! took or renewed the lease: after that it routes no command to the
//! shard's actors, which would otherwise answer what needs no commit (a
//! refusal, "nothing changed") from a state another node may have moved on
//! from.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use crate::domain::EventId;
use crate::placement::{ShardCount, ShardId, ShardLease, shard_of};

/// Epoch 0 is never a lease: the first taking of a shard makes it 1.
const NOT_HELD: u64 = 0;

/// What the deadlines count from: a monotonic clock, so that a step of the
/// wall clock neither stretches a belief nor ends every one at once.
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// `at` in µs since [`ORIGIN`]; an instant before it, 0 (long past).
fn since_origin(at: Instant) -> i64 {
    at.saturating_duration_since(*ORIGIN).as_micros() as i64
}

/// The event's shard is not held here: another node holds it, or nobody
/// does for the moment (it is moving).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shard {} is not held by this node", .0.get())]
pub struct NotHeld(pub ShardId);

pub struct HeldShards {
    count: ShardCount,
    epochs: Box<[AtomicU64]>,
    /// Until when each lease is believed (µs since [`ORIGIN`]): a TTL
    /// from just before this node last took or renewed it, less a margin
    /// for the difference between its clock and the others'.
    believed_until: Box<[AtomicI64]>,
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
            believed_until: (0..count.get()).map(|_| AtomicI64::new(i64::MAX)).collect(),
            fenced: false,
        }
    }

    /// A member of a cluster: it holds nothing until it takes leases.
    pub fn none(count: ShardCount) -> Self {
        Self {
            count,
            epochs: (0..count.get()).map(|_| AtomicU64::new(NOT_HELD)).collect(),
            believed_until: (0..count.get()).map(|_| AtomicI64::new(0)).collect(),
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

    /// The epoch this node holds `shard` at, if it holds it and its lease
    /// is believed current: what routes a command here.
    pub fn epoch(&self, shard: ShardId) -> Option<u64> {
        if !self.fenced {
            // Held for good: no clock read on a node alone's join path.
            return self.believed(shard);
        }
        self.epoch_at(shard, Instant::now())
    }

    fn epoch_at(&self, shard: ShardId, at: Instant) -> Option<u64> {
        let until = self.believed_until[shard.get() as usize].load(Ordering::Acquire);
        self.believed(shard).filter(|_| since_origin(at) < until)
    }

    /// The epoch of the lease this node last took of `shard` and has not
    /// let go, whether or not it is believed current: what placement,
    /// renewals and hand-overs work from.
    pub fn believed(&self, shard: ShardId) -> Option<u64> {
        let epoch = self.epochs[shard.get() as usize].load(Ordering::Acquire);
        (epoch != NOT_HELD).then_some(epoch)
    }

    /// Records a lease this node took, believed until `until`.
    pub fn hold(&self, lease: ShardLease, until: Instant) {
        assert!(self.fenced, "a node alone holds every shard already");
        assert_ne!(lease.epoch, NOT_HELD, "epoch 0 is never a lease");
        let shard = lease.shard.get() as usize;
        self.believed_until[shard].store(since_origin(until), Ordering::Release);
        self.epochs[shard].store(lease.epoch, Ordering::Release);
    }

    /// Every lease of `shards` was renewed: each is believed until `until`,
    /// or later if a taking since said so.
    pub fn renewed(&self, shards: &[ShardId], until: Instant) {
        for shard in shards {
            self.believed_until[shard.get() as usize]
                .fetch_max(since_origin(until), Ordering::AcqRel);
        }
    }

    /// Stops routing to `shard`'s actors: it is being handed over, or was
    /// found taken by another node.
    pub fn let_go(&self, shard: ShardId) {
        if self.fenced {
            self.epochs[shard.get() as usize].store(NOT_HELD, Ordering::Release);
        }
    }

    /// Every shard held, with its epoch, whether or not its lease is
    /// believed current (see [`HeldShards::believed`]).
    pub fn held(&self) -> Vec<ShardLease> {
        self.count
            .all()
            .filter_map(|shard| {
                self.believed(shard)
                    .map(|epoch| ShardLease { shard, epoch })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(n: u32) -> ShardCount {
        ShardCount::new(n).unwrap()
    }

    fn far_off() -> Instant {
        Instant::now() + std::time::Duration::from_secs(3_600)
    }

    #[test]
    fn a_lease_past_its_expiry_routes_nothing_here_until_renewed() {
        let held = HeldShards::none(shards(4));
        let event = EventId::new();
        let shard = held.shard_of(event);
        let lease = ShardLease { shard, epoch: 3 };
        let (start, ms) = (Instant::now(), std::time::Duration::from_millis);
        held.hold(lease, start + ms(1_000));
        assert_eq!(held.epoch_at(shard, start + ms(999)), Some(3));
        assert_eq!(held.epoch_at(shard, start + ms(1_000)), None, "past");
        assert_eq!(held.believed(shard), Some(3), "placement still sees it");
        assert_eq!(held.held(), vec![lease], "and renewals still renew it");

        held.renewed(&[shard], start + ms(2_000));
        assert_eq!(held.epoch_at(shard, start + ms(1_500)), Some(3));
        held.renewed(&[shard], start + ms(1_200));
        assert_eq!(
            held.epoch_at(shard, start + ms(1_500)),
            Some(3),
            "a renewal never shortens"
        );
        held.hold(lease, *ORIGIN);
        assert_eq!(
            held.lease_for(event),
            Err(NotHeld(shard)),
            "held until long ago"
        );
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

        held.hold(ShardLease { shard, epoch: 7 }, far_off());
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
