//! `[quotas]`: what one account may own, each checked and taken as one step.
//!
//! A quota is counted in the store before a create, and two creates by one
//! owner at once would both count below it and both pass: with the write
//! rate limit's burst, one account could once double its quota. Each
//! check-and-create now takes its key's turn (the owner's, for venues and
//! events; the venue's, for organisers) and holds it until the created row
//! is committed, so the next count sees it.
//!
//! The turns are a fixed set of stripes, not a lock per key: no memory per
//! owner (a stranger could otherwise grow the map), and since creates are
//! rare beside joins, owners sharing a stripe seldom wait for each other.
//! They are per node: in a cluster of N nodes, creates through different
//! nodes may still pass a quota by at most N − 1.

use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

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

    /// Waits for `key`'s turn under `quota`: while it is held, no other
    /// check-and-create for the same key runs on this node. None at once when
    /// the quota is off (0): there is nothing to count.
    pub async fn turn(&self, quota: i64, key: Uuid) -> Option<MutexGuard<'_, ()>> {
        if quota == 0 {
            return None;
        }
        // A v7 id's low bits are random; its high bits are its time.
        let stripe = (key.as_u128() % STRIPES as u128) as usize;
        Some(self.turns[stripe].lock().await)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

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
                    let _turn = quotas.turn(3, owner).await;
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
        let _held = quotas.turn(3, a).await;
        let other =
            tokio::time::timeout(std::time::Duration::from_secs(5), quotas.turn(3, b)).await;
        assert!(other.is_ok(), "another stripe's turn is free");
    }
}
