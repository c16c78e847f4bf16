//! Whether this node hears the other nodes' changes — the one part of the
//! cluster Redis carries (placement and joins do not need it). The Redis
//! subscriber marks it; `/ready` reports it and the event cache answers
//! from memory only while it is up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// `None` inside: no Redis, so a node alone hears everything it needs.
#[derive(Clone, Default)]
pub struct FanoutLink(Option<Arc<AtomicBool>>);

impl FanoutLink {
    /// A link that is not up (yet).
    pub fn unlinked() -> Self {
        Self(Some(Arc::default()))
    }

    /// The subscription came up (after the hubs and caches were told to
    /// forget what they may have missed) or went down.
    pub fn mark(&self, up: bool) {
        if let Some(link) = &self.0 {
            link.store(up, Ordering::Release);
        }
    }

    pub fn is_connected(&self) -> bool {
        self.0.as_ref().is_some_and(|up| up.load(Ordering::Acquire))
    }

    /// `local` (no Redis: one node), `connected`, or `disconnected` (live
    /// updates from other nodes pause; this node's own still flow).
    pub fn state(&self) -> &'static str {
        match &self.0 {
            None => "local",
            Some(_) if self.is_connected() => "connected",
            Some(_) => "disconnected",
        }
    }
}
