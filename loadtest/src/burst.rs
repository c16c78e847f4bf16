//! How the scenarios send their requests and tally the answers: a burst of
//! joins released at once (`run`, the core of `hot-join` against Turnout and
//! against the row-lock baseline), and requests paced to a schedule or sent
//! flat out (`paced`, for `spread-join` and `mixed`), at most `concurrency`
//! in flight either way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::{Barrier, Semaphore};
use uuid::Uuid;

use crate::invariants::{Answer, Told};
use crate::progress;
use crate::report::latency_histogram;

/// How one join ended.
pub enum JoinResult {
    /// Acknowledged; `told` is what the user was told.
    Acknowledged { kind: String, told: Told },
    /// A definite refusal: it must not have taken effect.
    Refused { kind: String },
    /// No answer (timeout, connection): it may or may not have taken effect.
    Unknown { kind: String },
}

impl JoinResult {
    /// What an answer from `POST /v1/events/{id}/join` means for the checks.
    pub fn of(answer: reqwest::Result<(StatusCode, Value)>) -> Self {
        match answer {
            Ok((status, body)) if status.is_success() => Self::Acknowledged {
                kind: status.as_u16().to_string(),
                told: Answer::of(status, &body).into(),
            },
            Ok((status, _)) => Self::Refused {
                kind: status.as_u16().to_string(),
            },
            Err(e) => Self::Unknown {
                kind: failure_kind(&e).into(),
            },
        }
    }

    /// Files `user` with the acknowledged, the refused or the unanswered,
    /// and returns the outcome's kind ("201", "timeout", …).
    fn file(self, user: Uuid, told: &mut Joiners) -> String {
        match self {
            Self::Acknowledged { kind, told: what } => {
                told.acknowledged.insert(user, what);
                kind
            }
            Self::Refused { kind } => {
                told.refused.insert(user);
                kind
            }
            Self::Unknown { kind } => {
                told.unanswered.insert(user);
                kind
            }
        }
    }
}

/// The users who joined one event, by how their join ended.
#[derive(Debug, Clone, Default)]
pub struct Joiners {
    pub acknowledged: HashMap<Uuid, Told>,
    pub refused: HashSet<Uuid>,
    pub unanswered: HashSet<Uuid>,
}

/// The outcome kind of a request that got no answer.
pub fn failure_kind(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timeout"
    } else {
        "connect"
    }
}

/// What the joins of a run over several events were told, per event.
pub struct Answers(pub Vec<Joiners>);

impl Answers {
    pub fn new(events: usize) -> Self {
        Self(vec![Joiners::default(); events])
    }

    /// Records what `user` was told when joining the `event`th event, and
    /// returns the outcome's kind ("201", "timeout", …).
    pub fn record(&mut self, event: usize, user: Uuid, result: JoinResult) -> String {
        result.file(user, &mut self.0[event])
    }
}

/// What a burst measured and what each user was told.
pub struct Tally {
    pub latency: Histogram<u64>,
    /// Outcome kind → count.
    pub outcomes: BTreeMap<String, u64>,
    pub joiners: Joiners,
    pub elapsed: Duration,
}

/// Runs `join(user, extra)` for every item at once.
pub async fn run<T, F, Fut>(
    items: Vec<(Uuid, T)>,
    concurrency: usize,
    join: F,
) -> anyhow::Result<Tally>
where
    T: Send + 'static,
    F: Fn(Uuid, T) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = JoinResult> + Send,
{
    let gate = Arc::new(Barrier::new(items.len() + 1));
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let bar = progress::bar(items.len(), "joins");
    let mut tasks = Vec::with_capacity(items.len());
    for (user, extra) in items {
        let (join, gate, slots) = (join.clone(), Arc::clone(&gate), Arc::clone(&slots));
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            let _slot = slots.acquire().await.expect("the semaphore stays open");
            let start = Instant::now();
            let result = join(user, extra).await;
            bar.inc(1);
            (user, result, start.elapsed())
        }));
    }
    gate.wait().await;
    let started = Instant::now();
    let mut tally = Tally {
        latency: latency_histogram(),
        outcomes: BTreeMap::new(),
        joiners: Joiners::default(),
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (user, result, took) = task.await?;
        tally.latency.saturating_record(took.as_micros() as u64);
        let kind = result.file(user, &mut tally.joiners);
        *tally.outcomes.entry(kind).or_default() += 1;
    }
    tally.elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok(tally)
}

/// Sends every item (given in the order of their offsets) at its intended
/// offset from the start, or, without one, as soon as one of `concurrency`
/// slots is free (closed model).
/// An item's latency runs from its intended time, queueing included, so a
/// server that falls behind cannot hide it by slowing the sender
/// (coordinated omission corrected, as wrk2 does). Returns each answer with
/// its latency, in the items' order, and how long the run took.
///
/// A paced item's task is spawned at its time, not all up front: a
/// ten-minute run is over a million items, and spawning them all first
/// took the tool seconds, which the first requests, timed from their
/// intended start, counted as the server's (a stall of up to 6.5 s in the
/// first seconds of every long run).
pub async fn paced<T, R, F, Fut>(
    items: Vec<(Option<Duration>, T)>,
    concurrency: usize,
    what: &str,
    send: F,
) -> anyhow::Result<(Vec<(R, Duration)>, Duration)>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = R> + Send,
{
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let bar = progress::bar(items.len(), what);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(items.len());
    for (offset, item) in items {
        let (send, slots, bar) = (send.clone(), Arc::clone(&slots), bar.clone());
        let intended = offset.map(|offset| started + offset);
        if let Some(at) = intended {
            tokio::time::sleep_until(at.into()).await;
        }
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire().await.expect("the semaphore stays open");
            let from = intended.unwrap_or_else(Instant::now);
            let answer = send(item).await;
            let took = from.elapsed();
            bar.inc(1);
            (answer, took)
        }));
    }
    let mut answered = Vec::with_capacity(tasks.len());
    for task in tasks {
        answered.push(task.await?);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok((answered, elapsed))
}
