//! The server's background tasks (the outbox relay and its gauges, the
//! stream consumer, purges and sweeps): each is started with a [`Shutdown`]
//! signal and stops at it between two units of its work; at shutdown they are
//! told together and awaited, and only one that overruns the grace period is
//! cut off. A task that panics or ends before the signal would otherwise be
//! gone without a word: it is logged at error and counted
//! (`turnout_background_tasks_failed_total{task}`).

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A task's view of the shutdown signal.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Resolves once shutdown is requested (at once if it already was).
    pub async fn requested(&mut self) {
        // An error means the sender is gone: that is a shutdown too.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether shutdown was asked for, or the sender is gone (the server
    /// stopped without asking): the same as [`Shutdown::requested`].
    pub fn is_requested(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Sleeps for `pause`; `false` if shutdown came first.
    pub async fn sleep(&mut self, pause: Duration) -> bool {
        tokio::select! {
            _ = self.requested() => false,
            _ = tokio::time::sleep(pause) => true,
        }
    }
}

/// Rows a purge deletes per statement.
pub const PURGE_BATCH: i64 = 500;

/// Runs a purge a batch at a time (`batch` deletes up to the limit it is
/// given) until a batch comes back short or shutdown comes; returns how
/// many rows went. Between batches it rests twice as long as the batch
/// took: the journal's commits, which SQLite serialises with every other
/// write, then wait for one short batch at most, and a commit waiting on
/// the lock (SQLite retries after a growing sleep) finds it free before
/// the next. A backlog of two million rows no longer stalls joins for
/// five seconds (docs/BENCHMARKS.md).
pub async fn purge_in_batches<F, Fut>(
    shutdown: &mut Shutdown,
    mut batch: F,
) -> Result<u64, turnout_actors::store::StoreError>
where
    F: FnMut(i64) -> Fut,
    Fut: Future<Output = Result<u64, turnout_actors::store::StoreError>>,
{
    let mut deleted = 0;
    loop {
        let started = std::time::Instant::now();
        let taken = batch(PURGE_BATCH).await?;
        deleted += taken;
        if taken < PURGE_BATCH as u64 || !shutdown.sleep(2 * started.elapsed()).await {
            return Ok(deleted);
        }
    }
}

/// Runs `work` every `period` (the first at once) until shutdown; a tick
/// missed while `work` ran late is skipped, not run at once. `work` is
/// handed the signal, for a unit of work long enough to heed it midway.
pub async fn every<F, Fut>(period: Duration, mut shutdown: Shutdown, mut work: F)
where
    F: FnMut(Shutdown) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tick.tick() => work(shutdown.clone()).await,
        }
    }
}

/// The running tasks and the sender of their shutdown signal.
pub struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Default for Background {
    fn default() -> Self {
        Self {
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }
}

impl Background {
    /// The signal to hand a task that is started elsewhere.
    pub fn shutdown(&self) -> Shutdown {
        Shutdown(self.stop.subscribe())
    }

    /// Starts `task` on the current runtime; `name` is for the logs.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + 'static) {
        use futures_util::FutureExt;
        // From the start, at zero: the alert reads the series.
        metrics::counter!("turnout_background_tasks_failed_total", "task" => name).increment(0);
        let stopping = self.shutdown();
        let watched = async move {
            let ended = std::panic::AssertUnwindSafe(task).catch_unwind().await;
            let failure = match ended {
                Ok(()) if stopping.is_requested() => return,
                Ok(()) => "ended before shutdown".to_owned(),
                Err(panic) => panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned()),
            };
            tracing::error!(
                task = name,
                failure,
                "a background task stopped; it does not run again until a restart"
            );
            metrics::counter!("turnout_background_tasks_failed_total", "task" => name).increment(1);
        };
        self.tasks.push((name, actix_web::rt::spawn(watched)));
    }

    /// Signals every task and waits for each, up to `grace` in all; a task
    /// still running then is aborted, and said so.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        for (name, mut task) in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(
                    task = name,
                    "a background task overran the shutdown grace; aborted"
                );
                task.abort();
                let _ = task.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[actix_web::test]
    async fn tasks_stop_at_the_signal_after_their_current_unit_of_work() {
        let mut background = Background::default();
        let finished = Arc::new(AtomicUsize::new(0));
        let units = Arc::clone(&finished);
        background.spawn(
            "ticker",
            every(
                Duration::from_millis(10),
                background.shutdown(),
                move |_| {
                    let units = Arc::clone(&units);
                    async move {
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        units.fetch_add(1, Ordering::SeqCst);
                    }
                },
            ),
        );
        let mut sleeper = background.shutdown();
        let slept = Arc::new(AtomicUsize::new(0));
        let woke = Arc::clone(&slept);
        background.spawn("sleeper", async move {
            if !sleeper.sleep(Duration::from_secs(3600)).await {
                woke.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_millis(15)).await;
        background.stop(Duration::from_secs(5)).await;
        let done = finished.load(Ordering::SeqCst);
        assert!(done >= 1, "the unit under way finished");
        assert_eq!(
            slept.load(Ordering::SeqCst),
            1,
            "a sleep ends at the signal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(finished.load(Ordering::SeqCst), done, "nothing runs after");
    }

    #[actix_web::test]
    async fn a_task_that_panics_or_ends_early_is_counted() {
        let metrics = crate::telemetry::metrics();
        let mut background = Background::default();
        background.spawn("doomed test task", async { panic!("injected by a test") });
        background.spawn("quitting test task", async {});
        tokio::time::sleep(Duration::from_millis(50)).await;
        let page = metrics.render();
        for task in ["doomed test task", "quitting test task"] {
            let series = format!("turnout_background_tasks_failed_total{{task=\"{task}\"}} 1");
            assert!(page.contains(&series), "{series} in {page}");
        }
        background.stop(Duration::from_secs(1)).await;
    }

    #[actix_web::test]
    async fn a_task_that_ignores_the_signal_is_cut_off_at_the_grace() {
        let mut background = Background::default();
        background.spawn("stubborn", std::future::pending());
        let started = std::time::Instant::now();
        background.stop(Duration::from_millis(50)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
