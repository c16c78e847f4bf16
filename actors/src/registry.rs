//! The registry of live event actors: activates an event's actor on first use
//! (a virtual actor), spreads actors over a pool of arbiter threads, and routes
//! each command to the one actor that owns the event — if this node holds
//! the event's shard; otherwise it answers [`CommandError::NotHere`] and
//! decides nothing.

use std::sync::Arc;

use actix::dev::SendError;
use actix::prelude::*;
use tokio::sync::oneshot;

use crate::changes::ChangeSink;
use crate::domain::{Command, EventId};
use crate::event_actor::{ActorSettings, CommandError, EventActor, Execute, Reply, Retire};
use crate::idempotency::{IdempotencyKey, KeyReplayers, KeysInFlight};
use crate::journal::Journal;
use crate::placement::{ShardId, ShardLease};
use crate::roster::{Live, Queued, Roster};
use crate::shards::HeldShards;
use crate::store::EventStore;
use crate::threads::Threads;

#[derive(Clone)]
pub struct EventRegistry(Arc<Inner>);

struct Inner {
    roster: Arc<Roster<Addr<EventActor>>>,
    threads: Threads,
    store: Arc<dyn EventStore>,
    journal: Addr<Journal>,
    changes: Arc<dyn ChangeSink>,
    settings: ActorSettings,
    shards: Arc<HeldShards>,
    replayers: Arc<KeyReplayers>,
    keys_in_flight: Arc<KeysInFlight>,
}

/// How long a user whose key replayed late has their unknown keys looked
/// up before deciding, and how many such users are watched at once.
const WATCH_REPLAYERS_FOR: std::time::Duration = std::time::Duration::from_secs(600);
const WATCHED_REPLAYERS: usize = 65_536;

impl EventRegistry {
    /// `threads` are the threads event actors run on; an event always lands
    /// on the same one.
    pub fn new(
        store: Arc<dyn EventStore>,
        journal: Addr<Journal>,
        changes: Arc<dyn ChangeSink>,
        settings: ActorSettings,
        threads: Vec<ArbiterHandle>,
        shards: Arc<HeldShards>,
    ) -> Self {
        Self(Arc::new(Inner {
            roster: Arc::default(),
            threads: Threads::new(threads, "event actors"),
            store,
            journal,
            changes,
            settings,
            shards,
            replayers: Arc::new(KeyReplayers::new(WATCH_REPLAYERS_FOR, WATCHED_REPLAYERS)),
            keys_in_flight: Arc::default(),
        }))
    }

    /// Runs a command on its event's actor and waits for the durable outcome.
    pub async fn execute(
        &self,
        event: EventId,
        command: Command,
        idempotency: Option<IdempotencyKey>,
        request_id: Option<String>,
    ) -> Result<Reply, CommandError> {
        // A second try only when the first actor went away before handling
        // the command (passivated, broken or retired), so nothing was
        // decided twice.
        for _ in 0..2 {
            let lease = self
                .0
                .shards
                .lease_for(event)
                .map_err(|_| CommandError::NotHere)?;
            let Some((addr, queued)) = self.enter(event, lease) else {
                metrics::counter!("turnout_mailbox_full_total").increment(1);
                return Err(CommandError::Overloaded);
            };
            let (reply, answer) = oneshot::channel();
            let message = Execute {
                command: command.clone(),
                idempotency: idempotency.clone(),
                request_id: request_id.clone(),
                span: tracing::Span::current(),
                reply,
                queued,
            };
            if let Err(SendError::Closed(_) | SendError::Full(_)) = addr.try_send(message) {
                self.0.roster.forget(event, &addr);
                continue;
            }
            if let Ok(result) = answer.await {
                return result;
            }
        }
        Err(CommandError::Unavailable)
    }

    /// How many event actors are in memory.
    pub fn live_actors(&self) -> usize {
        self.0.roster.len()
    }

    /// Retires every live actor of `shard` (their commands in flight
    /// finish; later ones are answered [`CommandError::NotHere`]) and
    /// resolves once all of them have stopped. Call it after the shard has
    /// been let go of in [`HeldShards`], so no new actor starts meanwhile.
    pub fn retire(&self, shard: ShardId) -> impl Future<Output = ()> + use<> {
        let stopped: Vec<oneshot::Receiver<()>> = self
            .0
            .roster
            .matching(|event| self.0.shards.shard_of(event) == shard)
            .into_iter()
            .map(|addr| {
                let (stopped, on_stop) = oneshot::channel();
                addr.do_send(Retire { stopped });
                on_stop
            })
            .collect();
        async move {
            for on_stop in stopped {
                // Resolves with an error when the actor drops the sender.
                let _ = on_stop.await;
            }
        }
    }

    fn enter(
        &self,
        event: EventId,
        lease: Option<ShardLease>,
    ) -> Option<(Addr<EventActor>, Queued)> {
        self.0.roster.enter(
            event,
            Addr::connected,
            || self.spawn(event, lease),
            self.0.settings.mailbox_capacity,
        )
    }

    fn spawn(&self, event: EventId, lease: Option<ShardLease>) -> Live<Addr<EventActor>> {
        let queued: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let arbiter = self.0.threads.for_key(&event);
        let shell = crate::event_actor::Surroundings {
            store: Arc::clone(&self.0.store),
            journal: self.0.journal.clone(),
            roster: Arc::clone(&self.0.roster),
            changes: Arc::clone(&self.0.changes),
            queued: Arc::clone(&queued),
            settings: self.0.settings.clone(),
            lease,
            held: Arc::clone(&self.0.shards),
            replayers: Arc::clone(&self.0.replayers),
            keys_in_flight: Arc::clone(&self.0.keys_in_flight),
        };
        let addr = EventActor::start_in_arbiter(arbiter, move |ctx| {
            // Bounded by `Queued`, not by actix (see there).
            ctx.set_mailbox_capacity(0);
            EventActor::new(event, shell)
        });
        Live { addr, queued }
    }
}
