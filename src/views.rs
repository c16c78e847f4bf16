//! What clients see of an event and of a recommendation: the JSON shapes
//! shared by the HTTP API and the WebSocket protocol. The core hands on typed values (an
//! [`EventSummary`], a read-model [`EventRecord`]); this is the one place
//! they become the wire's strings and numbers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use turnout_actors::domain::{Lifecycle, WaitlistFill, WaitlistMode, WaitlistPolicy};
use turnout_actors::recommend::{EventCard, Recommendation};
use turnout_actors::store::EventSummary;
use uuid::Uuid;

use crate::store::{EventRecord, from_micros, micros};

/// An event with its live counts.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventView {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub venue_id: Uuid,
    pub title: String,
    pub description: Option<String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
    pub tags: Vec<String>,
    pub status: Lifecycle,
    pub capacity: i64,
    /// Seats of active parties.
    pub active_count: i64,
    /// Seats held for parties that have an offer to accept.
    pub offered_seats: i64,
    /// Seats the waiting parties ask for.
    pub waitlist_count: i64,
    /// Capacity less active and offered seats.
    pub places_left: i64,
    #[serde(flatten)]
    pub waitlist: WaitlistSettings,
}

/// How an event serves its waitlist.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WaitlistSettings {
    pub waitlist_mode: WaitlistMode,
    pub waitlist_fill: WaitlistFill,
    /// How long an offer is held, in seconds.
    pub offer_hold_secs: i64,
    /// The most seats one join may ask for.
    pub max_party: i64,
}

impl From<WaitlistPolicy> for WaitlistSettings {
    fn from(p: WaitlistPolicy) -> Self {
        Self {
            waitlist_mode: p.mode,
            waitlist_fill: p.fill,
            offer_hold_secs: i64::from(p.offer_hold),
            max_party: i64::from(p.max_party),
        }
    }
}

impl From<EventRecord> for EventView {
    fn from(e: EventRecord) -> Self {
        Self {
            id: e.id,
            owner_id: e.owner_id,
            venue_id: e.venue_id,
            title: e.title,
            description: e.description,
            starts_at: from_micros(e.starts_at),
            ends_at: e.ends_at.map(from_micros),
            tags: e.tags,
            status: e.status,
            capacity: e.capacity,
            active_count: e.active_count,
            offered_seats: e.offered_count,
            waitlist_count: e.waitlist_count,
            places_left: (e.capacity - e.active_count - e.offered_count).max(0),
            waitlist: WaitlistSettings {
                waitlist_mode: e.waitlist_mode,
                waitlist_fill: e.waitlist_fill,
                offer_hold_secs: e.offer_hold_secs,
                max_party: e.max_party,
            },
        }
    }
}

fn to_the_microsecond(at: DateTime<Utc>) -> DateTime<Utc> {
    from_micros(micros(at))
}

impl From<&EventSummary> for EventView {
    fn from(s: &EventSummary) -> Self {
        let capacity = i64::from(s.capacity);
        Self {
            id: s.id.as_uuid(),
            owner_id: s.owner.as_uuid(),
            venue_id: s.details.venue_id.as_uuid(),
            title: s.details.title.as_str().to_owned(),
            description: s
                .details
                .description
                .as_ref()
                .map(|d| d.as_str().to_owned()),
            // As the read model gives them back, whichever answers: times
            // to the microsecond it stores, tags in order.
            starts_at: to_the_microsecond(s.details.starts_at),
            ends_at: s.details.ends_at.map(to_the_microsecond),
            tags: {
                let mut tags: Vec<String> = s
                    .details
                    .tags
                    .iter()
                    .map(|t| t.as_str().to_owned())
                    .collect();
                tags.sort();
                tags
            },
            status: s.lifecycle,
            capacity,
            active_count: s.active_count as i64,
            offered_seats: s.offered_count as i64,
            waitlist_count: s.waitlist_count as i64,
            places_left: s.places_left() as i64,
            waitlist: s.policy.into(),
        }
    }
}

/// A recommended event with its live counts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecommendedEvent {
    pub id: Uuid,
    pub title: String,
    pub venue_id: Uuid,
    pub starts_at: DateTime<Utc>,
    pub tags: Vec<String>,
    pub status: Lifecycle,
    pub capacity: u32,
    pub active_count: u32,
    pub waitlist_count: u32,
    pub places_left: u32,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecommendationView {
    pub event: RecommendedEvent,
    /// Higher is better; comparable within one list.
    pub score: f64,
    /// Why, strongest first: "matches your interest: jazz", "2.1 km from home", …
    pub reasons: Vec<String>,
}

impl From<&(Recommendation, EventCard)> for RecommendationView {
    fn from((r, card): &(Recommendation, EventCard)) -> Self {
        Self {
            event: RecommendedEvent {
                id: card.id.as_uuid(),
                title: card.title.to_string(),
                venue_id: card.venue.as_uuid(),
                starts_at: card.starts_at,
                tags: card.tags.iter().map(|t| t.as_str().to_owned()).collect(),
                status: card.lifecycle,
                capacity: card.capacity,
                active_count: card.active.saturating_sub(card.offered),
                waitlist_count: card.waitlist,
                places_left: card.places_left(),
            },
            score: (r.score * 1000.0).round() / 1000.0,
            reasons: r.reasons.iter().map(ToString::to_string).collect(),
        }
    }
}
