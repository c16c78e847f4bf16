//! Offline evaluation of recommendations on a synthetic city: the catalog
//! learns from every join made before a cut-off; each person's joins after
//! it are held out. Turnout's ranking and a popularity-only baseline each
//! pick ten events per person at the cut-off, and are scored against the
//! held-out joins (precision@10, recall@10, NDCG@10), split by how many
//! joins the person had before the cut-off — so cold start shows.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use turnout_actors::domain::{EventId, GeoPoint, Lifecycle, Tag, UserId, VenueId};
use turnout_actors::recommend::{
    Catalog, EventUpdate, Profile, RankSettings, popularity_baseline, rank,
};
use uuid::Uuid;

use crate::city::City;

pub const K: usize = 10;

/// Precision, recall and NDCG at `k` with binary relevance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Metrics {
    pub precision: f64,
    pub recall: f64,
    pub ndcg: f64,
}

impl Metrics {
    pub fn of(ranked: &[EventId], relevant: &HashSet<EventId>, k: usize) -> Self {
        if relevant.is_empty() {
            return Self::default();
        }
        let top = &ranked[..ranked.len().min(k)];
        let gain = |i: usize| 1.0 / ((i + 2) as f64).log2();
        let hits: Vec<usize> = top
            .iter()
            .enumerate()
            .filter(|(_, e)| relevant.contains(e))
            .map(|(i, _)| i)
            .collect();
        let dcg: f64 = hits.iter().map(|&i| gain(i)).sum();
        let ideal: f64 = (0..relevant.len().min(k)).map(gain).sum();
        Self {
            precision: hits.len() as f64 / k as f64,
            recall: hits.len() as f64 / relevant.len() as f64,
            ndcg: dcg / ideal,
        }
    }
}

/// Averages over the people of one cohort.
#[derive(Debug, Clone, Serialize)]
pub struct Cohort {
    pub name: &'static str,
    pub people: usize,
    pub turnout: Metrics,
    pub popularity: Metrics,
    /// Turnout's NDCG@10 over the baseline's.
    pub ndcg_ratio: f64,
}

#[derive(Default)]
struct Sum {
    people: usize,
    turnout: Metrics,
    popularity: Metrics,
}

impl Sum {
    fn add(&mut self, turnout: Metrics, popularity: Metrics) {
        self.people += 1;
        for (total, m) in [
            (&mut self.turnout, turnout),
            (&mut self.popularity, popularity),
        ] {
            total.precision += m.precision;
            total.recall += m.recall;
            total.ndcg += m.ndcg;
        }
    }

    fn cohort(&self, name: &'static str) -> Cohort {
        let n = self.people.max(1) as f64;
        let mean = |m: Metrics| Metrics {
            precision: m.precision / n,
            recall: m.recall / n,
            ndcg: m.ndcg / n,
        };
        let (turnout, popularity) = (mean(self.turnout), mean(self.popularity));
        Cohort {
            name,
            people: self.people,
            turnout,
            popularity,
            ndcg_ratio: if popularity.ndcg > 0.0 {
                turnout.ndcg / popularity.ndcg
            } else {
                f64::INFINITY
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Evaluation {
    pub seed: u64,
    pub events: usize,
    pub people: usize,
    pub training_joins: usize,
    pub held_out_joins: usize,
    /// `all`, then by joins before the cut-off: `0`, `1-5`, `6+`.
    pub cohorts: Vec<Cohort>,
}

/// The id the evaluation gives the city's `i`th event.
pub fn event_id(i: usize) -> EventId {
    EventId::from(Uuid::from_u128(
        0xE000_0000_0000_0000_0000_0000_0000_0000 | i as u128,
    ))
}

fn user_id(i: usize) -> UserId {
    UserId::from(Uuid::from_u128(
        0xA000_0000_0000_0000_0000_0000_0000_0000 | i as u128,
    ))
}

fn venue_id(i: usize) -> VenueId {
    VenueId::from(Uuid::from_u128(
        0xB000_0000_0000_0000_0000_0000_0000_0000 | i as u128,
    ))
}

fn tags(raw: &[&str]) -> Vec<Tag> {
    raw.iter().filter_map(|t| Tag::parse(t).ok()).collect()
}

/// The catalog as it stood at the cut-off: events announced by then, and
/// the joins made before it.
pub fn catalog_at_cutoff(city: &City) -> Catalog {
    let now = city.params.now;
    let mut catalog = Catalog::default();
    for (i, v) in city.venues.iter().enumerate() {
        catalog.venue_located(
            venue_id(i),
            GeoPoint {
                lat: v.lat,
                lon: v.lon,
            },
        );
    }
    let organiser = UserId::from(Uuid::nil());
    for (i, e) in city.events.iter().enumerate() {
        if e.published_at > now {
            continue;
        }
        catalog.apply(&EventUpdate {
            id: event_id(i),
            owner: organiser,
            title: e.title.clone(),
            venue: venue_id(e.venue),
            starts_at: e.starts_at,
            tags: tags(&e.tags),
            lifecycle: Lifecycle::Published,
            // Capacity is not what this evaluation is about.
            capacity: 100_000,
            active: 0,
            offered: 0,
            waitlist: 0,
            version: 1,
            joined: Vec::new(),
            left: Vec::new(),
            at: e.published_at,
        });
    }
    for j in city.joins.iter().filter(|j| j.at < now) {
        catalog.joined(user_id(j.person), event_id(j.event), j.at);
    }
    catalog.maintain(now, now - chrono::Duration::days(180));
    catalog
}

pub fn evaluate(city: &City, settings: &RankSettings) -> Evaluation {
    let now = city.params.now;
    let catalog = catalog_at_cutoff(city);
    let mut before: HashMap<usize, Vec<EventId>> = HashMap::new();
    let mut after: HashMap<usize, HashSet<EventId>> = HashMap::new();
    let (mut training, mut held_out) = (0, 0);
    for j in &city.joins {
        let event = &city.events[j.event];
        if j.at < now {
            before.entry(j.person).or_default().push(event_id(j.event));
            training += 1;
        } else if event.published_at <= now && event.starts_at > now {
            after.entry(j.person).or_default().insert(event_id(j.event));
            held_out += 1;
        }
    }
    let (mut all, mut cold, mut some, mut many) = (
        Sum::default(),
        Sum::default(),
        Sum::default(),
        Sum::default(),
    );
    for (p, relevant) in &after {
        let person = &city.people[*p];
        let history = before.get(p).cloned().unwrap_or_default();
        let past = history.len();
        let mut profile = Profile::new(
            user_id(*p),
            tags(&person.interests),
            Some(GeoPoint {
                lat: person.home.0,
                lon: person.home.1,
            }),
            history,
        );
        profile.learn(&catalog, settings.utc_offset_minutes);
        let ours: Vec<EventId> = rank(&catalog, &profile, settings, now, K)
            .into_iter()
            .map(|r| r.event)
            .collect();
        let theirs = popularity_baseline(&catalog, &profile, now, K);
        let (ours, theirs) = (
            Metrics::of(&ours, relevant, K),
            Metrics::of(&theirs, relevant, K),
        );
        all.add(ours, theirs);
        match past {
            0 => cold.add(ours, theirs),
            1..=5 => some.add(ours, theirs),
            _ => many.add(ours, theirs),
        }
    }
    Evaluation {
        seed: city.params.seed,
        events: city.events.len(),
        people: city.people.len(),
        training_joins: training,
        held_out_joins: held_out,
        cohorts: vec![
            all.cohort("all"),
            cold.cohort("0 past joins"),
            some.cohort("1-5 past joins"),
            many.cohort("6+ past joins"),
        ],
    }
}

impl Evaluation {
    pub fn print(&self) {
        println!(
            "synthetic city: seed {}, {} events, {} people; {} joins before the cut-off, {} held out",
            self.seed, self.events, self.people, self.training_joins, self.held_out_joins
        );
        println!(
            "{:<16} {:>6}  {:>9} {:>9} {:>9}  {:>9} {:>9} {:>9}  {:>7}",
            "cohort",
            "people",
            "P@10",
            "R@10",
            "NDCG@10",
            "pop P@10",
            "pop R@10",
            "pop NDCG",
            "ratio"
        );
        for c in &self.cohorts {
            let ratio = if c.ndcg_ratio.is_finite() {
                format!("{:.2}x", c.ndcg_ratio)
            } else {
                "n/a".to_owned()
            };
            println!(
                "{:<16} {:>6}  {:>9.4} {:>9.4} {:>9.4}  {:>9.4} {:>9.4} {:>9.4}  {:>7}",
                c.name,
                c.people,
                c.turnout.precision,
                c.turnout.recall,
                c.turnout.ndcg,
                c.popularity.precision,
                c.popularity.recall,
                c.popularity.ndcg,
                ratio
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::city::{CityParams, generate};
    use chrono::{TimeZone, Utc};

    fn ids(n: usize) -> Vec<EventId> {
        (0..n).map(event_id).collect()
    }

    #[test]
    fn metrics_match_hand_computed_values() {
        let ranked = ids(10);
        let relevant: HashSet<EventId> = [event_id(0), event_id(2), event_id(42)].into();
        let m = Metrics::of(&ranked, &relevant, 10);
        assert!((m.precision - 0.2).abs() < 1e-12);
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12);
        // DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3) + 1/log2(4).
        let ideal = 1.0 + 1.0 / 3f64.log2() + 0.5;
        assert!((m.ndcg - 1.5 / ideal).abs() < 1e-12);

        let perfect: HashSet<EventId> = [event_id(0)].into();
        assert_eq!(Metrics::of(&ranked, &perfect, 10).ndcg, 1.0);
        assert_eq!(Metrics::of(&[], &perfect, 10), Metrics::default());
    }

    /// A small city: the ranking must beat popularity, cold start included.
    #[test]
    fn turnout_beats_popularity_on_a_small_city() {
        let city = generate(CityParams {
            seed: 11,
            venues: 12,
            events: 600,
            people: 400,
            past_days: 45,
            ahead_days: 30,
            announce_days: 21,
            now: Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap(),
        });
        let result = evaluate(&city, &RankSettings::default());
        let all = &result.cohorts[0];
        assert!(all.people > 100, "{}", all.people);
        assert!(all.ndcg_ratio > 1.5, "{result:#?}");
        assert!(result.cohorts[1].ndcg_ratio > 1.2, "{result:#?}");
    }
}
