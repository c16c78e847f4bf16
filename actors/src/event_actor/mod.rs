//! The EventActor: one per event, the only writer of that event's state.
//!
//! A thin shell around `decide`/`evolve`: it decides each command against its
//! in-memory state (including facts not yet durable, so a burst of joins is
//! decided without waiting), hands the facts to the journal, and answers the
//! caller only when the journal reports them committed. If a commit fails, the
//! actor fails everything decided on top of it, leaves the registry and stops;
//! the next command activates a fresh actor that rehydrates from the store.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::oneshot;

use crate::changes::{ChangeSink, EventChange};
use crate::domain::{
    Command, DomainEvent, EventId, EventState, Membership, Rejection, UserId, decide, evolve,
    waitlist_moves,
};
use crate::idempotency::{
    Answer, Given, IdempotencyKey, KeyInUse, KeyMemory, KeyReplayers, KeysInFlight, Recalled,
};
use crate::in_flight::{Flight, InFlight};
use crate::journal::{AppendDone, AppendError, AppendReply, Appended, Fence, Journal, Submit};
use crate::placement::ShardLease;
use crate::roster::{Queued, Roster};
use crate::shards::HeldShards;
use crate::store::{Append, EventStore, EventSummary, IdempotencyRecord, StoreError};

/// How long an actor remembers a committed idempotency key: a client's retry
/// comes well within it, and a later one is answered from the stored keys.
const REMEMBER_KEYS_FOR: Duration = Duration::from_secs(60);

/// Stored-key lookups one actor runs at once: a client sending commands
/// under new keys must not fill the database's pool with them.
const MAX_LOOKUPS: usize = 16;

/// How soon an offer deadline that fell due while the lease had lapsed is
/// looked at again.
const LAPSED_LEASE_RETRY: Duration = Duration::from_millis(100);

/// Tuning for every event actor.
#[derive(Debug, Clone)]
pub struct ActorSettings {
    /// Commands queued for one event beyond this are refused with 503.
    pub mailbox_capacity: usize,
    /// An actor with nothing to do for this long leaves memory.
    pub idle_timeout: Duration,
    /// A snapshot is written after this many facts — or, for a big event,
    /// after as many facts as it has members, so writing snapshots costs
    /// O(1) per fact and a reload replays at most about that many.
    pub snapshot_every: u64,
    /// How long idempotency records are kept.
    pub idempotency_ttl: chrono::Duration,
    /// How far ahead of an offer's deadline the server's sweep is sure to
    /// have woken its event: an idle actor whose next deadline is further
    /// off leaves memory, as one holding no offer does. `None`: nothing
    /// wakes it, so an actor holding offers stays until they pass.
    pub offers_woken_within: Option<Duration>,
}

impl Default for ActorSettings {
    fn default() -> Self {
        Self {
            mailbox_capacity: 10_000,
            idle_timeout: Duration::from_secs(300),
            snapshot_every: 500,
            idempotency_ttl: chrono::Duration::hours(24),
            offers_woken_within: None,
        }
    }
}

/// What a successful command leaves behind.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// False when the command was already in effect (joining twice,
    /// publishing a published event): nothing new was recorded.
    pub changed: bool,
    pub summary: EventSummary,
    /// The acting user's membership after a join or leave.
    pub membership: Option<Membership>,
}

impl Outcome {
    /// What a keyed command answers, now and on a replay.
    pub fn answer(&self) -> Answer {
        Answer {
            changed: self.changed,
            membership: self.membership,
        }
    }
}

/// Why a command did not succeed. Serialisable: a command forwarded to the
/// node holding its event comes back as one of these or a [`Reply`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum CommandError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The event's queue (or the journal's) is full, or its stored-key
    /// lookups are at their limit: retry shortly.
    #[error("the event is busy; retry shortly")]
    Overloaded,
    /// Nothing was acknowledged: the store failed, or did not answer in
    /// time.
    #[error("the event is temporarily unavailable; retry shortly")]
    Unavailable,
    /// Nothing was acknowledged: the event's actor is reloading its state,
    /// because a decision it rested on did not stand (another writer's
    /// version, an idempotency key answered before) or it panicked. The
    /// store answered, so this says nothing of its health (the write
    /// breaker does not count it).
    #[error("the event is reloading; retry shortly")]
    Interrupted,
    #[error("this Idempotency-Key was already used for a different request")]
    KeyReused,
    /// The key's command on another event is still in flight: nothing was
    /// decided for this one.
    #[error("a request under this Idempotency-Key is still in progress; retry once it is answered")]
    KeyInUse,
    /// This node does not hold the event's shard (any more): nothing was
    /// decided here, and the command may go to the node that holds it.
    #[error("the event is held by another node")]
    NotHere,
}

/// A command's answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Decided now (or already in effect), and durable.
    Done(Outcome),
    /// Answered before under the same idempotency key: that answer again,
    /// with no second effect.
    Replayed(Answer),
}

impl From<AppendError> for CommandError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Overloaded => CommandError::Overloaded,
            AppendError::Conflict => CommandError::Interrupted,
            AppendError::Unavailable => CommandError::Unavailable,
            AppendError::KeyReused => CommandError::KeyReused,
            AppendError::LeaseLost => CommandError::NotHere,
        }
    }
}

pub type CommandReply = oneshot::Sender<Result<Reply, CommandError>>;

/// A command for one event.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Execute {
    pub command: Command,
    pub idempotency: Option<IdempotencyKey>,
    pub request_id: Option<String>,
    /// The caller's span (its request's): the command's own is its child.
    pub span: tracing::Span,
    pub reply: CommandReply,
    pub queued: Queued,
}

/// A caller waiting for an append, with the answer it gets if the append
/// commits. `keyed` callers used the append's idempotency key.
struct Caller {
    reply: CommandReply,
    /// Given once the flight commits: an outcome, or a refusal decided on
    /// the state the flight's facts made.
    answer: Result<Reply, CommandError>,
    keyed: bool,
}

impl Caller {
    /// Nothing in flight to wait on: the answer goes out now.
    fn answer_now(self) {
        let _ = self.reply.send(self.answer);
    }
}

/// What an event actor is given by the registry that starts it.
pub(crate) struct Surroundings {
    pub store: Arc<dyn EventStore>,
    pub journal: Addr<Journal>,
    /// Where it leaves when it stops.
    pub roster: Arc<Roster<Addr<EventActor>>>,
    /// Where its committed changes go.
    pub changes: Arc<dyn ChangeSink>,
    /// Commands waiting in its mailbox (see [`Queued`]).
    pub queued: Arc<AtomicUsize>,
    pub settings: ActorSettings,
    /// The shard lease it writes under, in a cluster.
    pub lease: Option<ShardLease>,
    /// The shards this node holds now, to tell when its lease is gone.
    pub held: Arc<HeldShards>,
    /// Users whose unknown keys are looked up before deciding.
    pub replayers: Arc<KeyReplayers>,
    /// The node's keys in flight, which one event at a time may hold.
    pub keys_in_flight: Arc<KeysInFlight>,
}

/// The actor's shard is being handed to another node: it takes no new
/// command, finishes what is in flight and stops; `stopped` resolves (its
/// sender is dropped) when it has.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire {
    pub stopped: oneshot::Sender<()>,
}

pub struct EventActor {
    id: EventId,
    /// This incarnation's writer id, unique in the process.
    writer: u64,
    state: Option<EventState>,
    store: Arc<dyn EventStore>,
    journal: Addr<Journal>,
    roster: Arc<Roster<Addr<EventActor>>>,
    changes: Arc<dyn ChangeSink>,
    /// Commands waiting in this actor's mailbox (see [`Queued`]).
    queued: Arc<AtomicUsize>,
    settings: ActorSettings,
    lease: Option<ShardLease>,
    held: Arc<HeldShards>,
    /// Set by [`Retire`]: who waits for this actor to stop.
    retired: Option<Vec<oneshot::Sender<()>>>,
    /// Keyed by submission order; the journal commits in that order.
    in_flight: InFlight<Caller>,
    /// Keys in flight, and those committed in the last
    /// [`REMEMBER_KEYS_FOR`] (at most the mailbox capacity); older ones are
    /// caught by the journal's check of the stored keys.
    keys: KeyMemory,
    replayers: Arc<KeyReplayers>,
    keys_in_flight: Arc<KeysInFlight>,
    facts_since_snapshot: u64,
    last_active: Instant,
    /// Set after a failed commit or load: the state can no longer be trusted.
    broken: bool,
    /// Stored-key lookups under way for refused commands and for watched
    /// users' keys.
    key_lookups: usize,
    /// The timer for the earliest offer deadline, and that deadline.
    deadline: Option<(DateTime<Utc>, SpawnHandle)>,
}

impl EventActor {
    pub(crate) fn new(id: EventId, given: Surroundings) -> Self {
        static WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self {
            id,
            writer: WRITERS.fetch_add(1, Ordering::Relaxed),
            state: None,
            store: given.store,
            journal: given.journal,
            roster: given.roster,
            changes: given.changes,
            queued: given.queued,
            lease: given.lease,
            held: given.held,
            retired: None,
            keys: KeyMemory::new(given.settings.mailbox_capacity, REMEMBER_KEYS_FOR),
            replayers: given.replayers,
            keys_in_flight: given.keys_in_flight,
            settings: given.settings,
            in_flight: InFlight::default(),
            facts_since_snapshot: 0,
            last_active: Instant::now(),
            broken: false,
            key_lookups: 0,
            deadline: None,
        }
    }

    /// Out of the roster at once — a command for the event from now on
    /// finds no actor here and goes to the shard's holder — then stops once
    /// nothing is in flight; `stopped` is told when it has.
    fn retire(&mut self, stopped: Option<oneshot::Sender<()>>, ctx: &mut Context<Self>) {
        self.roster.forget(self.id, &ctx.address());
        let waiting = self.retired.get_or_insert_default();
        waiting.extend(stopped);
        if self.in_flight.is_empty() {
            ctx.stop();
        }
    }

    fn execute(&mut self, msg: Execute, ctx: &mut Context<Self>) {
        let Execute {
            command,
            idempotency,
            request_id,
            span,
            reply,
            queued,
        } = msg;
        drop(queued);
        // An offer whose hold ran out passes on before anything else is
        // decided: nobody may accept it, nor be measured against it. (The
        // armed timer holds the earliest deadline: no scan of the offers.)
        if !matches!(command, Command::ExpireOffers { .. })
            && let Some((deadline, _)) = self.deadline
            && deadline <= command.at()
        {
            self.expire_offers(command.at(), ctx);
        }
        self.run(command, idempotency, request_id, span, reply, false, ctx);
    }

    /// The event's own clock: offers due by `at` pass on. Nobody waits for
    /// the answer; a failed commit makes the actor leave, and the next
    /// command (or the server's sweep of due offers) loads it again.
    fn expire_offers(&mut self, at: DateTime<Utc>, ctx: &mut Context<Self>) {
        let (reply, _unheard) = oneshot::channel();
        self.run(
            Command::ExpireOffers { at },
            None,
            None,
            tracing::Span::none(),
            reply,
            false,
            ctx,
        );
    }

    /// Whether an offer's deadline is too near for this actor to leave:
    /// nothing but its own timer would act on it in time. (An offer may be
    /// held for days; the actor need not be, for the sweep wakes it.)
    fn keeps_an_offers_time(&self) -> bool {
        let Some(next) = self.state.as_ref().and_then(EventState::next_deadline) else {
            return false;
        };
        self.settings.offers_woken_within.is_none_or(|within| {
            chrono::Duration::from_std(within).is_ok_and(|within| next <= Utc::now() + within)
        })
    }

    /// Keeps one timer, for the earliest offer deadline.
    fn arm_deadline(&mut self, ctx: &mut Context<Self>) {
        let next = self.state.as_ref().and_then(EventState::next_deadline);
        if self.deadline.as_ref().map(|(at, _)| *at) == next {
            return;
        }
        if let Some((_, timer)) = self.deadline.take() {
            ctx.cancel_future(timer);
        }
        let Some(at) = next else { return };
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        self.deadline = Some((at, Self::deadline_timer(at, wait, ctx)));
    }

    /// Fires `wait` from now for the deadline `at`.
    fn deadline_timer(at: DateTime<Utc>, wait: Duration, ctx: &mut Context<Self>) -> SpawnHandle {
        ctx.run_later(wait, move |actor, ctx| {
            if actor.broken || actor.retired.is_some() {
                actor.deadline = None;
                return;
            }
            if actor.lease_lapsed() {
                // Nothing is decided until a renewal lands. The deadline
                // stays armed, so a command meanwhile finds it due, and is
                // looked at again shortly: dropped, it would wait for the
                // next command or the server's sweep.
                let again = Self::deadline_timer(at, LAPSED_LEASE_RETRY, ctx);
                actor.deadline = Some((at, again));
                return;
            }
            actor.deadline = None;
            // Not before the deadline, whatever the clock's grain.
            let now = Utc::now().trunc_subsecs(6).max(at);
            actor.expire_offers(now, ctx);
        })
    }

    /// Decides `command` and hands its append to the journal, or answers
    /// it from what is known. `looked_up`: its key was just looked up in
    /// the store and not found.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        command: Command,
        idempotency: Option<IdempotencyKey>,
        request_id: Option<String>,
        caller: tracing::Span,
        reply: CommandReply,
        looked_up: bool,
        ctx: &mut Context<Self>,
    ) {
        // Lives until the command's append has committed (it travels with
        // the append and its flight), so the span covers the wait.
        let span = tracing::info_span!(
            parent: &caller,
            "event.command",
            otel.name = command.trace_name(),
            event_id = %self.id,
        );
        self.last_active = Instant::now();
        if self.retired.is_none() && !self.holds_its_shard() {
            if self.lease_lapsed() {
                // Still this node's shard at this actor's epoch, only not
                // believed current until a renewal lands: no answer now,
                // but no stepping aside either. Out of the roster, a second
                // actor could load the event beside the appends this one
                // has in flight, which still commit under the same lease,
                // and answer from a state without them.
                let _ = reply.send(Err(CommandError::NotHere));
                return;
            }
            // Activated just as its shard was handed over, or the shard was
            // lost: it may not answer, not even "nothing changed".
            self.retire(None, ctx);
        }
        if self.retired.is_some() {
            let _ = reply.send(Err(CommandError::NotHere));
            return;
        }
        if self.broken {
            let _ = reply.send(Err(CommandError::Interrupted));
            return;
        }
        if let Some(idempotency) = &idempotency {
            match self.keys.lookup(&idempotency.id()) {
                Some(Recalled::InFlight { seq, given }) => {
                    match replay(given, &idempotency.fingerprint) {
                        Ok(answer) => {
                            let waiting = Caller {
                                reply,
                                answer: Ok(answer),
                                keyed: true,
                            };
                            if let Err(unwaited) = self.in_flight.wait_on(seq, waiting) {
                                unwaited.answer_now();
                            }
                        }
                        Err(refused) => {
                            let _ = reply.send(Err(refused));
                        }
                    }
                    return;
                }
                Some(Recalled::Committed(given)) => {
                    let _ = reply.send(replay(given, &idempotency.fingerprint));
                    return;
                }
                None if !looked_up && self.replayers.watching(idempotency.user, Instant::now()) => {
                    let key = idempotency.clone();
                    return self
                        .look_up_before_deciding(command, key, request_id, caller, reply, ctx);
                }
                None => {}
            }
        }
        // Held until the append settles (it travels in the flight), or
        // dropped with a command that writes nothing.
        let claim = match &idempotency {
            Some(key) => match self.keys_in_flight.claim(key.id(), self.id) {
                Ok(claim) => Some(claim),
                Err(KeyInUse) => {
                    let _ = reply.send(Err(CommandError::KeyInUse));
                    return;
                }
            },
            None => None,
        };

        let decided = std::panic::catch_unwind(AssertUnwindSafe(|| {
            #[cfg(test)]
            if let Command::Join { user, .. } = &command
                && PANIC_ON_JOIN_OF.lock().unwrap().contains(user)
            {
                panic!("injected by a test");
            }
            decide(self.state.as_ref(), &command)
        }));
        let facts = match decided {
            Ok(Ok(facts)) => facts,
            Ok(Err(rejection)) => {
                metrics::counter!("turnout_commands_total", "outcome" => "rejected").increment(1);
                if self.state.is_none() {
                    // No such event, so no key can have been answered for
                    // it: no lookup, and the actor leaves at once.
                    let _ = reply.send(Err(rejection.into()));
                    return self.stop_if_unwanted(ctx);
                }
                return match idempotency {
                    Some(key) if !looked_up => {
                        self.refuse_unless_answered(key, rejection.into(), reply, ctx)
                    }
                    // Looked up just before: no answer is stored for it.
                    _ => self.answer_after_in_flight(reply, Err(rejection.into())),
                };
            }
            Err(_) => return self.crash(reply, ctx),
        };

        let base_version = self.state.as_ref().map_or(0, |s| s.version);
        let moves = match &self.state {
            Some(state) if !facts.is_empty() => waitlist_moves(state, &facts),
            _ => Vec::new(),
        };
        let state = self.state.take();
        let folded =
            std::panic::catch_unwind(AssertUnwindSafe(|| facts.iter().fold(state, evolve)));
        let Ok(Some(state)) = folded else {
            return self.crash(reply, ctx);
        };

        let outcome = Outcome {
            changed: !facts.is_empty(),
            summary: EventSummary::from(&state),
            membership: command.member().and_then(|u| state.membership(u)),
        };
        self.facts_since_snapshot += facts.len() as u64;
        let members = state.parties() as u64;
        let snapshot_due = self.facts_since_snapshot >= self.settings.snapshot_every.max(members);
        self.state = Some(state);
        self.arm_deadline(ctx);

        if facts.is_empty() && idempotency.is_none() {
            return self.answer_after_in_flight(reply, Ok(Reply::Done(outcome)));
        }
        // Taken only for an append with facts: one without (a keyed
        // command that changed nothing) may be answered from its stored key
        // and write nothing, and the snapshot would be lost with the count.
        let snapshot = match snapshot_due && !facts.is_empty() {
            true => {
                self.facts_since_snapshot = 0;
                self.state.clone()
            }
            false => None,
        };

        let now = Utc::now();
        let seq = self.in_flight.next_seq();
        let record = idempotency.map(|key| {
            self.keys.sent(
                key.id(),
                seq,
                Given {
                    fingerprint: key.fingerprint.clone(),
                    answer: outcome.answer(),
                },
            );
            IdempotencyRecord {
                user: key.user,
                key: key.key,
                fingerprint: key.fingerprint,
                answer: outcome.answer(),
                created_at: now,
                expires_at: now + self.settings.idempotency_ttl,
            }
        });
        let append = Append {
            stream: self.id,
            writer: self.writer,
            lease: self.lease,
            base_version,
            facts: facts.clone(),
            summary: outcome.summary.clone(),
            snapshot,
            idempotency: record,
            request_id: request_id.clone(),
            span: span.clone(),
        };
        self.in_flight.sent(Flight {
            facts,
            moves,
            request_id,
            span,
            callers: vec![Caller {
                reply,
                answer: Ok(Reply::Done(outcome)),
                keyed: claim.is_some(),
            }],
            key: claim,
        });
        self.journal.do_send(Submit {
            append,
            reply: AppendReply::new(ctx.address().recipient(), seq),
        });
    }

    fn committed(
        &mut self,
        seq: u64,
        result: Result<Appended, AppendError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(flight) = self.in_flight.settled(seq) else {
            return;
        };
        match result {
            Ok(Appended::Committed) => {
                if let Some(claim) = &flight.key {
                    self.keys.committed(claim.key(), Instant::now());
                }
                flight.span.in_scope(|| log_facts(self.id, &flight));
                if !flight.facts.is_empty()
                    && let Some(Caller {
                        answer: Ok(Reply::Done(outcome)),
                        ..
                    }) = flight.callers.first()
                {
                    self.changes.committed(Arc::new(EventChange {
                        summary: outcome.summary.clone(),
                        facts: flight.facts,
                        moves: flight.moves,
                        committed_at: Utc::now(),
                    }));
                }
                for caller in flight.callers {
                    if caller.answer.is_ok() {
                        metrics::counter!("turnout_commands_total", "outcome" => "committed")
                            .increment(1);
                    }
                    let _ = caller.reply.send(caller.answer);
                }
            }
            Ok(Appended::Replayed(answer)) => {
                if let Some(claim) = &flight.key {
                    self.keys.replayed(claim.key(), answer, Instant::now());
                }
                self.answer_unwritten(flight, Ok(Reply::Replayed(answer)), ctx);
            }
            Err(AppendError::KeyReused) => {
                if let Some(claim) = &flight.key {
                    self.keys.refused(claim.key());
                }
                self.answer_unwritten(flight, Err(CommandError::KeyReused), ctx)
            }
            Err(error) => {
                let error = CommandError::from(error);
                // Everything decided after this append stood on it.
                let later = self.in_flight.failed(seq);
                for flight in std::iter::once(flight).chain(later) {
                    for caller in flight.callers {
                        metrics::counter!("turnout_commands_total", "outcome" => "failed")
                            .increment(1);
                        let _ = caller.reply.send(Err(error.clone()));
                    }
                }
                self.keys.failed_from(seq);
                tracing::warn!(event_id = %self.id, "commit failed; the actor leaves and the next command reloads");
                self.leave(ctx);
            }
        }
        if (self.broken || self.retired.is_some()) && self.in_flight.is_empty() {
            if self.broken {
                self.roster.forget(self.id, &ctx.address());
            }
            ctx.stop();
        }
    }

    /// The journal did not write this append because its idempotency key was
    /// answered before. Keyed callers get `keyed`; if the append carried
    /// facts, this actor applied them in memory, so it must reload.
    fn answer_unwritten(
        &mut self,
        flight: Flight<Caller>,
        keyed: Result<Reply, CommandError>,
        ctx: &mut Context<Self>,
    ) {
        let phantom = !flight.facts.is_empty();
        for caller in flight.callers {
            let answer = match (caller.keyed, phantom) {
                (true, _) => keyed.clone(),
                (false, true) => Err(CommandError::Interrupted),
                (false, false) => caller.answer,
            };
            let _ = caller.reply.send(answer);
        }
        if phantom {
            tracing::info!(event_id = %self.id, "an old idempotency key replayed a join; reloading");
            if let Some(claim) = &flight.key {
                self.replayers.replayed_late(claim.key().0, Instant::now());
            }
            self.leave(ctx);
        }
    }

    /// An answer that writes nothing may still rest on facts in flight (a
    /// refusal because of a cancellation not yet committed): it waits for
    /// them, and if they fail the caller hears of the failure instead.
    fn answer_after_in_flight(&mut self, reply: CommandReply, answer: Result<Reply, CommandError>) {
        let caller = Caller {
            reply,
            answer,
            keyed: false,
        };
        if let Err(unwaited) = self.in_flight.wait_on_latest(caller) {
            unwaited.answer_now();
        }
    }

    /// A key this actor does not know may still have an answer in the store
    /// (given before a restart, or remembered no longer): that answer stands,
    /// not the refusal the command would get now.
    fn refuse_unless_answered(
        &mut self,
        key: IdempotencyKey,
        refusal: CommandError,
        reply: CommandReply,
        ctx: &mut Context<Self>,
    ) {
        // Beyond a few lookups at once the key's earlier answer is not
        // known: "busy, try again", not a refusal that may contradict it
        // (nor "unavailable", which would count against the database).
        if self.key_lookups >= MAX_LOOKUPS {
            let _ = reply.send(Err(CommandError::Overloaded));
            return;
        }
        self.look_up(key.user, key.key.clone(), ctx, move |actor, stored, _| {
            actor.refuse_or_replay(key, refusal, stored, reply);
        });
    }

    /// A key of a user [`KeyReplayers`] watches, unknown here: looked up
    /// before anything is decided for it, so an answer given before stands
    /// without facts decided in memory that a reload would have to undo.
    fn look_up_before_deciding(
        &mut self,
        command: Command,
        key: IdempotencyKey,
        request_id: Option<String>,
        caller: tracing::Span,
        reply: CommandReply,
        ctx: &mut Context<Self>,
    ) {
        if self.key_lookups >= MAX_LOOKUPS {
            let _ = reply.send(Err(CommandError::Overloaded));
            return;
        }
        self.look_up(
            key.user,
            key.key.clone(),
            ctx,
            move |actor, stored, ctx| match stored {
                Ok(Some(given)) => actor.replay_stored(key, given, reply),
                Ok(None) => actor.run(command, Some(key), request_id, caller, reply, true, ctx),
                Err(_) => {
                    let _ = reply.send(Err(CommandError::Unavailable));
                }
            },
        );
    }

    /// Reads the answer stored under `user`'s key `wanted`, then `then`
    /// with it; the actor does not passivate while a lookup is under way.
    fn look_up(
        &mut self,
        user: UserId,
        wanted: String,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, Result<Option<Given>, StoreError>, &mut Context<Self>) + 'static,
    ) {
        self.key_lookups += 1;
        let store = Arc::clone(&self.store);
        ctx.spawn(
            async move { store.stored_answer(user, &wanted).await }
                .into_actor(self)
                .map(move |stored, actor, ctx| {
                    actor.key_lookups -= 1;
                    then(actor, stored, ctx);
                }),
        );
    }

    /// `key` was answered before, as the store says: that answer (or the
    /// refusal of another use of the key) stands, and is remembered.
    fn replay_stored(&mut self, key: IdempotencyKey, given: Given, reply: CommandReply) {
        let _ = reply.send(replay(&given, &key.fingerprint));
        self.keys.remember(key.id(), given, Instant::now());
    }

    fn refuse_or_replay(
        &mut self,
        key: IdempotencyKey,
        refusal: CommandError,
        stored: Result<Option<Given>, StoreError>,
        reply: CommandReply,
    ) {
        match stored {
            Ok(Some(given)) => self.replay_stored(key, given, reply),
            // Facts the refusal rests on may still be in flight; had
            // they failed meanwhile, the state it was decided on is
            // gone with them.
            Ok(None) if self.broken => {
                let _ = reply.send(Err(CommandError::Interrupted));
            }
            // The shard moved during the lookup: the refusal was decided
            // on a state another node now writes on.
            Ok(None) if !self.holds_its_shard() => {
                let _ = reply.send(Err(CommandError::NotHere));
            }
            Ok(None) => self.answer_after_in_flight(reply, Err(refusal)),
            Err(_) => {
                let _ = reply.send(Err(CommandError::Unavailable));
            }
        }
    }

    /// Whether this node still holds the actor's shard at the epoch the
    /// actor was activated with (always, outside a cluster).
    fn holds_its_shard(&self) -> bool {
        self.lease
            .is_none_or(|lease| self.held.epoch(lease.shard) == Some(lease.epoch))
    }

    /// Whether the node still holds the shard at this actor's epoch, its
    /// lease only past the time it is believed until (a renewal is late):
    /// the database fences nothing of this actor's meanwhile.
    fn lease_lapsed(&self) -> bool {
        !self.holds_its_shard()
            && self
                .lease
                .is_some_and(|lease| self.held.believed(lease.shard) == Some(lease.epoch))
    }

    /// A panic in the domain: the state may be half-changed, so drop it.
    fn crash(&mut self, reply: CommandReply, ctx: &mut Context<Self>) {
        tracing::error!(event_id = %self.id, "event actor panicked; restarting from the store");
        metrics::counter!("turnout_actor_panics_total").increment(1);
        let _ = reply.send(Err(CommandError::Interrupted));
        // The changes of the appends abandoned here, to be told if they
        // land: their callers hear 503 (the outcome is unknown), but the
        // node's caches, hubs and feeds follow what is committed.
        let mut unannounced = Vec::new();
        for flight in self.in_flight.abandon() {
            if let Some(Caller {
                answer: Ok(Reply::Done(outcome)),
                ..
            }) = flight.callers.first()
                && !flight.facts.is_empty()
            {
                unannounced.push(EventChange {
                    summary: outcome.summary.clone(),
                    facts: flight.facts,
                    moves: flight.moves,
                    // Its commit was under way at the crash: as near as is
                    // known.
                    committed_at: Utc::now(),
                });
            }
            for caller in flight.callers {
                let _ = caller.reply.send(Err(CommandError::Interrupted));
            }
        }
        self.keys.fail_all();
        // Appends of this actor still waiting in the journal must not share
        // a batch with those of the actor that replaces it; those already in
        // the batch being committed still land. Until they have, this actor
        // stays in the roster and holds the commands sent to it, which the
        // registry hands to a fresh actor once it stops: a replacement
        // loaded before them would answer from a state without them (tell
        // a member they are none) until its first write.
        self.broken = true;
        self.state = None;
        let (settled, landed) = oneshot::channel();
        self.journal.do_send(Fence {
            writer: self.writer,
            settled,
        });
        let (store, id) = (Arc::clone(&self.store), self.id);
        let landed = async move {
            let _ = landed.await;
            landed_of(&*store, id, unannounced).await
        };
        ctx.wait(landed.into_actor(self).map(|changes, actor, ctx| {
            // Told before the actor leaves: its replacement, which may
            // announce later changes, starts only after that.
            for change in changes {
                actor.changes.committed(Arc::new(change));
            }
            actor.leave(ctx);
            ctx.stop();
        }));
    }

    /// Stops once nothing is in flight or queued: an idle actor, or one for
    /// an id that names no event (a client sending made-up ids must not
    /// leave an actor behind for each).
    fn stop_if_unwanted(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight.is_empty()
            && self.key_lookups == 0
            && self
                .roster
                .forget_if_unwanted(self.id, &ctx.address(), &self.queued)
        {
            ctx.stop();
        }
    }

    /// Stops taking commands; the registry activates a fresh actor next
    /// time. Not before its appends still in flight have settled: a
    /// refusal (`Overloaded`) can overtake an earlier append's commit, and
    /// a replacement loaded before that lands would answer without it (the
    /// last of them to settle takes the actor out of the roster).
    fn leave(&mut self, ctx: &mut Context<Self>) {
        self.broken = true;
        self.state = None;
        if self.in_flight.is_empty() {
            self.roster.forget(self.id, &ctx.address());
        }
    }
}

/// A remembered answer for a request under the same key, or the refusal of
/// a key used for another request.
fn replay(given: &Given, fingerprint: &str) -> Result<Reply, CommandError> {
    given
        .replay_for(fingerprint)
        .map(Reply::Replayed)
        .ok_or(CommandError::KeyReused)
}

/// One log line per business fact, after it is durable, and the offers
/// counted.
fn log_facts(event_id: EventId, flight: &Flight<Caller>) {
    let request_id = flight.request_id.as_deref().unwrap_or("-");
    for fact in &flight.facts {
        let offer = match fact {
            DomainEvent::Offered { .. } => Some("offered"),
            DomainEvent::OfferAccepted { .. } => Some("accepted"),
            DomainEvent::OfferDeclined { .. } => Some("declined"),
            DomainEvent::OfferExpired { .. } => Some("expired"),
            _ => None,
        };
        if let Some(outcome) = offer {
            metrics::counter!("turnout_offers_total", "outcome" => outcome).increment(1);
        }
        match fact.party() {
            Some(party) => tracing::info!(
                target: "turnout::facts",
                %event_id,
                user_id = %party.user,
                seats = party.seats.get(),
                request_id,
                "{}",
                fact.what()
            ),
            None => {
                tracing::info!(target: "turnout::facts", %event_id, request_id, "{}", fact.what())
            }
        }
    }
}

impl Actor for EventActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::gauge!("turnout_live_actors").increment(1.0);
        let store = Arc::clone(&self.store);
        let id = self.id;
        // `wait` holds the mailbox until the state is back.
        ctx.wait(
            async move {
                let rehydration = store.load(id).await?;
                let replayed = rehydration.facts.len() as u64;
                Ok::<_, StoreError>((rehydration.into_state()?, replayed))
            }
            .into_actor(self)
            .map(|loaded, actor, ctx| match loaded {
                Ok((state, replayed)) => {
                    actor.state = state;
                    // The facts past the snapshot count towards the
                    // next one: an event whose actors each live for
                    // fewer than `snapshot_every` facts still gets
                    // snapshots, and a load replays a bounded tail.
                    actor.facts_since_snapshot = replayed;
                    // A deadline that passed while nobody held the
                    // event fires at once.
                    actor.arm_deadline(ctx);
                }
                Err(error) => {
                    tracing::error!(event_id = %actor.id, %error, "could not rehydrate event");
                    actor.leave(ctx);
                    ctx.stop();
                }
            }),
        );
        let idle = self.settings.idle_timeout;
        ctx.run_interval(
            (idle / 4).max(Duration::from_millis(50)),
            move |actor, ctx| {
                actor.keys.let_go_of_old(Instant::now());
                if actor.last_active.elapsed() >= idle && !actor.keeps_an_offers_time() {
                    tracing::debug!(event_id = %actor.id, "passivating idle event actor");
                    actor.stop_if_unwanted(ctx);
                }
            },
        );
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        metrics::gauge!("turnout_live_actors").decrement(1.0);
    }
}

impl Handler<Execute> for EventActor {
    type Result = ();

    fn handle(&mut self, msg: Execute, ctx: &mut Self::Context) {
        self.execute(msg, ctx);
    }
}

impl Handler<Retire> for EventActor {
    type Result = ();

    fn handle(&mut self, msg: Retire, ctx: &mut Self::Context) {
        self.retire(Some(msg.stopped), ctx);
    }
}

impl Handler<AppendDone> for EventActor {
    type Result = ();

    fn handle(&mut self, done: AppendDone, ctx: &mut Self::Context) {
        self.committed(done.seq, done.result, ctx);
    }
}

/// Of a crashed actor's `changes`, those whose facts the log holds at their
/// versions: they landed. (A version may hold another writer's facts
/// instead: a node whose lease lapsed has its batch refused once another
/// took the shard.) Nothing is told of a change the store does not answer
/// for within a few seconds: the actor holds its event's commands while it
/// asks.
async fn landed_of(
    store: &dyn EventStore,
    stream: EventId,
    changes: Vec<EventChange>,
) -> Vec<EventChange> {
    let (Some(after), Some(through)) = (
        changes.iter().map(EventChange::base).min(),
        changes.iter().map(|c| c.summary.version).max(),
    ) else {
        return changes;
    };
    let read = store.logged_facts(stream, after, through);
    let Ok(Ok(logged)) = tokio::time::timeout(Duration::from_secs(5), read).await else {
        return Vec::new();
    };
    // One at a time: a fact that will not decode leaves out only the
    // change it belongs to.
    let logged: Vec<Option<DomainEvent>> = logged.into_iter().map(|f| f.decode().ok()).collect();
    changes
        .into_iter()
        .filter(|change| {
            let from = (change.base() - after) as usize;
            let to = (change.summary.version - after) as usize;
            logged.get(from..to).is_some_and(|facts| {
                facts.len() == change.facts.len()
                    && facts
                        .iter()
                        .zip(&change.facts)
                        .all(|(logged, ours)| logged.as_ref() == Some(ours))
            })
        })
        .collect()
}

#[cfg(test)]
/// A join by one of these users panics inside the actor: fault injection
/// for tests.
pub(crate) static PANIC_ON_JOIN_OF: std::sync::Mutex<Vec<crate::domain::UserId>> =
    std::sync::Mutex::new(Vec::new());

#[cfg(test)]
mod tests;
