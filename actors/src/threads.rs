//! A pool of arbiter threads on which each key always lands on the same
//! one: an event's actor, a channel's hub.

use std::hash::{DefaultHasher, Hash, Hasher};

use actix::ArbiterHandle;

#[derive(Clone)]
pub struct Threads(Vec<ArbiterHandle>);

impl Threads {
    /// `what` names what runs on them, for the panic when there are none.
    pub fn new(threads: Vec<ArbiterHandle>, what: &str) -> Self {
        assert!(!threads.is_empty(), "{what} need at least one thread");
        Self(threads)
    }

    /// The thread `key` runs on.
    pub fn for_key(&self, key: &impl Hash) -> &ArbiterHandle {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        &self.0[hasher.finish() as usize % self.0.len()]
    }
}
