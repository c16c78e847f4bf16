//! `[quotas]`: what one account may own, each checked and taken as one step.
//!
//! A quota is counted in the store before a create, and two creates by one
//! owner at once would both count below it and both pass: with the write
//! rate limit's burst, one account could once double its quota. Each
//! check-and-create now takes its key's turn (the owner's, for venues and
//! events; the venue's, for organisers) and holds it until the created row
//! is committed, so the next count sees it. One case stays inexact: a
//! create that outlives its write deadline is answered 503 and its turn
//! given back, yet it may still commit a moment later.
//!
//! The turns are a fixed set of stripes, not a lock per key: no memory per
//! owner (a stranger could otherwise grow the map), and since creates are
//! rare beside joins, owners sharing a stripe seldom wait for each other.
//! They are per node: in a cluster of N nodes, creates through different
//! nodes may still pass a quota by at most N − 1.

use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

use super::ApiError;
use crate::config::QuotaSettings;

const STRIPES: usize = 64;

/// The quotas in force, and the turns that make each one exact on a node.
pub struct Quotas {
    pub settings: QuotaSettings,
    turns: [Mutex<()>; STRIPES],
}

impl Quotas {
    pub fn new(settings: QuotaSettings) -> Self {
        Self {
            settings,
            turns: std::array::from_fn(|_| Mutex::new(())),
        }
    }

    /// Waits up to `patience` for `key`'s turn under `quota`: while it is
    /// held, no other check-and-create for the same key runs on this node.
    /// None at once when the quota is off (0): there is nothing to count.
    /// A create stalled in a cluster (a shard moving, a peer gone) holds its
    /// stripe for up to its write deadline, so the wait has one too: a
    /// create under a quota answers within twice the write deadline.
    pub async fn turn(
        &self,
        quota: i64,
        key: Uuid,
        patience: Duration,
    ) -> Result<Option<MutexGuard<'_, ()>>, ApiError> {
        if quota == 0 {
            return Ok(None);
        }
        // Both halves: ids from another issuer may not be random in the low bits.
        let (high, low) = key.as_u64_pair();
        let stripe = ((high ^ low) % STRIPES as u64) as usize;
        match tokio::time::timeout(patience, self.turns[stripe].lock()).await {
            Ok(turn) => Ok(Some(turn)),
            Err(_) => Err(ApiError::Overloaded(
                "too many creates are waiting; retry shortly",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const PATIENCE: Duration = Duration::from_secs(30);

    /// Many tasks counting then taking under one key's turn never pass the
    /// quota, however they interleave at the await between the two.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_count_and_its_create_are_one_step_per_key() {
        let quotas = Arc::new(Quotas::new(QuotaSettings::default()));
        let owner = Uuid::now_v7();
        let owned = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (quotas, owned) = (Arc::clone(&quotas), Arc::clone(&owned));
                tokio::spawn(async move {
                    let _turn = quotas.turn(3, owner, PATIENCE).await.unwrap();
                    let count = owned.load(Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    if count < 3 {
                        owned.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(owned.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn owners_on_other_stripes_do_not_wait() {
        let quotas = Quotas::new(QuotaSettings::default());
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let _held = quotas.turn(3, a, PATIENCE).await.unwrap();
        let other = quotas.turn(3, b, Duration::from_millis(50)).await;
        assert!(other.is_ok(), "another stripe's turn is free");
    }

    #[tokio::test]
    async fn a_turn_waited_for_too_long_is_refused_with_503() {
        let quotas = Quotas::new(QuotaSettings::default());
        let owner = Uuid::now_v7();
        let _held = quotas.turn(3, owner, PATIENCE).await.unwrap();
        let waited = quotas.turn(3, owner, Duration::from_millis(50)).await;
        assert!(matches!(waited, Err(ApiError::Overloaded(_))));
        assert!(
            quotas.turn(0, owner, PATIENCE).await.unwrap().is_none(),
            "no quota, nothing to wait for"
        );
    }
}
