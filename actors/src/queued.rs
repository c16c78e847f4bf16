//! Counts the messages waiting in mailboxes that have no bound.
//!
//! actix's `do_send` puts a message in the mailbox whatever it already
//! holds, so a receiver falling behind shows nowhere unless each message
//! counts itself: a [`Queued`] token travels inside the message, counts
//! from when it is made until it is dropped (the handler took the message,
//! or a stopped actor's mailbox was dropped with it), and the
//! [`QueueCount`] it came from is read at each scrape.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Messages sent and not yet handled, over every mailbox that shares it.
#[derive(Debug, Clone, Default)]
pub struct QueueCount(Arc<AtomicUsize>);

impl QueueCount {
    /// A token for one message: it counts until dropped.
    pub fn enter(&self) -> Queued {
        self.0.fetch_add(1, Ordering::Relaxed);
        Queued(Arc::clone(&self.0))
    }

    /// Messages whose tokens are alive.
    pub fn len(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One message's place in a [`QueueCount`].
#[derive(Debug)]
pub struct Queued(Arc<AtomicUsize>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_counts_from_when_it_is_sent_until_it_is_dropped() {
        let count = QueueCount::default();
        let tokens: Vec<Queued> = (0..3).map(|_| count.enter()).collect();
        assert_eq!(count.len(), 3);
        let cloned = count.clone();
        drop(tokens);
        assert!(cloned.is_empty());
    }
}
