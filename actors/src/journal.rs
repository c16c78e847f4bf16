//! The Journal: the persistence supervisor every event actor writes through.
//!
//! It group-commits: whatever appends arrive while a transaction is in flight
//! wait in a buffer and go together into the next one, so under load each
//! commit carries more work instead of more commits queueing up. Each append
//! is answered only after the transaction holding it has committed.
//!
//! Between bursts, appends find the journal idle and would each pay a commit
//! of their own (a durable commit is an `fsync` and a round of thread
//! wake-ups). So an append that finds it idle waits up to `linger` for
//! company — only while appends have been arriving closer together than
//! that, so a quiet server adds no latency to a lone join.
//!
//! A writer (one actor incarnation) whose append failed is *fenced*: its later
//! appends were decided on top of facts that never became durable, so they
//! are refused. The actor stops, and the next command activates a fresh
//! incarnation that reloads the stream from the store.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::idempotency::{Answer, Given};
use crate::store::{Append, EventStore};

/// What became of an append that did not fail.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    Committed,
    /// Its idempotency key was already stored, for the same request, with
    /// this answer; nothing of the append was written.
    Replayed(Answer),
}

/// Why an append was not made durable. The actor's caller gets a retryable
/// error for every variant: nothing was acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("another writer took this stream's version, or an earlier append failed")]
    Conflict,
    #[error("the journal's buffer is full")]
    Overloaded,
    #[error("the commit failed or timed out")]
    Unavailable,
    #[error("the idempotency key was already used for a different request")]
    KeyReused,
    #[error("this node no longer holds the stream's shard")]
    LeaseLost,
}

/// An append's outcome, sent to its writer as a message, in the order the
/// journal settles them; `AppendReply` makes sure there is exactly one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AppendDone {
    /// The writer's own number for the append.
    pub seq: u64,
    pub result: Result<Appended, AppendError>,
}

/// Where an append's outcome goes. Every append is answered exactly once:
/// one dropped unanswered (the journal stopped) answers `Unavailable`.
pub struct AppendReply {
    to: Option<Recipient<AppendDone>>,
    seq: u64,
}

impl AppendReply {
    pub fn new(to: Recipient<AppendDone>, seq: u64) -> Self {
        Self { to: Some(to), seq }
    }

    fn send(mut self, result: Result<Appended, AppendError>) {
        self.answer(result);
    }

    fn answer(&mut self, result: Result<Appended, AppendError>) {
        if let Some(to) = self.to.take() {
            // `do_send` ignores a mailbox's capacity: a live writer always
            // hears the outcome (a stopped one has nobody left to tell).
            to.do_send(AppendDone {
                seq: self.seq,
                result,
            });
        }
    }
}

impl Drop for AppendReply {
    fn drop(&mut self) {
        self.answer(Err(AppendError::Unavailable));
    }
}

/// Hands an append to the journal; `reply` is answered after its commit.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Submit {
    pub append: Append,
    pub reply: AppendReply,
}

/// A writer has stopped in the middle (its actor panicked): its appends not
/// yet committing are refused, so that none of them shares a batch with the
/// appends of the actor that replaces it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Fence {
    pub writer: u64,
    /// Told once the writer's appends already being committed, which no
    /// fence can stop, have settled: the replacement must not load its
    /// stream before they land. Not held up by other writers' appends.
    pub settled: oneshot::Sender<()>,
}

/// Resolves once every append received before it has been committed or
/// failed: the last step of a graceful shutdown, and of handing a shard
/// over. Appends arriving after it are not waited for, or a journal kept
/// busy by other streams would never answer it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush(pub oneshot::Sender<()>);

#[derive(Debug, Clone)]
pub struct JournalSettings {
    /// Appends waiting beyond this are refused (callers see 503), so a stuck
    /// database cannot grow memory without bound.
    pub max_pending: usize,
    /// Most appends in one transaction; keeps statements within bind limits.
    pub max_batch: usize,
    /// A commit taking longer fails its whole batch. Where the store commits
    /// on the journal's own thread (SQLite), the timer cannot fire while an
    /// attempt runs: it bounds the wait before and between attempts (an
    /// attempt whose deadline passed while it waited is not run), and an
    /// attempt itself is bounded by SQLite's busy timeout.
    pub commit_timeout: Duration,
    /// How long an append that finds the journal idle waits for others to
    /// share its commit, when appends arrive closer together than this;
    /// zero commits at once.
    pub linger: Duration,
}

impl Default for JournalSettings {
    fn default() -> Self {
        Self {
            max_pending: 50_000,
            max_batch: 4_000,
            commit_timeout: Duration::from_secs(5),
            linger: Duration::ZERO,
        }
    }
}

/// How closely appends have been arriving: a moving average of the gaps
/// between them, so one lull or one burst does not decide alone.
#[derive(Debug, Default)]
struct Arrivals {
    last: Option<Instant>,
    /// Mean gap in seconds; none until two appends have arrived.
    mean_gap: Option<f64>,
}

impl Arrivals {
    /// The weight of the newest gap in the average.
    const WEIGHT: f64 = 0.125;

    fn arrived(&mut self, at: Instant) {
        if let Some(last) = self.last {
            let gap = at.saturating_duration_since(last).as_secs_f64();
            self.mean_gap = Some(match self.mean_gap {
                Some(mean) => mean + Self::WEIGHT * (gap - mean),
                None => gap,
            });
        }
        self.last = Some(at);
    }

    /// Whether another append is expected within `linger`.
    fn company_within(&self, linger: Duration) -> bool {
        !linger.is_zero() && self.mean_gap.is_some_and(|gap| gap < linger.as_secs_f64())
    }
}

struct Pending {
    /// Its place in the order appends arrived (see [`Flush`]).
    number: u64,
    append: Append,
    reply: AppendReply,
}

pub struct Journal {
    store: Arc<dyn EventStore>,
    settings: JournalSettings,
    buffer: VecDeque<Pending>,
    /// The number the next append to arrive is given.
    received: u64,
    /// The number of the first append of the batch being committed: every
    /// append before it is settled, and every one after it is in the batch
    /// or the buffer (batches are taken from the buffer's front).
    committing: Option<u64>,
    arrivals: Arrivals,
    /// The commit waiting for company, if one is.
    lingering: Option<SpawnHandle>,
    /// Writers fenced after a failure; bounded, oldest forgotten first (a
    /// fenced actor sends nothing more, so only appends already in transit
    /// need it).
    fenced: HashSet<u64>,
    fenced_order: VecDeque<u64>,
    /// A writer was fenced since the buffer was last swept; a writer fenced
    /// earlier cannot be in it, since `Submit` turns it away.
    fenced_since_sweep: bool,
    /// Each waits for the appends numbered below its own: a [`Flush`], or a
    /// [`Fence`] for the batch being committed.
    flush_waiters: Vec<(u64, oneshot::Sender<()>)>,
}

impl Journal {
    pub fn new(store: Arc<dyn EventStore>, settings: JournalSettings) -> Self {
        Self {
            store,
            settings,
            buffer: VecDeque::new(),
            received: 0,
            committing: None,
            arrivals: Arrivals::default(),
            lingering: None,
            fenced: HashSet::new(),
            fenced_order: VecDeque::new(),
            fenced_since_sweep: false,
            flush_waiters: Vec::new(),
        }
    }

    /// A new append is in the buffer: commit now, or wait a little for
    /// company if the journal is idle and more appends are expected.
    fn commit_soon(&mut self, ctx: &mut Context<Self>) {
        if self.committing.is_some() {
            return;
        }
        if self.buffer.len() >= self.settings.max_batch {
            if let Some(timer) = self.lingering.take() {
                ctx.cancel_future(timer);
            }
            return self.start_commit(ctx);
        }
        if self.lingering.is_some() {
            return;
        }
        if !self.arrivals.company_within(self.settings.linger) {
            return self.start_commit(ctx);
        }
        self.lingering = Some(ctx.run_later(self.settings.linger, |journal, ctx| {
            journal.lingering = None;
            journal.start_commit(ctx);
            // Fenced appends may have left the buffer empty meanwhile.
            journal.wake_flushers();
        }));
    }

    fn start_commit(&mut self, ctx: &mut Context<Self>) {
        if self.committing.is_some() || self.lingering.is_some() {
            return;
        }
        let Some(first) = self.buffer.front() else {
            return;
        };
        self.committing = Some(first.number);
        let take = self.buffer.len().min(self.settings.max_batch);
        let (appends, replies): (Vec<Append>, Vec<AppendReply>) = self
            .buffer
            .drain(..take)
            .map(|p| (p.append, p.reply))
            .unzip();
        metrics::gauge!("turnout_journal_pending").set(self.buffer.len() as f64);
        metrics::histogram!("turnout_journal_batch_size").record(appends.len() as f64);

        // One commit carries many commands: its span is a trace of its own,
        // linked to the span of every command it carries.
        let span = tracing::info_span!(parent: None, "journal.commit", appends = appends.len());
        for append in &appends {
            span.follows_from(&append.span);
        }
        let store = Arc::clone(&self.store);
        let timeout = self.settings.commit_timeout;
        let commit = async move {
            let started = Instant::now();
            let result = tokio::time::timeout(timeout, store.commit(&appends)).await;
            metrics::histogram!("turnout_journal_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            (appends, result)
        };
        ctx.spawn(commit.instrument(span).into_actor(self).map(
            move |(appends, result), journal, ctx| {
                journal.finish(appends, replies, result);
                journal.committing = None;
                journal.start_commit(ctx);
                journal.wake_flushers();
            },
        ));
    }

    fn finish(
        &mut self,
        appends: Vec<Append>,
        replies: Vec<AppendReply>,
        result: Result<
            Result<crate::store::CommitReport, crate::store::StoreError>,
            tokio::time::error::Elapsed,
        >,
    ) {
        let report = match result {
            Ok(Ok(report)) => {
                metrics::counter!("turnout_journal_commits_total", "outcome" => "ok").increment(1);
                report
            }
            Ok(Err(error)) => {
                metrics::counter!("turnout_journal_commits_total", "outcome" => "error")
                    .increment(1);
                tracing::error!(%error, appends = appends.len(), "journal commit failed");
                return self.fail_all(appends, replies);
            }
            Err(_) => {
                metrics::counter!("turnout_journal_commits_total", "outcome" => "timeout")
                    .increment(1);
                tracing::error!(appends = appends.len(), "journal commit timed out");
                return self.fail_all(appends, replies);
            }
        };
        let mut replayed: std::collections::HashMap<usize, Given> =
            report.replayed.into_iter().collect();
        for (i, (append, reply)) in appends.into_iter().zip(replies).enumerate() {
            if let Some(answer) = replayed.remove(&i) {
                let same_request = append
                    .idempotency
                    .as_ref()
                    .is_some_and(|r| r.fingerprint == answer.fingerprint);
                if !append.facts.is_empty() {
                    // The actor applied facts that must not happen.
                    self.fence(&append);
                }
                reply.send(if same_request {
                    Ok(Appended::Replayed(answer.answer))
                } else {
                    Err(AppendError::KeyReused)
                });
            } else if report.fenced.contains(&i) {
                tracing::warn!(stream = %append.stream, lease = ?append.lease, "the shard's lease was lost; refused");
                metrics::counter!("turnout_journal_fenced_total").increment(1);
                self.fence(&append);
                reply.send(Err(AppendError::LeaseLost));
            } else if report.conflicted.contains(&i) {
                tracing::warn!(stream = %append.stream, "version conflict; the actor will reload");
                self.fence(&append);
                reply.send(Err(AppendError::Conflict));
            } else {
                reply.send(Ok(Appended::Committed));
            }
        }
        self.drop_fenced_from_buffer();
    }

    fn fail_all(&mut self, appends: Vec<Append>, replies: Vec<AppendReply>) {
        for (append, reply) in appends.into_iter().zip(replies) {
            self.fence(&append);
            reply.send(Err(AppendError::Unavailable));
        }
        self.drop_fenced_from_buffer();
    }

    fn fence(&mut self, append: &Append) {
        self.fence_writer(append.writer);
    }

    fn fence_writer(&mut self, writer: u64) {
        const REMEMBERED: usize = 4096;
        if self.fenced.insert(writer) {
            self.fenced_since_sweep = true;
            self.fenced_order.push_back(writer);
            if self.fenced_order.len() > REMEMBERED
                && let Some(old) = self.fenced_order.pop_front()
            {
                self.fenced.remove(&old);
            }
        }
    }

    fn is_fenced_out(&self, append: &Append) -> bool {
        self.fenced.contains(&append.writer)
    }

    fn drop_fenced_from_buffer(&mut self) {
        if !std::mem::take(&mut self.fenced_since_sweep) {
            return;
        }
        let (keep, refuse): (VecDeque<Pending>, VecDeque<Pending>) =
            std::mem::take(&mut self.buffer)
                .into_iter()
                .partition(|p| !self.is_fenced_out(&p.append));
        self.buffer = keep;
        // Else the gauge stays at the backlog a failed commit swept away:
        // with the buffer empty, no commit starts to set it again.
        metrics::gauge!("turnout_journal_pending").set(self.buffer.len() as f64);
        for p in refuse {
            p.reply.send(Err(AppendError::Conflict));
        }
    }

    fn wake_flushers(&mut self) {
        let oldest_unsettled = self
            .committing
            .or_else(|| self.buffer.front().map(|p| p.number));
        let (settled, waiting) = std::mem::take(&mut self.flush_waiters)
            .into_iter()
            .partition(|(upto, _)| oldest_unsettled.is_none_or(|oldest| oldest >= *upto));
        self.flush_waiters = waiting;
        for (_, waiter) in settled {
            let _ = waiter.send(());
        }
    }
}

impl Actor for Journal {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        tracing::debug!("journal started");
    }
}

impl Handler<Submit> for Journal {
    type Result = ();

    fn handle(&mut self, msg: Submit, ctx: &mut Self::Context) {
        if self.is_fenced_out(&msg.append) {
            msg.reply.send(Err(AppendError::Conflict));
            return;
        }
        if self.buffer.len() >= self.settings.max_pending {
            metrics::counter!("turnout_journal_refused_total").increment(1);
            // The writer's later appends stand on this one: were one of them
            // let in once there is room, the stream would skip a version.
            self.fence(&msg.append);
            msg.reply.send(Err(AppendError::Overloaded));
            return;
        }
        self.buffer.push_back(Pending {
            number: self.received,
            append: msg.append,
            reply: msg.reply,
        });
        self.received += 1;
        metrics::gauge!("turnout_journal_pending").set(self.buffer.len() as f64);
        self.arrivals.arrived(Instant::now());
        self.commit_soon(ctx);
    }
}

impl Handler<Fence> for Journal {
    type Result = ();

    fn handle(&mut self, msg: Fence, _ctx: &mut Self::Context) {
        self.fence_writer(msg.writer);
        self.drop_fenced_from_buffer();
        // Whatever of the writer's is left is in the batch being committed,
        // before the buffer's front.
        let upto = self.buffer.front().map_or(self.received, |p| p.number);
        self.flush_waiters.push((upto, msg.settled));
        self.wake_flushers();
    }
}

impl Handler<Flush> for Journal {
    type Result = ();

    fn handle(&mut self, msg: Flush, ctx: &mut Self::Context) {
        // Nobody waits for company at a flush.
        if let Some(timer) = self.lingering.take() {
            ctx.cancel_future(timer);
            self.start_commit(ctx);
        }
        self.flush_waiters.push((self.received, msg.0));
        self.wake_flushers();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Capacity, EventId, Lifecycle, UserId};
    use crate::store::EventSummary;
    use crate::testing::{MemoryStore, event_details};

    /// A writer that keeps the outcomes it is told, in order.
    #[derive(Default)]
    struct Writer(Vec<(u64, Result<Appended, AppendError>)>);

    impl Actor for Writer {
        type Context = Context<Self>;
    }

    impl Handler<AppendDone> for Writer {
        type Result = ();

        fn handle(&mut self, done: AppendDone, _: &mut Self::Context) {
            self.0.push((done.seq, done.result));
        }
    }

    /// Everything told so far: the mailbox is FIFO, so earlier outcomes are in.
    #[derive(Message)]
    #[rtype(result = "Vec<(u64, Result<Appended, AppendError>)>")]
    struct Told;

    impl Handler<Told> for Writer {
        type Result = MessageResult<Told>;

        fn handle(&mut self, _: Told, _: &mut Self::Context) -> Self::Result {
            MessageResult(std::mem::take(&mut self.0))
        }
    }

    fn append(stream: EventId, writer: u64, base_version: u64) -> Append {
        Append {
            stream,
            writer,
            lease: None,
            base_version,
            facts: vec![],
            summary: EventSummary {
                id: stream,
                owner: UserId::new(),
                details: event_details(),
                capacity: Capacity::parse(10).unwrap(),
                policy: Default::default(),
                lifecycle: Lifecycle::Published,
                active_count: 0,
                offered_count: 0,
                waitlist_count: 0,
                version: base_version,
            },
            snapshot: None,
            idempotency: None,
            request_id: None,
            span: tracing::Span::none(),
        }
    }

    /// A journal whose commits each take 50 ms, so appends wait behind them.
    fn slow_journal(settings: JournalSettings) -> Addr<Journal> {
        let store = Arc::new(MemoryStore {
            commit_delay: Duration::from_millis(50),
            ..MemoryStore::default()
        });
        Journal::new(store, settings).start()
    }

    /// An append whose outcome `writer` is told under `seq`.
    fn submit(writer: &Addr<Writer>, append: Append, seq: u64) -> Submit {
        Submit {
            append,
            reply: AppendReply::new(writer.clone().recipient(), seq),
        }
    }

    /// Waits until every append sent so far has been answered.
    async fn flushed(journal: &Addr<Journal>) {
        let (done, all_answered) = oneshot::channel();
        journal.do_send(Flush(done));
        all_answered.await.unwrap();
    }

    /// What the writer was told, in the order it submitted.
    async fn told_in_order(writer: &Addr<Writer>) -> Vec<(u64, Result<Appended, AppendError>)> {
        let mut told = writer.send(Told).await.unwrap();
        told.sort_by_key(|(seq, _)| *seq);
        told
    }

    #[test]
    fn company_is_expected_only_while_appends_arrive_closer_than_the_linger() {
        let linger = Duration::from_millis(5);
        let start = Instant::now();
        let mut arrivals = Arrivals::default();
        arrivals.arrived(start);
        assert!(!arrivals.company_within(linger), "one append says nothing");
        for i in 1..=20 {
            arrivals.arrived(start + Duration::from_millis(2 * i));
        }
        assert!(arrivals.company_within(linger), "every 2 ms");
        assert!(!arrivals.company_within(Duration::ZERO), "lingering is off");
        assert!(
            !arrivals.company_within(Duration::from_millis(1)),
            "slower than a 1 ms linger"
        );
        arrivals.arrived(start + Duration::from_millis(42));
        assert!(arrivals.company_within(linger), "one lull does not decide");
        for i in 1..=20 {
            arrivals.arrived(start + Duration::from_millis(42 + 100 * i));
        }
        assert!(!arrivals.company_within(linger), "every 100 ms");
    }

    /// With a linger, appends arriving close together share commits; a
    /// lone append on a quiet journal does not wait for the linger.
    #[actix::test]
    async fn appends_arriving_close_together_share_a_commit_and_a_lone_one_does_not_wait() {
        let store = Arc::new(MemoryStore::default());
        let journal = Journal::new(
            store.clone(),
            JournalSettings {
                linger: Duration::from_secs(60),
                ..JournalSettings::default()
            },
        )
        .start();
        let writer = Writer::default().start();
        let answered = tokio::time::timeout(Duration::from_secs(5), async {
            journal.do_send(submit(&writer, append(EventId::new(), 1, 0), 1));
            while told_in_order(&writer).await.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(answered.is_ok(), "a lone append is committed at once");

        let lingering = Journal::new(
            store.clone(),
            JournalSettings {
                // Far longer than the ten appends take, however slow the
                // machine: they all find the first one's commit waiting.
                linger: Duration::from_millis(2000),
                ..JournalSettings::default()
            },
        )
        .start();
        let before = store.commits.load(std::sync::atomic::Ordering::SeqCst);
        // 10 ms apart: without a linger, each would find the journal idle.
        for seq in 0..10 {
            lingering.do_send(submit(&writer, append(EventId::new(), 10 + seq, 0), seq));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut told = Vec::new();
        while told.len() < 10 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            told.extend(told_in_order(&writer).await);
        }
        let commits = store.commits.load(std::sync::atomic::Ordering::SeqCst) - before;
        assert!(
            commits <= 3,
            "ten appends 10 ms apart took {commits} commits"
        );
        assert!(told.iter().all(|(_, r)| *r == Ok(Appended::Committed)));
    }

    /// An append refused for want of room fences its writer: the writer's
    /// next append, decided on top of it, must not be let in once there is
    /// room again, or the stream would skip a version.
    #[actix::test]
    async fn a_writer_refused_for_want_of_room_is_fenced() {
        let journal = slow_journal(JournalSettings {
            max_pending: 1,
            ..JournalSettings::default()
        });
        let writer = Writer::default().start();
        let (stream, other) = (EventId::new(), EventId::new());
        journal.do_send(submit(&writer, append(stream, 1, 0), 1)); // committing
        journal.do_send(submit(&writer, append(stream, 1, 1), 2)); // waiting, then fenced
        journal.do_send(submit(&writer, append(stream, 1, 2), 3)); // no room
        flushed(&journal).await;
        journal.do_send(submit(&writer, append(stream, 1, 3), 4)); // room, but fenced
        journal.do_send(submit(&writer, append(other, 2, 0), 5)); // another writer
        flushed(&journal).await;
        assert_eq!(
            told_in_order(&writer).await,
            vec![
                (1, Ok(Appended::Committed)),
                // Shed with the rest: the writer reloads and decides again.
                (2, Err(AppendError::Conflict)),
                (3, Err(AppendError::Overloaded)),
                (4, Err(AppendError::Conflict)),
                (5, Ok(Appended::Committed)),
            ]
        );
    }

    /// A shard's handover flushes the journal while other streams keep it
    /// busy: the flush waits for the appends before it, not for a quiet
    /// moment that may never come.
    #[actix::test]
    async fn a_flush_waits_only_for_the_appends_received_before_it() {
        let journal = slow_journal(JournalSettings::default());
        let writer = Writer::default().start();
        journal.do_send(submit(&writer, append(EventId::new(), 1, 0), 1)); // committing
        journal.do_send(submit(&writer, append(EventId::new(), 2, 0), 2)); // waiting
        let (done, flushed) = oneshot::channel();
        journal.do_send(Flush(done));
        let busy = {
            let (journal, writer) = (journal.clone(), writer.clone());
            actix::spawn(async move {
                for seq in 3..1_000 {
                    journal.do_send(submit(&writer, append(EventId::new(), seq, 0), seq));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };

        let answered = tokio::time::timeout(Duration::from_secs(2), flushed).await;
        busy.abort();
        assert!(answered.is_ok(), "the flush waited for appends after it");
        let told = told_in_order(&writer).await;
        assert_eq!(
            told[..2],
            [(1, Ok(Appended::Committed)), (2, Ok(Appended::Committed))]
        );
    }

    #[actix::test]
    async fn a_writer_fenced_when_its_actor_stops_has_its_waiting_appends_refused() {
        let journal = slow_journal(JournalSettings::default());
        let writer = Writer::default().start();
        let (stream, other) = (EventId::new(), EventId::new());
        journal.do_send(submit(&writer, append(stream, 1, 0), 1)); // committing
        journal.do_send(submit(&writer, append(stream, 1, 1), 2)); // waiting
        journal.do_send(submit(&writer, append(other, 2, 0), 3)); // another writer
        let (settled, landed) = oneshot::channel();
        journal.do_send(Fence { writer: 1, settled });
        journal.do_send(submit(&writer, append(stream, 1, 2), 4)); // after the fence
        flushed(&journal).await;
        landed.await.unwrap();
        assert_eq!(
            told_in_order(&writer).await,
            vec![
                (1, Ok(Appended::Committed)),
                (2, Err(AppendError::Conflict)),
                (3, Ok(Appended::Committed)),
                (4, Err(AppendError::Conflict)),
            ]
        );
    }

    /// The replacement of a crashed actor waits for the fenced writer's
    /// batch in commit, not for the journal's whole backlog.
    #[actix::test]
    async fn a_fence_is_settled_once_the_writers_committing_batch_is() {
        let journal = slow_journal(JournalSettings {
            max_batch: 1,
            ..JournalSettings::default()
        });
        let writer = Writer::default().start();
        journal.do_send(submit(&writer, append(EventId::new(), 1, 0), 1)); // committing
        // A backlog of others', 50 ms a commit each: 5 s in all.
        for seq in 2..=101 {
            journal.do_send(submit(&writer, append(EventId::new(), seq, 0), seq));
        }
        let (settled, landed) = oneshot::channel();
        journal.do_send(Fence { writer: 1, settled });
        landed.await.unwrap();
        let told = told_in_order(&writer).await;
        assert_eq!(told.first(), Some(&(1, Ok(Appended::Committed))));
        assert!(
            told.len() < 50,
            "the fence waited for the backlog: {} answered",
            told.len()
        );
    }

    #[actix::test]
    async fn every_append_is_answered_exactly_once_even_if_dropped() {
        let writer = Writer::default().start();
        AppendReply::new(writer.clone().recipient(), 1).send(Ok(Appended::Committed));
        drop(AppendReply::new(writer.clone().recipient(), 2));
        assert_eq!(
            writer.send(Told).await.unwrap(),
            vec![
                (1, Ok(Appended::Committed)),
                (2, Err(AppendError::Unavailable))
            ]
        );
    }
}
