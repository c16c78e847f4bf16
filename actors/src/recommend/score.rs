//! The scoring function: how well one event suits one user, and why, in
//! words. Pure — the clock, the user, the event and the co-attendance
//! evidence are all arguments — so each signal is tested on its own.
//!
//! The score is Σ weightᵢ · signalᵢ, every signal in [0, 1]:
//!
//! | signal | value |
//! |---|---|
//! | `interest` | declared interests among the event's tags: none 0, one 0.8, two or more 1 |
//! | `affinity` | the largest share of the user's recent joins carrying one of the event's tags (shrunk for short histories) |
//! | `co_attendance` | 1 − e^(−3s), s = Σ over the user's joins a of co(a, e)/√(nₐ·nₑ) |
//! | `time_of_day` | share of the user's recent joins in the event's part of the day |
//! | `distance` | e^(−d/4 km) from the user's home; 0 when either place is unknown |
//! | `popularity` | ln(1 + joiners) / ln(501), at most 1 |
//! | `trend` | 1 − e^(−h/8), h = joins decayed with a 6-hour half-life |
//! | `soon` | e^(−hours until start / 168): this week beats next month |
//! | `availability` | 1 with places left; a full event 0.5 / (1 + 4·waitlist/capacity) |
//! | `fresh` | e^(−hours since published / 24) / (1 + joiners/5): new events get seen |
//!
//! Never scored (excluded): drafts, cancelled or started events, events the
//! user joined (active or waitlisted) and events the user owns.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::catalog::EventCard;
use super::profile::{DaySlot, Profile};
use crate::domain::{Tag, haversine_km};

/// How much each signal counts. Tuned on the synthetic city
/// (docs/RECOMMENDATIONS.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub interest: f64,
    pub affinity: f64,
    pub co_attendance: f64,
    pub time_of_day: f64,
    pub distance: f64,
    pub popularity: f64,
    pub trend: f64,
    pub soon: f64,
    pub availability: f64,
    pub fresh: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            interest: 3.0,
            affinity: 3.0,
            co_attendance: 2.0,
            time_of_day: 1.5,
            distance: 2.0,
            popularity: 1.0,
            trend: 0.7,
            soon: 0.6,
            availability: 1.0,
            fresh: 0.8,
        }
    }
}

/// Each signal's value for one user and one event, in [0, 1].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    pub interest: f64,
    pub affinity: f64,
    pub co_attendance: f64,
    pub time_of_day: f64,
    pub distance: f64,
    pub popularity: f64,
    pub trend: f64,
    pub soon: f64,
    pub availability: f64,
    pub fresh: f64,
}

/// Why an event is recommended; `Display` gives the words users see.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// The declared interests among the event's tags (at least one).
    Interest(Vec<Tag>),
    Affinity(Tag),
    CoAttendance(Arc<str>),
    TimeOfDay(DaySlot),
    Distance {
        km: f64,
    },
    Popular {
        going: u32,
    },
    FillingFast,
    StartsSoon {
        hours: i64,
    },
    PlacesLeft(u32),
    JustAnnounced,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Interest(tags) => match tags.as_slice() {
                [one] => write!(f, "matches your interest: {}", one.as_str()),
                [init @ .., last] => {
                    let init: Vec<&str> = init.iter().map(Tag::as_str).collect();
                    write!(
                        f,
                        "matches your interests: {} and {}",
                        init.join(", "),
                        last.as_str()
                    )
                }
                [] => f.write_str("matches your interests"),
            },
            Self::Affinity(tag) => write!(f, "you often join {} events", tag.as_str()),
            Self::CoAttendance(title) => write!(f, "people who joined {title} joined this"),
            Self::TimeOfDay(slot) => write!(f, "you usually go out {slot}"),
            Self::Distance { km } => write!(f, "{km:.1} km from home"),
            Self::Popular { going } => write!(f, "popular: {going} going"),
            Self::FillingFast => f.write_str("filling fast"),
            Self::StartsSoon { hours: 0 } => f.write_str("starts within the hour"),
            Self::StartsSoon { hours: 1 } => f.write_str("starts in 1 hour"),
            Self::StartsSoon { hours } if *hours < 24 => write!(f, "starts in {hours} hours"),
            Self::StartsSoon { hours } if *hours < 48 => f.write_str("starts tomorrow"),
            Self::StartsSoon { hours } => write!(f, "starts in {} days", hours / 24),
            Self::PlacesLeft(1) => f.write_str("only 1 place left"),
            Self::PlacesLeft(n) => write!(f, "only {n} places left"),
            Self::JustAnnounced => f.write_str("just announced"),
        }
    }
}

/// The co-attendance evidence for one event, with the title of the joined
/// event that points at it hardest.
#[derive(Debug, Clone)]
pub struct CoAttendance {
    pub strength: f64,
    pub because: Arc<str>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub score: f64,
    pub signals: Signals,
    /// Strongest first; at most [`MAX_REASONS`].
    pub reasons: Vec<Reason>,
}

pub const MAX_REASONS: usize = 4;
/// A signal is named as a reason when it adds at least this much.
const REASON_MIN: f64 = 0.3;

/// Whether the event may be recommended to the user at all.
pub fn eligible(profile: &Profile, card: &EventCard, now: DateTime<Utc>) -> bool {
    card.is_open(now) && card.owner != profile.user && !profile.has_joined(card.id)
}

/// Scores one event for one user, with the reasons; `None` when it must not
/// be recommended.
pub fn score(
    profile: &Profile,
    card: &EventCard,
    co: Option<&CoAttendance>,
    now: DateTime<Utc>,
    weights: &Weights,
    utc_offset_minutes: i32,
) -> Option<Scored> {
    let s = signals(
        profile,
        card,
        co.map(|c| c.strength),
        now,
        utc_offset_minutes,
    )?;
    Some(Scored {
        score: s.total(weights),
        signals: s,
        reasons: reasons(
            profile,
            card,
            &s,
            co.map(|c| &c.because),
            now,
            weights,
            utc_offset_minutes,
        ),
    })
}

impl Signals {
    pub fn total(&self, w: &Weights) -> f64 {
        w.interest * self.interest
            + w.affinity * self.affinity
            + w.co_attendance * self.co_attendance
            + w.time_of_day * self.time_of_day
            + w.distance * self.distance
            + w.popularity * self.popularity
            + w.trend * self.trend
            + w.soon * self.soon
            + w.availability * self.availability
            + w.fresh * self.fresh
    }
}

/// The signals alone: no allocation, so ranking can score every candidate
/// and explain only the ones it keeps. `co_strength` is the co-attendance
/// evidence, if any.
pub fn signals(
    profile: &Profile,
    card: &EventCard,
    co_strength: Option<f64>,
    now: DateTime<Utc>,
    utc_offset_minutes: i32,
) -> Option<Signals> {
    if !eligible(profile, card, now) {
        return None;
    }
    let mut s = Signals::default();
    let matched = card
        .tags
        .iter()
        .filter(|t| profile.interests.contains(t))
        .count();
    s.interest = match matched {
        0 => 0.0,
        1 => 0.8,
        _ => 1.0,
    };
    s.affinity = card
        .tags
        .iter()
        .map(|t| profile.tag_affinity(t))
        .fold(0.0, f64::max);
    if let Some(strength) = co_strength {
        s.co_attendance = 1.0 - (-3.0 * strength).exp();
    }
    s.time_of_day = profile.slot_affinity(DaySlot::of(card.starts_at, utc_offset_minutes));
    if let (Some(home), Some(place)) = (profile.home, card.place) {
        s.distance = (-haversine_km(home, place) / 4.0).exp();
    }
    s.popularity = ((1.0 + f64::from(card.joiners)).ln() / 501f64.ln()).min(1.0);
    s.trend = 1.0 - (-card.heat(now) / 8.0).exp();
    s.soon = (-hours_until(card, now) / 168.0).exp();
    s.availability = if card.places_left() > 0 {
        1.0
    } else {
        0.5 / (1.0 + 4.0 * f64::from(card.waitlist) / f64::from(card.capacity.max(1)))
    };
    if let Some(published) = card.published_at {
        let age_hours = hours_between(published, now).max(0.0);
        s.fresh = (-age_hours / 24.0).exp() / (1.0 + f64::from(card.joiners) / 5.0);
    }
    Some(s)
}

fn hours_until(card: &EventCard, now: DateTime<Utc>) -> f64 {
    hours_between(now, card.starts_at)
}

fn hours_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to.timestamp() - from.timestamp()) as f64 / 3600.0
}

/// Names the signals that count most, strongest first, in words.
pub fn reasons(
    profile: &Profile,
    card: &EventCard,
    s: &Signals,
    co_because: Option<&Arc<str>>,
    now: DateTime<Utc>,
    w: &Weights,
    utc_offset_minutes: i32,
) -> Vec<Reason> {
    let mut named: Vec<(f64, Reason)> = Vec::with_capacity(8);
    if s.interest > 0.0 {
        let matched = card
            .tags
            .iter()
            .filter(|t| profile.interests.contains(t))
            .cloned()
            .collect();
        named.push((w.interest * s.interest, Reason::Interest(matched)));
    }
    if let Some(tag) = card
        .tags
        .iter()
        .max_by(|a, b| profile.tag_affinity(a).total_cmp(&profile.tag_affinity(b)))
    {
        named.push((w.affinity * s.affinity, Reason::Affinity(tag.clone())));
    }
    if let Some(because) = co_because {
        named.push((
            w.co_attendance * s.co_attendance,
            Reason::CoAttendance(Arc::clone(because)),
        ));
    }
    let slot = DaySlot::of(card.starts_at, utc_offset_minutes);
    named.push((w.time_of_day * s.time_of_day, Reason::TimeOfDay(slot)));
    if let (Some(home), Some(place)) = (profile.home, card.place) {
        let km = haversine_km(home, place);
        named.push((w.distance * s.distance, Reason::Distance { km }));
    }
    named.push((
        w.popularity * s.popularity,
        Reason::Popular { going: card.active },
    ));
    named.push((w.trend * s.trend, Reason::FillingFast));
    named.push((
        w.soon * s.soon,
        Reason::StartsSoon {
            hours: hours_until(card, now) as i64,
        },
    ));
    if card.published_at.is_some() {
        named.push((w.fresh * s.fresh, Reason::JustAnnounced));
    }

    named.retain(|(contribution, _)| *contribution >= REASON_MIN);
    named.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut reasons: Vec<Reason> = named.into_iter().map(|(_, r)| r).collect();
    // Scarcity is worth saying even though it is not what ranks the event.
    let left = card.places_left();
    if left > 0 && left <= (card.capacity / 10).max(3) {
        reasons.insert(reasons.len().min(MAX_REASONS - 1), Reason::PlacesLeft(left));
    }
    reasons.truncate(MAX_REASONS);
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventId, GeoPoint, Lifecycle, UserId, VenueId};
    use crate::recommend::catalog::{Catalog, EventUpdate};
    use chrono::{Duration, TimeZone};
    use uuid::Uuid;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
    }

    fn tag(t: &str) -> Tag {
        Tag::parse(t).unwrap()
    }

    const AMSTERDAM: GeoPoint = GeoPoint {
        lat: 52.3676,
        lon: 4.9041,
    };

    /// A catalog holding one published event (plus any `extra`), two days out.
    struct Fixture {
        catalog: Catalog,
        event: EventId,
        venue: VenueId,
    }

    fn published(
        id: EventId,
        venue: VenueId,
        tags: &[&str],
        starts_at: DateTime<Utc>,
    ) -> EventUpdate {
        EventUpdate {
            id,
            owner: UserId::from(Uuid::now_v7()),
            title: "Late jazz".into(),
            venue,
            starts_at,
            tags: tags.iter().map(|t| tag(t)).collect(),
            lifecycle: Lifecycle::Published,
            capacity: 100,
            active: 0,
            offered: 0,
            waitlist: 0,
            version: 1,
            joined: vec![],
            left: vec![],
            at: now() - Duration::days(10),
        }
    }

    fn fixture(tags: &[&str]) -> Fixture {
        let mut catalog = Catalog::default();
        let venue = VenueId::from(Uuid::now_v7());
        catalog.venue_located(venue, AMSTERDAM);
        let event = EventId::from(Uuid::now_v7());
        catalog.apply(&published(event, venue, tags, now() + Duration::days(2)));
        Fixture {
            catalog,
            event,
            venue,
        }
    }

    fn user() -> Profile {
        Profile::new(UserId::from(Uuid::now_v7()), vec![], None, [])
    }

    fn scored(f: &Fixture, profile: &Profile) -> Scored {
        score(
            profile,
            f.catalog.card(f.event).unwrap(),
            None,
            now(),
            &Weights::default(),
            0,
        )
        .expect("eligible")
    }

    #[test]
    fn declared_interest_counts_and_is_named() {
        let f = fixture(&["jazz", "live"]);
        let plain = scored(&f, &user());
        let mut fan = user();
        fan.interests = vec![tag("jazz")];
        let one = scored(&f, &fan);
        fan.interests.push(tag("live"));
        let both = scored(&f, &fan);
        assert_eq!(
            both.reasons[0].to_string(),
            "matches your interests: jazz and live"
        );
        assert_eq!(plain.signals.interest, 0.0);
        assert_eq!(one.signals.interest, 0.8);
        assert_eq!(both.signals.interest, 1.0);
        assert!(both.score > one.score && one.score > plain.score);
        assert_eq!(one.reasons[0].to_string(), "matches your interest: jazz");
    }

    #[test]
    fn affinity_is_learned_from_joined_tags() {
        let mut f = fixture(&["jazz"]);
        let mut profile = user();
        for _ in 0..3 {
            let past = EventId::from(Uuid::now_v7());
            f.catalog.apply(&published(
                past,
                f.venue,
                &["jazz"],
                now() - Duration::days(3),
            ));
            profile.record_join(past);
        }
        profile.learn(&f.catalog, 0);
        let s = scored(&f, &profile);
        // Three of three joins, shrunk by two pseudo-joins: 3/5.
        assert!((s.signals.affinity - 0.6).abs() < 1e-9);
        assert!(
            s.reasons
                .iter()
                .any(|r| r.to_string() == "you often join jazz events")
        );
    }

    #[test]
    fn time_of_day_is_learned_too() {
        let mut f = fixture(&[]);
        let mut profile = user();
        // The fixture's event starts at 12:00: the afternoon.
        let past = EventId::from(Uuid::now_v7());
        f.catalog
            .apply(&published(past, f.venue, &[], now() - Duration::days(7)));
        profile.record_join(past);
        profile.learn(&f.catalog, 0);
        assert!((scored(&f, &profile).signals.time_of_day - 1.0 / 3.0).abs() < 1e-9);
        // Six hours east the same event starts at 18:00: an evening.
        profile.learn(&f.catalog, 360);
        let evening = score(
            &profile,
            f.catalog.card(f.event).unwrap(),
            None,
            now(),
            &Weights::default(),
            360,
        )
        .unwrap();
        assert!((evening.signals.time_of_day - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(DaySlot::of(now(), 360), DaySlot::Evening);
    }

    #[test]
    fn co_attendance_names_the_event_behind_it() {
        let f = fixture(&[]);
        let co = CoAttendance {
            strength: 0.5,
            because: Arc::from("Late jazz"),
        };
        let s = score(
            &user(),
            f.catalog.card(f.event).unwrap(),
            Some(&co),
            now(),
            &Weights::default(),
            0,
        )
        .unwrap();
        assert!((s.signals.co_attendance - (1.0 - (-1.5f64).exp())).abs() < 1e-9);
        assert_eq!(
            s.reasons[0].to_string(),
            "people who joined Late jazz joined this"
        );
    }

    #[test]
    fn nearer_is_better_and_unknown_home_is_neutral() {
        let f = fixture(&[]);
        let mut near = user();
        near.home = Some(GeoPoint {
            lat: 52.3676,
            lon: 4.92,
        });
        let mut far = user();
        far.home = Some(GeoPoint {
            lat: 52.0,
            lon: 4.9,
        });
        let (near, far, nowhere) = (scored(&f, &near), scored(&f, &far), scored(&f, &user()));
        assert!(near.signals.distance > 0.7 && far.signals.distance < 0.001);
        assert_eq!(nowhere.signals.distance, 0.0);
        assert!(
            near.reasons
                .iter()
                .any(|r| r.to_string() == "1.1 km from home")
        );
    }

    #[test]
    fn popularity_and_trend_rise_with_joins() {
        let mut f = fixture(&[]);
        let before = scored(&f, &user());
        for _ in 0..30 {
            f.catalog
                .joined(UserId::from(Uuid::now_v7()), f.event, now());
        }
        let after = scored(&f, &user());
        assert!(after.signals.popularity > before.signals.popularity);
        assert!(after.signals.trend > 0.95, "{}", after.signals.trend);
        assert!(after.reasons.contains(&Reason::FillingFast));
        // The same joins two days ago have cooled off.
        let mut g = fixture(&[]);
        for _ in 0..30 {
            g.catalog.joined(
                UserId::from(Uuid::now_v7()),
                g.event,
                now() - Duration::days(2),
            );
        }
        assert!(scored(&g, &user()).signals.trend < 0.2);
    }

    #[test]
    fn sooner_is_better() {
        let mut f = fixture(&[]);
        let later = EventId::from(Uuid::now_v7());
        f.catalog
            .apply(&published(later, f.venue, &[], now() + Duration::days(20)));
        let soon = scored(&f, &user());
        let late = score(
            &user(),
            f.catalog.card(later).unwrap(),
            None,
            now(),
            &Weights::default(),
            0,
        )
        .unwrap();
        assert!(soon.signals.soon > late.signals.soon);
        assert!(
            soon.reasons
                .iter()
                .any(|r| r.to_string() == "starts in 2 days")
        );
    }

    #[test]
    fn a_full_event_with_a_long_waitlist_ranks_lower() {
        let mut f = fixture(&[]);
        let mut full = published(f.event, f.venue, &[], now() + Duration::days(2));
        full.version = 2;
        full.active = 100;
        let open = scored(&f, &user());
        f.catalog.apply(&full);
        let no_queue = scored(&f, &user());
        full.version = 3;
        full.waitlist = 100;
        f.catalog.apply(&full);
        let long_queue = scored(&f, &user());
        assert_eq!(open.signals.availability, 1.0);
        assert_eq!(no_queue.signals.availability, 0.5);
        assert!((long_queue.signals.availability - 0.1).abs() < 1e-9);
        assert!(open.score > no_queue.score && no_queue.score > long_queue.score);
    }

    #[test]
    fn scarcity_is_named() {
        let mut f = fixture(&[]);
        let mut nearly = published(f.event, f.venue, &[], now() + Duration::days(2));
        nearly.version = 2;
        nearly.active = 98;
        f.catalog.apply(&nearly);
        assert!(scored(&f, &user()).reasons.contains(&Reason::PlacesLeft(2)));
    }

    #[test]
    fn fresh_events_are_explored_until_people_join() {
        let mut f = fixture(&[]);
        let new = EventId::from(Uuid::now_v7());
        let mut announced = published(new, f.venue, &[], now() + Duration::days(2));
        announced.at = now() - Duration::hours(1);
        f.catalog.apply(&announced);
        let card = f.catalog.card(new).unwrap();
        let s = score(&user(), card, None, now(), &Weights::default(), 0).unwrap();
        assert!(s.signals.fresh > 0.9);
        assert!(s.reasons.contains(&Reason::JustAnnounced));
        // Ten days old: nothing left of it.
        assert!(scored(&f, &user()).signals.fresh < 0.001);
    }

    #[test]
    fn exclusions() {
        let mut f = fixture(&[]);
        let card = f.catalog.card(f.event).unwrap().clone();
        let w = Weights::default();
        let mut joined = user();
        joined.record_join(f.event);
        assert!(
            score(&joined, &card, None, now(), &w, 0).is_none(),
            "joined"
        );

        let owner = Profile::new(card.owner, vec![], None, []);
        assert!(score(&owner, &card, None, now(), &w, 0).is_none(), "owned");

        let started = now() + Duration::days(3);
        assert!(
            score(&user(), &card, None, started, &w, 0).is_none(),
            "started"
        );

        for lifecycle in [Lifecycle::Cancelled, Lifecycle::Draft] {
            let mut changed = published(f.event, f.venue, &[], now() + Duration::days(2));
            changed.lifecycle = lifecycle;
            changed.version += 1;
            let other = EventId::from(Uuid::now_v7());
            changed.id = other;
            f.catalog.apply(&changed);
            match f.catalog.card(other) {
                Some(card) => assert!(
                    score(&user(), card, None, now(), &w, 0).is_none(),
                    "{lifecycle:?}"
                ),
                // A draft has no card to score.
                None => assert_eq!(lifecycle, Lifecycle::Draft),
            }
        }
    }

    #[test]
    fn reasons_are_bounded_and_strongest_first() {
        let mut f = fixture(&["jazz"]);
        for _ in 0..40 {
            f.catalog
                .joined(UserId::from(Uuid::now_v7()), f.event, now());
        }
        let mut fan = user();
        fan.interests = vec![tag("jazz")];
        fan.home = Some(AMSTERDAM);
        let s = scored(&f, &fan);
        assert!(s.reasons.len() <= MAX_REASONS);
        assert_eq!(s.reasons[0], Reason::Interest(vec![tag("jazz")]));
    }
}
