//! The registry of live event actors: activates an event's actor on first use
//! (a virtual actor), spreads actors over a pool of arbiter threads, and routes
//! each command to the one actor that owns the event.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use actix::dev::SendError;
use actix::prelude::*;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::oneshot;

use crate::changes::ChangeSink;
use crate::domain::{Command, EventId};
use crate::event_actor::{
    ActorSettings, CommandError, EventActor, Execute, IdempotencyKey, Queued, Reply,
};
use crate::journal::Journal;
use crate::store::EventStore;

#[derive(Clone)]
pub struct EventRegistry(Arc<Inner>);

/// A live actor and how many commands wait in its mailbox.
#[derive(Clone)]
struct Live {
    addr: Addr<EventActor>,
    queued: Arc<AtomicUsize>,
}

struct Inner {
    actors: DashMap<EventId, Live>,
    arbiters: Vec<ArbiterHandle>,
    store: Arc<dyn EventStore>,
    journal: Addr<Journal>,
    changes: Arc<dyn ChangeSink>,
    settings: ActorSettings,
}

impl EventRegistry {
    /// `arbiters` are the threads event actors run on; an event always lands
    /// on the same one.
    pub fn new(
        store: Arc<dyn EventStore>,
        journal: Addr<Journal>,
        changes: Arc<dyn ChangeSink>,
        settings: ActorSettings,
        arbiters: Vec<ArbiterHandle>,
    ) -> Self {
        assert!(
            !arbiters.is_empty(),
            "event actors need at least one arbiter"
        );
        Self(Arc::new(Inner {
            actors: DashMap::new(),
            arbiters,
            store,
            journal,
            changes,
            settings,
        }))
    }

    pub(crate) fn changes(&self) -> &dyn ChangeSink {
        self.0.changes.as_ref()
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
        // the command (passivated or broken), so nothing was decided twice.
        for _ in 0..2 {
            let live = self.activate(event);
            let Some(queued) = Queued::enter(&live.queued, self.0.settings.mailbox_capacity) else {
                metrics::counter!("turnout_mailbox_full_total").increment(1);
                return Err(CommandError::Overloaded);
            };
            let (reply, answer) = oneshot::channel();
            let message = Execute {
                command: command.clone(),
                idempotency: idempotency.clone(),
                request_id: request_id.clone(),
                reply,
                queued,
            };
            if let Err(SendError::Closed(_) | SendError::Full(_)) = live.addr.try_send(message) {
                self.forget(event, &live.addr);
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
        self.0.actors.len()
    }

    fn activate(&self, event: EventId) -> Live {
        match self.0.actors.entry(event) {
            Entry::Occupied(entry) if entry.get().addr.connected() => entry.get().clone(),
            entry => {
                let live = Live {
                    addr: self.spawn(event),
                    queued: Arc::default(),
                };
                match entry {
                    Entry::Occupied(mut e) => {
                        e.insert(live.clone());
                    }
                    Entry::Vacant(e) => {
                        e.insert(live.clone());
                    }
                }
                live
            }
        }
    }

    fn spawn(&self, event: EventId) -> Addr<EventActor> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        event.hash(&mut hasher);
        let arbiter = &self.0.arbiters[hasher.finish() as usize % self.0.arbiters.len()];
        let store = Arc::clone(&self.0.store);
        let journal = self.0.journal.clone();
        let settings = self.0.settings.clone();
        let registry = self.clone();
        EventActor::start_in_arbiter(arbiter, move |ctx| {
            // Bounded by `Queued`, not by actix (see there).
            ctx.set_mailbox_capacity(0);
            EventActor::new(event, store, journal, registry, settings)
        })
    }

    /// Removes an actor, unless a newer one already took its place.
    pub(crate) fn forget(&self, event: EventId, addr: &Addr<EventActor>) {
        self.0
            .actors
            .remove_if(&event, |_, current| &current.addr == addr);
    }
}
