//! The roster of live event actors: the one table the registry routes
//! commands by and an actor leaves through, with each actor's mailbox count.
//!
//! Generic over the actor's address so that neither the registry nor the
//! actor has to know the other to share it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::domain::EventId;

/// A live actor and how many commands wait in its mailbox.
#[derive(Clone)]
pub struct Live<A> {
    pub addr: A,
    pub queued: Arc<AtomicUsize>,
}

pub struct Roster<A> {
    actors: DashMap<EventId, Live<A>>,
}

impl<A: Clone + PartialEq> Default for Roster<A> {
    fn default() -> Self {
        Self {
            actors: DashMap::new(),
        }
    }
}

impl<A: Clone + PartialEq> Roster<A> {
    /// The event's live actor (`spawn`ing one if there is none, or if
    /// `alive` says the one there has stopped) and a place in its mailbox,
    /// both under the entry's lock, so an actor leaving through
    /// [`Roster::forget_if_unwanted`] never strands a command: a caller has
    /// either taken its place already or finds no actor. `None` when
    /// `capacity` commands wait already.
    pub fn enter(
        &self,
        event: EventId,
        alive: impl Fn(&A) -> bool,
        spawn: impl FnOnce() -> Live<A>,
        capacity: usize,
    ) -> Option<(A, Queued)> {
        let live = match self.actors.entry(event) {
            Entry::Occupied(entry) if alive(&entry.get().addr) => entry.into_ref(),
            Entry::Occupied(mut entry) => {
                entry.insert(spawn());
                entry.into_ref()
            }
            Entry::Vacant(entry) => entry.insert(spawn()),
        };
        let queued = Queued::enter(&live.queued, capacity)?;
        Some((live.addr.clone(), queued))
    }

    /// Removes an actor that has nothing queued, so it can stop without
    /// dropping a command; `false` when a command waits for it.
    pub fn forget_if_unwanted(&self, event: EventId, addr: &A, queued: &AtomicUsize) -> bool {
        match self.actors.entry(event) {
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
    pub fn forget(&self, event: EventId, addr: &A) {
        self.actors
            .remove_if(&event, |_, current| &current.addr == addr);
    }

    pub fn len(&self) -> usize {
        self.actors.len()
    }

    /// The actors of the events `wanted` picks.
    pub fn matching(&self, wanted: impl Fn(EventId) -> bool) -> Vec<A> {
        self.actors
            .iter()
            .filter(|entry| wanted(*entry.key()))
            .map(|entry| entry.value().addr.clone())
            .collect()
    }
}

/// A place in one actor's mailbox, held by a queued command and given back
/// when the command is handled or dropped. actix bounds a mailbox per sender
/// (each `Addr` clone gets a slot of its own), so the bound is kept here.
pub struct Queued {
    depth: Arc<AtomicUsize>,
}

impl Queued {
    /// Takes a place if fewer than `capacity` commands are queued.
    pub fn enter(depth: &Arc<AtomicUsize>, capacity: usize) -> Option<Self> {
        if depth.fetch_add(1, Ordering::AcqRel) >= capacity {
            depth.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        metrics::gauge!("turnout_actor_mailbox_depth").increment(1.0);
        Some(Self {
            depth: Arc::clone(depth),
        })
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.depth.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("turnout_actor_mailbox_depth").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(addr: u32) -> Live<u32> {
        Live {
            addr,
            queued: Arc::default(),
        }
    }

    #[test]
    fn a_command_takes_a_place_until_the_mailbox_is_full() {
        let roster = Roster::default();
        let event = EventId::new();
        let first = roster.enter(event, |_| true, || live(1), 2);
        let second = roster.enter(event, |_| true, || live(2), 2);
        assert_eq!(first.as_ref().map(|(a, _)| *a), Some(1));
        assert_eq!(second.as_ref().map(|(a, _)| *a), Some(1), "the same actor");
        assert!(roster.enter(event, |_| true, || live(3), 2).is_none());
        drop(first);
        assert!(roster.enter(event, |_| true, || live(3), 2).is_some());
    }

    #[test]
    fn a_stopped_actor_is_replaced() {
        let roster = Roster::default();
        let event = EventId::new();
        drop(roster.enter(event, |_| true, || live(1), 2));
        let (addr, _) = roster.enter(event, |a| *a != 1, || live(2), 2).unwrap();
        assert_eq!(addr, 2);
    }

    #[test]
    fn an_actor_leaves_only_with_nothing_queued() {
        let roster = Roster::default();
        let event = EventId::new();
        let depth: Arc<AtomicUsize> = Arc::default();
        let spawn = || Live {
            addr: 1,
            queued: Arc::clone(&depth),
        };
        let (addr, place) = roster.enter(event, |_| true, spawn, 2).unwrap();
        assert!(!roster.forget_if_unwanted(event, &addr, &depth));
        assert_eq!(roster.len(), 1);
        drop(place);
        assert!(roster.forget_if_unwanted(event, &addr, &depth));
        assert_eq!(roster.len(), 0);
    }

    #[test]
    fn forgetting_an_old_actor_leaves_its_successor() {
        let roster = Roster::default();
        let event = EventId::new();
        drop(roster.enter(event, |_| true, || live(1), 2));
        drop(roster.enter(event, |a| *a != 1, || live(2), 2));
        roster.forget(event, &1);
        assert_eq!(roster.len(), 1);
        roster.forget(event, &2);
        assert_eq!(roster.len(), 0);
    }
}
