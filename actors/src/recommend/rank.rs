//! Ranking one user: gather candidates from the catalog's indexes — the
//! user's tags, the cells around home, co-attended events, the hottest and
//! the newest — score each, keep the best. Never a scan of every event.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use super::catalog::{Catalog, CoEvidence, FastMap};
use super::profile::Profile;
use super::score::{self, CoAttendance, Reason, Weights};
use crate::domain::EventId;

/// Joins of the user that co-attendance looks through, newest first.
const CO_HISTORY: usize = 16;
/// Learned tags that fetch candidates, besides the declared interests.
const LEARNED_TAGS: usize = 3;

#[derive(Debug, Clone)]
pub struct RankSettings {
    pub weights: Weights,
    /// Only events starting within this many days are candidates.
    pub horizon_days: i64,
    /// Candidates taken from each tag, from around home, from co-attendance
    /// and from the soonest events.
    pub per_source: usize,
    /// The hottest events are always candidates…
    pub hottest: usize,
    /// …and so are the newest (exploration).
    pub newest: usize,
    /// "Around home" means within this radius.
    pub radius_km: f64,
    /// The city's offset from UTC, for parts of the day.
    pub utc_offset_minutes: i32,
}

impl Default for RankSettings {
    fn default() -> Self {
        Self {
            weights: Weights::default(),
            horizon_days: 30,
            per_source: 150,
            hottest: 100,
            newest: 50,
            radius_km: 5.0,
            utc_offset_minutes: 0,
        }
    }
}

/// One recommended event.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub event: EventId,
    pub score: f64,
    pub reasons: Vec<Reason>,
}

/// The user's best `limit` events, best first.
pub fn rank(
    catalog: &Catalog,
    profile: &Profile,
    settings: &RankSettings,
    now: DateTime<Utc>,
    limit: usize,
) -> Vec<Recommendation> {
    ranked(catalog, profile, settings, now, limit).0
}

/// The best `len` events, and the score of the best candidate left out
/// (−∞ if none was): every candidate not returned scores at most that.
pub(crate) fn ranked(
    catalog: &Catalog,
    profile: &Profile,
    settings: &RankSettings,
    now: DateTime<Utc>,
    len: usize,
) -> (Vec<Recommendation>, f64) {
    let history: Vec<EventId> = profile.recent_joins().take(CO_HISTORY).collect();
    let co = catalog.co_evidence(&history);
    let offset = settings.utc_offset_minutes;
    // Score every candidate cheaply; explain only the ones kept.
    let mut scored: Vec<(f64, EventId)> = candidates(catalog, profile, settings, now, &co)
        .into_iter()
        .filter_map(|id| {
            let card = catalog.card(id)?;
            let strength = co.get(&id).map(|e| e.strength);
            let s = score::signals(profile, card, strength, now, offset)?;
            Some((s.total(&settings.weights), id))
        })
        .collect();
    let best_first =
        |a: &(f64, EventId), b: &(f64, EventId)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if scored.len() > len + 1 {
        scored.select_nth_unstable_by(len, best_first);
        scored.truncate(len + 1);
    }
    scored.sort_by(best_first);
    let floor = scored
        .get(len)
        .map_or(f64::NEG_INFINITY, |(score, _)| *score);
    scored.truncate(len);
    let kept = scored
        .into_iter()
        .filter_map(|(_, id)| score_with(catalog, profile, settings, now, id, co.get(&id)))
        .collect();
    (kept, floor)
}

/// A user's best events kept up to date one change at a time. It holds the
/// best `capacity` events and the *floor*: the score of the best candidate
/// left out, so nothing outside scores above it. A changed event is
/// re-scored alone and moves in or out against the floor; only when fewer
/// than a full list remain does the caller need to rank in full again.
#[derive(Debug, Clone)]
pub struct LiveList {
    buffer: Vec<Recommendation>,
    floor: f64,
    capacity: usize,
}

impl Default for LiveList {
    fn default() -> Self {
        Self {
            buffer: Vec::new(),
            floor: f64::NEG_INFINITY,
            capacity: 0,
        }
    }
}

impl LiveList {
    pub fn rank(
        catalog: &Catalog,
        profile: &Profile,
        settings: &RankSettings,
        now: DateTime<Utc>,
        capacity: usize,
    ) -> Self {
        let (buffer, floor) = ranked(catalog, profile, settings, now, capacity);
        Self {
            buffer,
            floor,
            capacity,
        }
    }

    /// Re-scores the changed events. False when the list may have lost
    /// events it cannot replace (fewer than `needed` left, with candidates
    /// outside): rank in full.
    pub fn rescore(
        &mut self,
        catalog: &Catalog,
        profile: &Profile,
        settings: &RankSettings,
        now: DateTime<Utc>,
        changed: &[EventId],
        needed: usize,
    ) -> bool {
        for &event in changed {
            if let Some(at) = self.buffer.iter().position(|r| r.event == event) {
                self.buffer.remove(at);
            }
            let Some(fresh) = score_event(catalog, profile, settings, now, event) else {
                continue;
            };
            // At or below the floor it joins the events outside, all of
            // which the floor still bounds.
            if fresh.score > self.floor {
                let at = self.buffer.partition_point(|r| {
                    r.score > fresh.score || (r.score == fresh.score && r.event < fresh.event)
                });
                self.buffer.insert(at, fresh);
                if self.buffer.len() > self.capacity
                    && let Some(dropped) = self.buffer.pop()
                {
                    self.floor = self.floor.max(dropped.score);
                }
            }
        }
        self.buffer.len() >= needed || self.floor == f64::NEG_INFINITY
    }

    /// The best `k`, best first.
    pub fn top(&self, k: usize) -> &[Recommendation] {
        &self.buffer[..self.buffer.len().min(k)]
    }
}

/// Scores one event for the user (incremental updates); `None` when it is
/// not to be recommended.
pub fn score_event(
    catalog: &Catalog,
    profile: &Profile,
    settings: &RankSettings,
    now: DateTime<Utc>,
    event: EventId,
) -> Option<Recommendation> {
    let history: Vec<EventId> = profile.recent_joins().take(CO_HISTORY).collect();
    let co = catalog.co_evidence_for(&history, event);
    score_with(catalog, profile, settings, now, event, co.as_ref())
}

fn score_with(
    catalog: &Catalog,
    profile: &Profile,
    settings: &RankSettings,
    now: DateTime<Utc>,
    event: EventId,
    co: Option<&CoEvidence>,
) -> Option<Recommendation> {
    let card = catalog.card(event)?;
    let co = co.and_then(|e| {
        Some(CoAttendance {
            strength: e.strength,
            because: Arc::clone(&catalog.card(e.because)?.title),
        })
    });
    let scored = score::score(
        profile,
        card,
        co.as_ref(),
        now,
        &settings.weights,
        settings.utc_offset_minutes,
    )?;
    Some(Recommendation {
        event,
        score: scored.score,
        reasons: scored.reasons,
    })
}

fn candidates(
    catalog: &Catalog,
    profile: &Profile,
    settings: &RankSettings,
    now: DateTime<Utc>,
    co: &FastMap<EventId, CoEvidence>,
) -> Vec<EventId> {
    let until = now + Duration::days(settings.horizon_days);
    let n = settings.per_source;
    let mut found: Vec<EventId> = Vec::with_capacity(8 * n);
    let learned = profile.top_learned_tags(LEARNED_TAGS);
    let mut tags: Vec<_> = profile.interests.iter().collect();
    tags.extend(
        learned
            .into_iter()
            .filter(|t| !profile.interests.contains(t)),
    );
    for tag in tags {
        found.extend(catalog.with_tag(tag, now, until).take(n));
    }
    if let Some(home) = profile.home {
        found.extend(catalog.near(home, settings.radius_km, now, until, n));
    }
    let mut co_ranked: Vec<(&EventId, &CoEvidence)> = co.iter().collect();
    if co_ranked.len() > n {
        co_ranked.select_nth_unstable_by(n, |a, b| b.1.strength.total_cmp(&a.1.strength));
        co_ranked.truncate(n);
    }
    found.extend(co_ranked.into_iter().map(|(id, _)| *id));
    found.extend(catalog.hottest().take(settings.hottest));
    found.extend(catalog.newest().take(settings.newest));
    found.extend(catalog.open().take(n).map(|c| c.id));
    found.sort_unstable();
    found.dedup();
    found
}

/// The baseline the evaluation compares against: the open events with the
/// most joiners, with the same exclusions. A full scan, for offline use.
pub fn popularity_baseline(
    catalog: &Catalog,
    profile: &Profile,
    now: DateTime<Utc>,
    limit: usize,
) -> Vec<EventId> {
    let mut open: Vec<_> = catalog
        .open()
        .filter(|card| score::eligible(profile, card, now))
        .map(|card| (card.joiners, card.id))
        .collect();
    open.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    open.into_iter().take(limit).map(|(_, id)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{GeoPoint, Lifecycle, Tag, UserId, VenueId};
    use crate::recommend::catalog::EventUpdate;
    use uuid::Uuid;

    fn event(catalog: &mut Catalog, venue: VenueId, tags: &[&str], days: i64) -> EventId {
        let id = EventId::from(Uuid::now_v7());
        catalog.apply(&EventUpdate {
            id,
            owner: UserId::from(Uuid::now_v7()),
            title: format!("{tags:?} in {days} days"),
            venue,
            starts_at: Utc::now() + Duration::days(days),
            tags: tags.iter().map(|t| Tag::parse(t).unwrap()).collect(),
            lifecycle: Lifecycle::Published,
            capacity: 50,
            active: 0,
            offered: 0,
            waitlist: 0,
            version: 1,
            joined: vec![],
            left: vec![],
            at: Utc::now() - Duration::days(5),
        });
        id
    }

    #[test]
    fn interests_rank_first_and_joined_events_are_left_out() {
        let mut catalog = Catalog::default();
        let venue = VenueId::from(Uuid::now_v7());
        let jazz = event(&mut catalog, venue, &["jazz"], 3);
        let joined_jazz = event(&mut catalog, venue, &["jazz"], 3);
        for _ in 0..300 {
            event(&mut catalog, venue, &["rock"], 3);
        }
        let mut profile = Profile::new(
            UserId::from(Uuid::now_v7()),
            vec![Tag::parse("jazz").unwrap()],
            None,
            [joined_jazz],
        );
        profile.learn(&catalog, 0);
        let top = rank(&catalog, &profile, &RankSettings::default(), Utc::now(), 5);
        assert_eq!(top[0].event, jazz);
        assert!(top.iter().all(|r| r.event != joined_jazz));
        assert_eq!(top.len(), 5);
    }

    #[test]
    fn co_attendance_surfaces_what_similar_people_joined() {
        let mut catalog = Catalog::default();
        let venue = VenueId::from(Uuid::now_v7());
        let liked = event(&mut catalog, venue, &[], 2);
        let also = event(&mut catalog, venue, &[], 20);
        for _ in 0..400 {
            event(&mut catalog, venue, &[], 1);
        }
        for _ in 0..5 {
            let other = UserId::from(Uuid::now_v7());
            catalog.joined(other, liked, Utc::now());
            catalog.joined(other, also, Utc::now());
        }
        let me = UserId::from(Uuid::now_v7());
        catalog.joined(me, liked, Utc::now());
        let mut profile = Profile::new(me, vec![], None, [liked]);
        profile.learn(&catalog, 0);
        let top = rank(&catalog, &profile, &RankSettings::default(), Utc::now(), 3);
        assert_eq!(top[0].event, also);
        assert!(
            top[0]
                .reasons
                .iter()
                .any(|r| matches!(r, Reason::CoAttendance(_)))
        );
    }

    #[test]
    fn candidates_are_pruned_but_home_and_heat_still_reach_far_events() {
        let mut catalog = Catalog::default();
        let home = GeoPoint {
            lat: 52.37,
            lon: 4.90,
        };
        let (near_venue, far_venue) =
            (VenueId::from(Uuid::now_v7()), VenueId::from(Uuid::now_v7()));
        catalog.venue_located(near_venue, home);
        catalog.venue_located(
            far_venue,
            GeoPoint {
                lat: 53.0,
                lon: 6.0,
            },
        );
        for _ in 0..2000 {
            event(&mut catalog, far_venue, &["rock"], 1);
        }
        let nearby_late = event(&mut catalog, near_venue, &[], 25);
        let profile = Profile::new(UserId::from(Uuid::now_v7()), vec![], Some(home), []);
        let settings = RankSettings::default();
        let found = candidates(
            &catalog,
            &profile,
            &settings,
            Utc::now(),
            &FastMap::default(),
        );
        assert!(found.len() < 600, "{}", found.len());
        assert!(found.contains(&nearby_late));
        let top = rank(&catalog, &profile, &settings, Utc::now(), 1);
        assert_eq!(top[0].event, nearby_late);
    }

    #[test]
    fn the_floor_bounds_what_was_left_out() {
        let mut catalog = Catalog::default();
        let venue = VenueId::from(Uuid::now_v7());
        for days in 1..30 {
            event(&mut catalog, venue, &[], days);
        }
        let profile = Profile::new(UserId::from(Uuid::now_v7()), vec![], None, []);
        let settings = RankSettings::default();
        let (top, floor) = ranked(&catalog, &profile, &settings, Utc::now(), 5);
        let all = rank(&catalog, &profile, &settings, Utc::now(), 100);
        assert_eq!(top, all[..5]);
        assert_eq!(floor, all[5].score);
    }

    #[test]
    fn popularity_baseline_orders_by_joiners() {
        let mut catalog = Catalog::default();
        let venue = VenueId::from(Uuid::now_v7());
        let (quiet, busy) = (
            event(&mut catalog, venue, &[], 2),
            event(&mut catalog, venue, &[], 2),
        );
        for _ in 0..3 {
            catalog.joined(UserId::from(Uuid::now_v7()), busy, Utc::now());
        }
        let profile = Profile::new(UserId::from(Uuid::now_v7()), vec![], None, []);
        assert_eq!(
            popularity_baseline(&catalog, &profile, Utc::now(), 2),
            vec![busy, quiet]
        );
    }

    mod incremental {
        use super::*;
        use chrono::TimeZone;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Change {
            Join { event: usize },
            Publish { tags: u8, days: i64, near: bool },
            Cancel { event: usize },
            Fill { event: usize, waitlist: u32 },
        }

        fn changes() -> impl Strategy<Value = Change> {
            prop_oneof![
                3 => (0..64usize).prop_map(|event| Change::Join { event }),
                2 => (0u8..16, 1i64..29, any::<bool>())
                    .prop_map(|(tags, days, near)| Change::Publish { tags, days, near }),
                1 => (0..64usize).prop_map(|event| Change::Cancel { event }),
                1 => (0..64usize, 0u32..40).prop_map(|(event, waitlist)| Change::Fill { event, waitlist }),
            ]
        }

        const TAGS: [&str; 4] = ["jazz", "rock", "food", "film"];

        fn update(
            id: EventId,
            venue: VenueId,
            tags: u8,
            days: i64,
            at: DateTime<Utc>,
        ) -> EventUpdate {
            EventUpdate {
                id,
                owner: UserId::from(Uuid::from_u128(1)),
                title: format!("{id:?}"),
                venue,
                starts_at: at + Duration::days(days),
                tags: (0..4)
                    .filter(|i| tags & (1 << i) != 0)
                    .map(|i| Tag::parse(TAGS[i]).unwrap())
                    .collect(),
                lifecycle: Lifecycle::Published,
                capacity: 30,
                active: 0,
                offered: 0,
                waitlist: 0,
                version: 1,
                joined: vec![],
                left: vec![],
                at,
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Whatever changes, the incrementally kept list shows exactly
            /// what ranking from scratch would. (Co-attendance is left out:
            /// a join there also moves events that did not change, which the
            /// actors' periodic full refresh picks up.)
            #[test]
            fn incremental_updates_match_ranking_from_scratch(
                script in prop::collection::vec(changes(), 1..60)
            ) {
                const SHOWN: usize = 5;
                let now = Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap();
                let at = now - Duration::hours(1);
                let home = GeoPoint { lat: 52.37, lon: 4.90 };
                let (near, far) = (VenueId::from(Uuid::from_u128(2)), VenueId::from(Uuid::from_u128(3)));
                let mut catalog = Catalog::default();
                catalog.venue_located(near, home);
                catalog.venue_located(far, GeoPoint { lat: 52.30, lon: 4.70 });
                let mut events: Vec<EventUpdate> = (0..12u8)
                    .map(|i| {
                        let venue = if i % 2 == 0 { near } else { far };
                        update(EventId::from(Uuid::from_u128(100 + u128::from(i))), venue, i % 16, 1 + i64::from(i), at)
                    })
                    .collect();
                for e in &events {
                    catalog.apply(e);
                }
                let profile = Profile::new(
                    UserId::from(Uuid::from_u128(9)),
                    vec![Tag::parse("jazz").unwrap()],
                    Some(home),
                    [],
                );
                let settings = RankSettings::default();
                let mut live = LiveList::rank(&catalog, &profile, &settings, now, SHOWN + 3);
                for (step, change) in script.into_iter().enumerate() {
                    let n = events.len();
                    let changed = match change {
                        Change::Join { event } => {
                            let id = events[event % n].id;
                            catalog.joined(UserId::from(Uuid::from_u128(1000 + step as u128)), id, at);
                            id
                        }
                        Change::Publish { tags, days, near: close } => {
                            let id = EventId::from(Uuid::from_u128(500 + step as u128));
                            events.push(update(id, if close { near } else { far }, tags, days, at));
                            catalog.apply(events.last().unwrap());
                            id
                        }
                        Change::Cancel { event } => {
                            let e = &mut events[event % n];
                            e.lifecycle = Lifecycle::Cancelled;
                            e.version += 1;
                            catalog.apply(e);
                            e.id
                        }
                        Change::Fill { event, waitlist } => {
                            let e = &mut events[event % n];
                            e.active = e.capacity;
                            e.waitlist = waitlist;
                            e.version += 1;
                            catalog.apply(e);
                            e.id
                        }
                    };
                    if !live.rescore(&catalog, &profile, &settings, now, &[changed], SHOWN) {
                        live = LiveList::rank(&catalog, &profile, &settings, now, SHOWN + 3);
                    }
                    let expected: Vec<EventId> =
                        rank(&catalog, &profile, &settings, now, SHOWN).iter().map(|r| r.event).collect();
                    let kept: Vec<EventId> = live.top(SHOWN).iter().map(|r| r.event).collect();
                    prop_assert_eq!(kept, expected, "after step {}", step);
                }
            }
        }
    }
}
