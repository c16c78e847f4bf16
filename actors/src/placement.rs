//! Where an event lives in a cluster — pure. Every event belongs to one of
//! a fixed number of shards; every shard should be owned by one live node,
//! chosen by rendezvous (highest-random-weight) hashing, so that when a node
//! joins or leaves only about 1/N of the shards move, and every node that
//! sees the same membership computes the same owners.
//!
//! Both hashes are written here, not taken from `std` (whose hasher may
//! change between Rust versions): nodes built by different compilers must
//! agree on where every event lives.

use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::EventId;

/// How many shards a cluster has: fixed when its database is first
/// migrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCount(NonZeroU32);

impl ShardCount {
    pub const DEFAULT: ShardCount = ShardCount(NonZeroU32::new(256).unwrap());

    /// `None` for zero.
    pub fn new(count: u32) -> Option<Self> {
        NonZeroU32::new(count).map(Self)
    }

    pub fn get(self) -> u32 {
        self.0.get()
    }

    /// Every shard, in order.
    pub fn all(self) -> impl Iterator<Item = ShardId> {
        (0..self.get()).map(ShardId)
    }

    /// Shard number `n` of this cluster; `None` if out of range.
    pub fn shard(self, n: u32) -> Option<ShardId> {
        (n < self.get()).then_some(ShardId(n))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId(u32);

impl ShardId {
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A fencing token: a shard's lease as a node took it. Each taking of a
/// shard gets a greater epoch than the one before, so a commit can tell
/// the holder of the lease from a node that lost it (paused, partitioned)
/// and still believes it holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShardLease {
    pub shard: ShardId,
    pub epoch: u64,
}

/// A node of the cluster: generated at start unless configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(Uuid);

impl NodeId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn as_uuid(self) -> Uuid {
        self.0
    }
}

impl Default for NodeId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for NodeId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

/// The shard an event belongs to.
pub fn shard_of(event: EventId, shards: ShardCount) -> ShardId {
    let hash = fnv1a(event.as_uuid().as_bytes());
    ShardId((hash % u64::from(shards.get())) as u32)
}

/// The live node that should own `shard`: the one whose weight for it is
/// highest (ties, which need a 64-bit collision, go to the lower id).
/// `None` when no node is live.
pub fn owner(shard: ShardId, live: &[NodeId]) -> Option<NodeId> {
    live.iter()
        .copied()
        .max_by_key(|node| (weight(shard, *node), std::cmp::Reverse(*node)))
}

/// The owner every shard should have, given the live nodes.
pub fn owners(shards: ShardCount, live: &[NodeId]) -> Vec<Option<NodeId>> {
    shards.all().map(|shard| owner(shard, live)).collect()
}

fn weight(shard: ShardId, node: NodeId) -> u64 {
    mix(fnv1a(node.0.as_bytes()) ^ mix(u64::from(shard.0)))
}

/// FNV-1a, 64-bit.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's finaliser: spreads nearby inputs over the whole range.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<NodeId> {
        (0..n).map(|_| NodeId::new()).collect()
    }

    fn moved(before: &[Option<NodeId>], after: &[Option<NodeId>]) -> usize {
        before.iter().zip(after).filter(|(b, a)| b != a).count()
    }

    #[test]
    fn an_events_shard_is_fixed_by_its_id_alone() {
        // A known vector, computed apart from this code (FNV-1a of the 16
        // bytes, mod 256): a change to the hash would move every event of a
        // running cluster.
        let event = EventId::from(Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0001));
        assert_eq!(
            shard_of(event, ShardCount::DEFAULT),
            shard_of(event, ShardCount::DEFAULT)
        );
        assert_eq!(shard_of(event, ShardCount::DEFAULT).get(), 13);
        assert_eq!(shard_of(event, ShardCount::new(1).unwrap()).get(), 0);
    }

    #[test]
    fn events_spread_evenly_over_the_shards() {
        let shards = ShardCount::new(16).unwrap();
        let mut counts = [0u32; 16];
        for _ in 0..16_000 {
            counts[shard_of(EventId::new(), shards).get() as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    #[test]
    fn every_node_computes_the_same_owners_whatever_order_it_lists_the_members() {
        let live = nodes(3);
        let mut reversed = live.clone();
        reversed.reverse();
        assert_eq!(
            owners(ShardCount::DEFAULT, &live),
            owners(ShardCount::DEFAULT, &reversed)
        );
        assert!(
            owners(ShardCount::DEFAULT, &live)
                .iter()
                .all(Option::is_some)
        );
        assert_eq!(owner(ShardId(0), &[]), None, "no live node, no owner");
    }

    #[test]
    fn a_lone_node_owns_every_shard() {
        let alone = nodes(1);
        assert!(
            owners(ShardCount::DEFAULT, &alone)
                .iter()
                .all(|o| *o == Some(alone[0]))
        );
    }

    #[test]
    fn shards_are_shared_about_evenly() {
        let live = nodes(4);
        let placed = owners(ShardCount::DEFAULT, &live);
        for node in &live {
            let owned = placed.iter().filter(|o| **o == Some(*node)).count();
            assert!((32..=96).contains(&owned), "{owned} of 256 shards");
        }
    }

    #[test]
    fn a_node_joining_takes_about_its_share_and_nothing_else_moves() {
        let mut live = nodes(3);
        let before = owners(ShardCount::DEFAULT, &live);
        let newcomer = NodeId::new();
        live.push(newcomer);
        let after = owners(ShardCount::DEFAULT, &live);
        for (b, a) in before.iter().zip(&after) {
            assert!(
                b == a || *a == Some(newcomer),
                "a shard moved between old nodes"
            );
        }
        let moved = moved(&before, &after);
        assert!(
            (32..=96).contains(&moved),
            "{moved} of 256 moved (about 64 expected)"
        );
    }

    #[test]
    fn a_node_leaving_gives_up_only_its_own_shards() {
        let live = nodes(4);
        let before = owners(ShardCount::DEFAULT, &live);
        let after = owners(ShardCount::DEFAULT, &live[1..]);
        for (b, a) in before.iter().zip(&after) {
            if *b != Some(live[0]) {
                assert_eq!(b, a, "a shard of a node that stayed moved");
            }
        }
        assert!(after.iter().all(|o| *o != Some(live[0])));
    }
}
