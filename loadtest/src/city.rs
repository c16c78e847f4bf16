//! A synthetic city, drawn from a fixed seed: venues around a centre, events
//! with tags and start times, and people with *hidden* true preferences —
//! favourite tags, how far they will travel, which part of the day they go
//! out — whose joins are drawn from those preferences. The recommendation
//! evaluation learns from the joins and is scored against the preferences'
//! later joins; the demo loader sends the same city through the API.

use chrono::{DateTime, Duration, Timelike, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Tags, most common first.
pub const TAGS: [&str; 24] = [
    "music",
    "food",
    "jazz",
    "theatre",
    "comedy",
    "art",
    "rock",
    "film",
    "tech",
    "running",
    "yoga",
    "wine",
    "books",
    "classical",
    "techno",
    "dance",
    "kids",
    "science",
    "history",
    "poetry",
    "chess",
    "salsa",
    "photography",
    "boardgames",
];

/// Title words by part of the day (morning, afternoon, evening, night).
const ADJECTIVES: [[&str; 4]; 4] = [
    ["Morning", "Early", "Sunrise", "Breakfast"],
    ["Open", "Little", "Canal", "Corner"],
    ["Grand", "Rooftop", "Secret", "Midweek"],
    ["Late", "Night", "Midnight", "After-hours"],
];

const VENUE_NAMES: [&str; 12] = [
    "Blue Room",
    "Paradiso Hall",
    "The Foundry",
    "Canal House",
    "North Stage",
    "Old Library",
    "Greenhouse",
    "Studio 9",
    "Harbour Shed",
    "Park Pavilion",
    "Attic",
    "Market Hall",
];

/// The city's centre (Amsterdam).
pub const CENTRE: (f64, f64) = (52.3676, 4.9041);

#[derive(Debug, Clone)]
pub struct CityParams {
    pub seed: u64,
    pub venues: usize,
    pub events: usize,
    pub people: usize,
    /// Events start between `now − past_days` and `now + ahead_days`.
    pub past_days: i64,
    pub ahead_days: i64,
    /// Events are announced this long before they start.
    pub announce_days: i64,
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct Venue {
    pub name: String,
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub title: String,
    pub venue: usize,
    pub starts_at: DateTime<Utc>,
    pub published_at: DateTime<Utc>,
    pub capacity: u32,
    pub tags: Vec<&'static str>,
    /// Hidden: how good it is, whatever one's taste.
    quality: f64,
}

#[derive(Debug, Clone)]
pub struct Person {
    pub home: (f64, f64),
    /// What they told the platform (may be empty, and is never all of it).
    pub interests: Vec<&'static str>,
    /// Hidden: how much they like each tag in [`TAGS`].
    taste: [f64; TAGS.len()],
    /// Hidden: the distance at which their interest falls to 1/e.
    reach_km: f64,
    /// Hidden: how likely they go out in each part of the day.
    slots: [f64; 4],
    /// Signed up at the cut-off (`params.now`): every join is after it.
    pub newcomer: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Join {
    pub person: usize,
    pub event: usize,
    pub at: DateTime<Utc>,
}

pub struct City {
    pub params: CityParams,
    pub venues: Vec<Venue>,
    pub events: Vec<Event>,
    pub people: Vec<Person>,
    /// In time order.
    pub joins: Vec<Join>,
}

/// Part of the day, as the recommender counts it (06–12, 12–17, 17–22, 22–06).
fn slot_of(t: DateTime<Utc>) -> usize {
    match t.hour() {
        6..=11 => 0,
        12..=16 => 1,
        17..=21 => 2,
        _ => 3,
    }
}

/// Kilometres, for the short distances inside a city.
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let dy = (a.0 - b.0) * 111.2;
    let dx = (a.1 - b.1) * 111.2 * a.0.to_radians().cos();
    (dx * dx + dy * dy).sqrt()
}

struct Draw(StdRng);

impl Draw {
    fn unit(&mut self) -> f64 {
        self.0.random::<f64>()
    }

    fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit().max(1e-12), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// A point around the centre, `sigma_km` spread.
    fn place(&mut self, sigma_km: f64) -> (f64, f64) {
        let lat = CENTRE.0 + self.normal() * sigma_km / 111.2;
        let lon = CENTRE.1 + self.normal() * sigma_km / (111.2 * CENTRE.0.to_radians().cos());
        (lat, lon)
    }

    /// An index drawn with the given weights.
    fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            x -= w;
            if x <= 0.0 {
                return i;
            }
        }
        weights.len() - 1
    }
}

/// How common each tag is (Zipf-like).
fn tag_weights() -> Vec<f64> {
    (0..TAGS.len())
        .map(|i| 1.0 / ((i + 1) as f64).powf(0.8))
        .collect()
}

pub fn generate(params: CityParams) -> City {
    let mut draw = Draw(StdRng::seed_from_u64(params.seed));
    let tag_weights = tag_weights();

    let venues: Vec<Venue> = (0..params.venues)
        .map(|i| {
            let (lat, lon) = draw.place(3.0);
            let name = VENUE_NAMES[i % VENUE_NAMES.len()];
            let name = if i < VENUE_NAMES.len() {
                name.to_owned()
            } else {
                format!("{name} {}", i / VENUE_NAMES.len() + 1)
            };
            Venue { name, lat, lon }
        })
        .collect();

    let span_days = params.past_days + params.ahead_days;
    let events: Vec<Event> = (0..params.events)
        .map(|_| {
            let mut tags: Vec<&'static str> = Vec::new();
            let count = 1 + usize::from(draw.unit() < 0.6) + usize::from(draw.unit() < 0.2);
            while tags.len() < count {
                let tag = TAGS[draw.weighted(&tag_weights)];
                if !tags.contains(&tag) {
                    tags.push(tag);
                }
            }
            let slot = draw.weighted(&[0.15, 0.25, 0.45, 0.15]);
            let hour = match slot {
                0 => 9 + draw.below(3),
                1 => 13 + draw.below(4),
                2 => 18 + draw.below(4),
                _ => 22 + draw.below(2),
            } as i64;
            let day = draw.below(span_days as usize) as i64 - params.past_days;
            let midnight = params
                .now
                .date_naive()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc();
            let starts_at = midnight
                + Duration::days(day)
                + Duration::hours(hour)
                + Duration::minutes(30 * draw.below(2) as i64);
            let adjective = ADJECTIVES[slot][draw.below(4)];
            let mut title = format!("{adjective} {}", tags[0]);
            title[..1].make_ascii_uppercase();
            Event {
                title,
                venue: draw.below(venues.len().max(1)),
                starts_at,
                published_at: starts_at - Duration::days(params.announce_days),
                capacity: [20, 50, 80, 150, 300][draw.below(5)],
                tags,
                quality: (0.5 * draw.normal()).exp(),
            }
        })
        .collect();

    let people: Vec<Person> = (0..params.people)
        .map(|_| {
            let mut taste = [0.03; TAGS.len()];
            let favourites = 2 + draw.below(3);
            let mut ranked: Vec<usize> = Vec::new();
            while ranked.len() < favourites {
                let t = draw.weighted(&tag_weights);
                if !ranked.contains(&t) {
                    ranked.push(t);
                    taste[t] = 0.4 + 0.6 * draw.unit();
                }
            }
            ranked.sort_by(|a, b| taste[*b].total_cmp(&taste[*a]));
            let interests = if draw.unit() < 0.75 {
                let declared = 1 + usize::from(draw.unit() < 0.5);
                ranked.iter().take(declared).map(|t| TAGS[*t]).collect()
            } else {
                Vec::new()
            };
            let mut slots = [0.15; 4];
            slots[draw.weighted(&[0.15, 0.25, 0.45, 0.15])] = 0.55;
            Person {
                home: draw.place(4.0),
                interests,
                taste,
                reach_km: 2.0 + 8.0 * draw.unit(),
                slots,
                newcomer: draw.unit() < 0.15,
            }
        })
        .collect();

    let tag_indexes: Vec<Vec<usize>> = events
        .iter()
        .map(|e| {
            e.tags
                .iter()
                .map(|t| TAGS.iter().position(|x| x == t).expect("a known tag"))
                .collect()
        })
        .collect();
    let mut joins = Vec::new();
    let mut utility = vec![0.0; events.len()];
    for (p, person) in people.iter().enumerate() {
        // How active: a quarter hardly go out, some go out a lot.
        let n = match draw.unit() {
            x if x < 0.25 => draw.below(3),
            x if x < 0.70 => 3 + draw.below(8),
            _ => 11 + draw.below(20),
        };
        let near: Vec<f64> = venues
            .iter()
            .map(|v| (-distance_km(person.home, (v.lat, v.lon)) / person.reach_km).exp())
            .collect();
        for (e, event) in events.iter().enumerate() {
            let tags: f64 = tag_indexes[e].iter().map(|t| person.taste[*t]).sum();
            utility[e] = tags
                * tags
                * near[event.venue]
                * person.slots[slot_of(event.starts_at)]
                * event.quality;
            if person.newcomer && event.starts_at <= params.now + Duration::hours(1) {
                utility[e] = 0.0;
            }
        }
        if utility.iter().all(|u| *u == 0.0) {
            continue;
        }
        // Cumulative weights: each draw is a binary search, not a scan.
        let mut cumulative = Vec::with_capacity(utility.len());
        let mut total = 0.0;
        for u in &utility {
            total += u;
            cumulative.push(total);
        }
        let mut chosen: Vec<usize> = Vec::new();
        for _ in 0..n.min(events.len()) {
            let x = draw.unit() * total;
            let e = cumulative.partition_point(|c| *c < x).min(events.len() - 1);
            if chosen.contains(&e) || utility[e] == 0.0 {
                continue;
            }
            chosen.push(e);
            let event = &events[e];
            let mut earliest = event.published_at.max(event.starts_at - Duration::days(14));
            if person.newcomer {
                earliest = earliest.max(params.now);
            }
            let window = (event.starts_at - earliest).num_minutes().max(1);
            let at = earliest + Duration::minutes(draw.0.random_range(0..window));
            joins.push(Join {
                person: p,
                event: e,
                at,
            });
        }
    }
    joins.sort_by_key(|j| j.at);
    City {
        params,
        venues,
        events,
        people,
        joins,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn params(seed: u64) -> CityParams {
        CityParams {
            seed,
            venues: 10,
            events: 300,
            people: 100,
            past_days: 30,
            ahead_days: 30,
            announce_days: 21,
            now: Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap(),
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_city() {
        let (a, b) = (generate(params(7)), generate(params(7)));
        assert_eq!(a.joins.len(), b.joins.len());
        assert!(
            a.joins
                .iter()
                .zip(&b.joins)
                .all(|(x, y)| (x.person, x.event, x.at) == (y.person, y.event, y.at))
        );
        let c = generate(params(8));
        assert_ne!(
            a.joins.iter().map(|j| j.event).collect::<Vec<_>>(),
            c.joins.iter().map(|j| j.event).collect::<Vec<_>>()
        );
    }

    #[test]
    fn joins_follow_the_hidden_tastes_and_happen_before_the_start() {
        let city = generate(params(7));
        assert!(city.joins.windows(2).all(|w| w[0].at <= w[1].at));
        let mut liked = 0;
        for j in &city.joins {
            let event = &city.events[j.event];
            assert!(j.at < event.starts_at && j.at >= event.published_at);
            let person = &city.people[j.person];
            let best = event
                .tags
                .iter()
                .map(|t| person.taste[TAGS.iter().position(|x| x == t).unwrap()])
                .fold(0.0, f64::max);
            if best > 0.3 {
                liked += 1;
            }
        }
        // Nearly every join is of an event carrying a favourite tag.
        assert!(
            liked * 10 > city.joins.len() * 9,
            "{liked} of {}",
            city.joins.len()
        );
    }
}
