//! The registry of live event actors: activates an event's actor on first use
//! (a virtual actor), spreads actors over a pool of arbiter threads, and routes
//! each command to the one actor that owns the event.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
            let Some((addr, queued)) = self.enter(event) else {
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
            if let Err(SendError::Closed(_) | SendError::Full(_)) = addr.try_send(message) {
                self.forget(event, &addr);
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

    /// Activates the event's actor and takes a place in its mailbox, both
    /// under the entry's lock, so an actor leaving through
    /// [`EventRegistry::forget_if_unwanted`] never strands a command: a
    /// caller has either taken its place already or finds no actor.
    fn enter(&self, event: EventId) -> Option<(Addr<EventActor>, Queued)> {
        let live = match self.0.actors.entry(event) {
            Entry::Occupied(entry) if entry.get().addr.connected() => entry.into_ref(),
            Entry::Occupied(mut entry) => {
                entry.insert(self.spawn(event));
                entry.into_ref()
            }
            Entry::Vacant(entry) => entry.insert(self.spawn(event)),
        };
        let queued = Queued::enter(&live.queued, self.0.settings.mailbox_capacity)?;
        Some((live.addr.clone(), queued))
    }

    fn spawn(&self, event: EventId) -> Live {
        let queued: Arc<AtomicUsize> = Arc::default();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        event.hash(&mut hasher);
        let arbiter = &self.0.arbiters[hasher.finish() as usize % self.0.arbiters.len()];
        let store = Arc::clone(&self.0.store);
        let journal = self.0.journal.clone();
        let settings = self.0.settings.clone();
        let registry = self.clone();
        let depth = Arc::clone(&queued);
        let addr = EventActor::start_in_arbiter(arbiter, move |ctx| {
            // Bounded by `Queued`, not by actix (see there).
            ctx.set_mailbox_capacity(0);
            EventActor::new(event, store, journal, registry, depth, settings)
        });
        Live { addr, queued }
    }

    /// Removes an actor that has nothing queued, so it can stop without
    /// dropping a command; `false` when a command waits for it.
    pub(crate) fn forget_if_unwanted(
        &self,
        event: EventId,
        addr: &Addr<EventActor>,
        queued: &AtomicUsize,
    ) -> bool {
        match self.0.actors.entry(event) {
            Entry::Occupied(entry) if &entry.get().addr == addr => {
                let unwanted = queued.load(Ordering::Acquire) == 0;
                if unwanted {
                    entry.remove();
                }
                unwanted
            }
            // Already replaced: nobody can take a new place with it.
            _ => queued.load(Ordering::Acquire) == 0,
        }
    }

    /// Removes an actor, unless a newer one already took its place.
    pub(crate) fn forget(&self, event: EventId, addr: &Addr<EventActor>) {
        self.0
            .actors
            .remove_if(&event, |_, current| &current.addr == addr);
    }
}
