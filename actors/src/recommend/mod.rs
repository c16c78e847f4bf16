//! Recommendations: which upcoming events suit a user, and why.
//!
//! - `catalog`: the shared in-memory view of what can be recommended —
//!   upcoming events indexed by start, tag, place, heat and freshness, plus
//!   who-joined-what for co-attendance. Fed by committed changes.
//! - `profile`: one user's declared interests, home and joins, and what is
//!   learned from those joins (tag and time-of-day affinity).
//! - `score`: the pure scoring function — one event, one user, a number and
//!   the reasons in words. Each signal is documented and tested there.
//! - `rank`: candidate pruning (no full scan) and top-k selection; also the
//!   popularity-only baseline the evaluation compares against.
//! - `actor`: a `RecommenderActor` per connected user keeps that user's list
//!   and pushes a new one when its top-k moves; `Recommenders` owns the
//!   catalog, debounces changes and routes them to the actors.

mod actor;
mod catalog;
mod profile;
mod rank;
mod score;

pub use actor::{
    Backlog, ListSink, ProfileSeed, RankedList, RecommendSettings, RecommendationSource,
    Recommenders,
};
pub use catalog::{Catalog, EventCard, EventUpdate};
pub use profile::{DaySlot, Profile};
pub use rank::{LiveList, RankSettings, Recommendation, popularity_baseline, rank, score_event};
pub use score::{Reason, Signals, Weights};
