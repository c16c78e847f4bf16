//! Password hashing off the async executor, a few hashes at a time.
//!
//! One argon2id hash holds about 19 MiB for as long as it runs, so the
//! number running at once *is* the server's memory: a hundred concurrent
//! wrong logins on tokio's blocking pool once took the server from 40 MB to
//! 1 GB. Hashes run `concurrency` at a time; up to `queue` more wait their
//! turn; past that the caller is told [`Busy`] (the API answers 503 with
//! `Retry-After`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;
use tokio::sync::Semaphore;

use super::credentials::{Password, hash_password, verify_password};

/// `[auth.hashing]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct HashingSettings {
    /// Hashes computed at once; 0 means one per core.
    pub concurrency: usize,
    /// Hashes waiting for a turn before more are refused.
    pub queue: usize,
}

/// Every hash is in use and the queue is full: retry shortly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many passwords are being checked at once")]
pub struct Busy;

/// The server's one gate to argon2.
pub struct Hashing {
    turns: Arc<Semaphore>,
    queue: usize,
    waiting: AtomicUsize,
}

impl Hashing {
    pub fn new(settings: &HashingSettings) -> Self {
        let concurrency = match settings.concurrency {
            // As many as the settings allow (64), each ~19 MiB.
            0 => std::thread::available_parallelism().map_or(2, |n| n.get().min(64)),
            n => n,
        };
        Self {
            turns: Arc::new(Semaphore::new(concurrency)),
            queue: settings.queue,
            waiting: AtomicUsize::new(0),
        }
    }

    /// Hashes a new password with a fresh salt.
    pub async fn hash(&self, password: Password) -> Result<String, Busy> {
        self.run(move || hash_password(&password)).await
    }

    /// Whether `password` matches `stored_hash`.
    pub async fn verify(&self, password: String, stored_hash: String) -> Result<bool, Busy> {
        self.run(move || verify_password(&password, &stored_hash))
            .await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let turn = match Arc::clone(&self.turns).try_acquire_owned() {
            Ok(turn) => turn,
            Err(_) => {
                let _place = self.queue_place()?;
                Arc::clone(&self.turns)
                    .acquire_owned()
                    .await
                    .expect("the hashing semaphore is never closed")
            }
        };
        metrics::gauge!("turnout_password_hashes_running").increment(1.0);
        // The turn moves into the blocking task: a caller that goes away
        // (its connection closed) must not free a turn while its hash still
        // holds the memory.
        let done = tokio::task::spawn_blocking(move || {
            let result = work();
            drop(turn);
            metrics::gauge!("turnout_password_hashes_running").decrement(1.0);
            result
        })
        .await;
        Ok(done.expect("password hashing does not panic"))
    }

    /// A place in the queue, given back when dropped (also when the caller
    /// goes away while waiting).
    fn queue_place(&self) -> Result<QueuePlace<'_>, Busy> {
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        let place = QueuePlace(&self.waiting);
        if before >= self.queue {
            metrics::counter!("turnout_password_hashes_refused_total").increment(1);
            return Err(Busy);
        }
        Ok(place)
    }
}

struct QueuePlace<'a>(&'a AtomicUsize);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    fn hashing(concurrency: usize, queue: usize) -> Arc<Hashing> {
        Arc::new(Hashing::new(&HashingSettings { concurrency, queue }))
    }

    #[tokio::test]
    async fn a_password_verifies_through_the_gate() {
        let gate = hashing(1, 0);
        let hash = gate
            .hash(Password::parse("correct horse".into()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            gate.verify("correct horse".into(), hash.clone()).await,
            Ok(true)
        );
        assert_eq!(gate.verify("wrong horse".into(), hash).await, Ok(false));
    }

    #[tokio::test]
    async fn past_the_running_and_the_queued_the_caller_is_told_busy() {
        let gate = hashing(1, 1);
        let (release, blocked) = mpsc::channel::<()>();
        let running = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.run(move || blocked.recv().is_ok()).await }
        });
        while gate.turns.available_permits() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let queued = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.run(|| "queued").await }
        });
        while gate.waiting.load(Ordering::Acquire) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }

        assert_eq!(gate.run(|| "third").await, Err(Busy));

        release.send(()).unwrap();
        assert_eq!(running.await.unwrap(), Ok(true));
        assert_eq!(queued.await.unwrap(), Ok("queued"));
        assert_eq!(gate.run(|| "after").await, Ok("after"));
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_waiting_leaves_the_queue() {
        let gate = hashing(1, 1);
        let (release, blocked) = mpsc::channel::<()>();
        let running = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.run(move || blocked.recv().is_ok()).await }
        });
        while gate.turns.available_permits() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let gave_up = tokio::time::timeout(Duration::from_millis(20), gate.run(|| "never")).await;
        assert!(gave_up.is_err(), "it waited for the running hash");
        assert_eq!(gate.waiting.load(Ordering::Acquire), 0);

        release.send(()).unwrap();
        assert_eq!(running.await.unwrap(), Ok(true));
    }
}
