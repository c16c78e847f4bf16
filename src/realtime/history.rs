//! A channel's recent updates, kept so that a client that reconnects can
//! resume where it stopped: the last `updates` of them, none older than
//! `max_age`. A client away for longer gets a fresh snapshot instead, which
//! serves it as well — so the age bound costs nothing in what a client sees,
//! and keeps a busy channel from holding a thousand full frames for good.
//!
//! Pure: the time comes in as an argument, so the rules are tested without
//! waiting.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytestring::ByteString;

/// How much a channel keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// The most updates kept.
    pub updates: usize,
    /// Updates older than this are let go.
    pub max_age: Duration,
}

/// The updates kept, oldest first, at consecutive offsets.
#[derive(Debug)]
pub struct History {
    kept: VecDeque<Kept>,
    limits: HistoryLimits,
}

#[derive(Debug)]
struct Kept {
    offset: u64,
    at: Instant,
    text: ByteString,
}

impl History {
    pub fn new(limits: HistoryLimits) -> Self {
        Self {
            kept: VecDeque::new(),
            limits,
        }
    }

    /// Keeps the update at `offset` (the one after the last kept).
    pub fn push(&mut self, offset: u64, text: ByteString, now: Instant) {
        self.kept.push_back(Kept {
            offset,
            at: now,
            text,
        });
        while self.kept.len() > self.limits.updates {
            self.kept.pop_front();
        }
        self.let_go_of_old(now);
    }

    /// The updates after `since`, when every one of them is still kept and
    /// `since` is not past `latest` (the channel's offset now); `None` when
    /// the client needs a snapshot instead.
    pub fn after(
        &mut self,
        since: u64,
        latest: u64,
        now: Instant,
    ) -> Option<impl Iterator<Item = &ByteString>> {
        self.let_go_of_old(now);
        let oldest_kept = self.kept.front().map_or(latest + 1, |k| k.offset);
        (since <= latest && since + 1 >= oldest_kept).then(|| {
            self.kept
                .iter()
                .filter(move |k| k.offset > since)
                .map(|k| &k.text)
        })
    }

    /// Forgets everything (a new epoch begins).
    pub fn clear(&mut self) {
        self.kept.clear();
    }

    fn let_go_of_old(&mut self, now: Instant) {
        while self
            .kept
            .front()
            .is_some_and(|k| now.saturating_duration_since(k.at) > self.limits.max_age)
        {
            self.kept.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn history(updates: usize) -> History {
        History::new(HistoryLimits {
            updates,
            max_age: MINUTE,
        })
    }

    fn texts<'a>(frames: impl Iterator<Item = &'a ByteString>) -> Vec<&'a str> {
        frames.map(|t| &**t).collect()
    }

    #[test]
    fn a_client_resumes_with_exactly_the_updates_it_missed() {
        let now = Instant::now();
        let mut history = history(10);
        for offset in 1..=3 {
            history.push(offset, format!("u{offset}").into(), now);
        }
        assert_eq!(history.after(1, 3, now).map(texts), Some(vec!["u2", "u3"]));
        assert_eq!(history.after(3, 3, now).map(texts), Some(vec![]));
        assert_eq!(
            history.after(0, 3, now).map(texts),
            Some(vec!["u1", "u2", "u3"])
        );
    }

    #[test]
    fn a_client_that_missed_more_than_is_kept_needs_a_snapshot() {
        let now = Instant::now();
        let mut history = history(2);
        for offset in 1..=4 {
            history.push(offset, format!("u{offset}").into(), now);
        }
        // u3 and u4 are kept: from 2 on nothing is missing, from 1 u2 is.
        assert_eq!(history.after(2, 4, now).map(texts), Some(vec!["u3", "u4"]));
        assert!(history.after(1, 4, now).is_none());
    }

    #[test]
    fn an_offset_the_channel_has_not_reached_needs_a_snapshot() {
        let now = Instant::now();
        let mut history = history(10);
        history.push(1, "u1".into(), now);
        assert!(history.after(2, 1, now).is_none());
    }

    #[test]
    fn with_nothing_kept_only_a_client_that_is_up_to_date_resumes() {
        let now = Instant::now();
        let mut history = history(10);
        assert_eq!(history.after(5, 5, now).map(texts), Some(vec![]));
        assert!(history.after(4, 5, now).is_none());
    }

    #[test]
    fn updates_older_than_the_age_limit_are_let_go_and_a_resume_past_them_needs_a_snapshot() {
        let start = Instant::now();
        let mut history = history(10);
        history.push(1, "u1".into(), start);
        history.push(2, "u2".into(), start + MINUTE / 2);
        let later = start + MINUTE + Duration::from_secs(1);
        assert!(
            history.after(0, 2, later).is_none(),
            "u1 is too old to replay"
        );
        assert_eq!(history.after(1, 2, later).map(texts), Some(vec!["u2"]));
        // Nothing is kept once every update is too old, even without a push.
        let much_later = later + MINUTE;
        assert!(history.after(1, 2, much_later).is_none());
        assert_eq!(history.after(2, 2, much_later).map(texts), Some(vec![]));
        assert!(history.kept.is_empty());
    }

    #[test]
    fn a_cleared_history_keeps_nothing() {
        let now = Instant::now();
        let mut history = history(10);
        history.push(1, "u1".into(), now);
        history.clear();
        assert!(history.after(0, 1, now).is_none());
    }
}
