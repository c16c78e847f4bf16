//! A user as recommendations see them: what they said they like, where they
//! live, what they joined, and what those joins teach (which tags and which
//! times of day they go for).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;

use chrono::{DateTime, Utc};

use super::catalog::{Catalog, HISTORY_LEN};
use crate::domain::{EventId, GeoPoint, Tag, UserId};

/// Part of the day an event starts in, in the city's local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DaySlot {
    /// 06:00–12:00
    Morning,
    /// 12:00–17:00
    Afternoon,
    /// 17:00–22:00
    Evening,
    /// 22:00–06:00
    Night,
}

impl DaySlot {
    pub fn of(t: DateTime<Utc>, utc_offset_minutes: i32) -> Self {
        // Plain arithmetic on the timestamp: this runs for every candidate.
        let local = t.timestamp() + 60 * i64::from(utc_offset_minutes);
        match local.rem_euclid(86_400) / 3600 {
            6..=11 => Self::Morning,
            12..=16 => Self::Afternoon,
            17..=21 => Self::Evening,
            _ => Self::Night,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DaySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Morning => "mornings",
            Self::Afternoon => "afternoons",
            Self::Evening => "evenings",
            Self::Night => "late nights",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub user: UserId,
    pub interests: Vec<Tag>,
    pub home: Option<GeoPoint>,
    /// Events the user is in (active or waitlisted): never recommended.
    joined: HashSet<EventId>,
    /// The most recent of those joins (and past ones), oldest first.
    history: VecDeque<EventId>,
    /// Learned from `history`: share of joins carrying each tag, shrunk
    /// towards zero for short histories.
    tag_affinity: Vec<(Tag, f64)>,
    slot_affinity: [f64; 4],
}

impl Profile {
    /// `joins` oldest first.
    pub fn new(
        user: UserId,
        interests: Vec<Tag>,
        home: Option<GeoPoint>,
        joins: impl IntoIterator<Item = EventId>,
    ) -> Self {
        let mut profile = Self {
            user,
            interests,
            home,
            joined: HashSet::new(),
            history: VecDeque::new(),
            tag_affinity: Vec::new(),
            slot_affinity: [0.0; 4],
        };
        for event in joins {
            profile.record_join(event);
        }
        profile
    }

    pub fn has_joined(&self, event: EventId) -> bool {
        self.joined.contains(&event)
    }

    /// Recent joins, newest first.
    pub fn recent_joins(&self) -> impl Iterator<Item = EventId> + '_ {
        self.history.iter().rev().copied()
    }

    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    /// Call [`Profile::learn`] afterwards.
    pub fn record_join(&mut self, event: EventId) {
        if self.joined.insert(event) {
            self.history.push_back(event);
            if self.history.len() > HISTORY_LEN {
                self.history.pop_front();
            }
        }
    }

    /// A join (`joined`) or a leave; call [`Profile::learn`] afterwards.
    pub fn record_move(&mut self, event: EventId, joined: bool) {
        if joined {
            self.record_join(event);
        } else {
            self.record_leave(event);
        }
    }

    /// Call [`Profile::learn`] afterwards.
    pub fn record_leave(&mut self, event: EventId) {
        if self.joined.remove(&event) {
            self.history.retain(|e| *e != event);
        }
    }

    /// Recomputes what the joins teach, from the catalog's cards.
    pub fn learn(&mut self, catalog: &Catalog, utc_offset_minutes: i32) {
        let mut tags: HashMap<Tag, f64> = HashMap::new();
        let mut slots = [0.0; 4];
        let mut known = 0.0;
        for card in self.history.iter().filter_map(|e| catalog.card(*e)) {
            known += 1.0;
            for tag in card.tags.iter() {
                *tags.entry(tag.clone()).or_default() += 1.0;
            }
            slots[DaySlot::of(card.starts_at, utc_offset_minutes).index()] += 1.0;
        }
        // Two pseudo-joins of nothing: one jazz night is a hint, not a taste.
        let shrink = known + 2.0;
        let mut tags: Vec<(Tag, f64)> = tags.into_iter().map(|(t, n)| (t, n / shrink)).collect();
        // Strongest first; a short list scanned beats hashing for every candidate.
        tags.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        for value in &mut slots {
            *value /= shrink;
        }
        self.tag_affinity = tags;
        self.slot_affinity = slots;
    }

    /// Share of recent joins carrying the tag, in [0, 1).
    pub fn tag_affinity(&self, tag: &Tag) -> f64 {
        self.tag_affinity
            .iter()
            .find(|(t, _)| t == tag)
            .map_or(0.0, |(_, v)| *v)
    }

    /// Share of recent joins starting in this part of the day, in [0, 1).
    pub fn slot_affinity(&self, slot: DaySlot) -> f64 {
        self.slot_affinity[slot.index()]
    }

    /// The learned tags, strongest first.
    pub fn top_learned_tags(&self, n: usize) -> Vec<&Tag> {
        self.tag_affinity.iter().take(n).map(|(t, _)| t).collect()
    }
}
