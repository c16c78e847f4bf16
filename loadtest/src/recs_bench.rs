//! Recommendation benchmarks on a large synthetic city, in process:
//!
//! - `rank`: how long ranking one user takes over ~100,000 upcoming events
//!   (candidate pruning, not a scan), as percentiles.
//! - `live`: thousands of users with live lists (recommender actors); one
//!   new event that belongs in everyone's top 10 is committed, and the time
//!   until each user's list is pushed is measured. Also the memory each
//!   recommender actor costs (resident set size before and after).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use clap::Args;
use turnout_actors::domain::{EventId, GeoPoint, Lifecycle, Tag, UserId, VenueId};
use turnout_actors::recommend::{
    Catalog, EventUpdate, ListSink, Profile, ProfileSeed, RankSettings, RankedList,
    RecommendSettings, RecommendationSource, Recommenders, rank,
};
use turnout_actors::store::StoreError;
use uuid::Uuid;

use crate::city::{CENTRE, City, CityParams, TAGS, generate};
use crate::recs_eval::{catalog_at_cutoff, event_id};
use crate::report::{Percentiles, latency_histogram};

#[derive(Args, Clone)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Events in the city; about four in five are still to come.
    #[arg(long, default_value_t = 125_000)]
    pub events: usize,
    #[arg(long, default_value_t = 500)]
    pub venues: usize,
    /// People with histories (they make the joins, heat and co-attendance).
    #[arg(long, default_value_t = 5_000)]
    pub people: usize,
    /// Users ranked (`rank`) or connected (`live`).
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
}

pub fn city(args: &BenchArgs) -> City {
    generate(CityParams {
        seed: args.seed,
        venues: args.venues,
        events: args.events,
        people: args.people,
        past_days: 15,
        ahead_days: 60,
        announce_days: 75,
        now: Utc::now(),
    })
}

fn user_id(i: usize) -> UserId {
    UserId::from(Uuid::from_u128(
        0xC000_0000_0000_0000_0000_0000_0000_0000 | i as u128,
    ))
}

fn seed_of(city: &City, person: usize) -> ProfileSeed {
    let p = &city.people[person % city.people.len()];
    ProfileSeed {
        interests: p
            .interests
            .iter()
            .filter_map(|t| Tag::parse(t).ok())
            .collect(),
        home: Some(GeoPoint {
            lat: p.home.0,
            lon: p.home.1,
        }),
        joins: Vec::new(),
    }
}

/// Ranks `users` people one after another; prints and returns percentiles.
pub fn rank_bench(args: &BenchArgs) -> Percentiles {
    let built = Instant::now();
    let city = city(args);
    let catalog = catalog_at_cutoff(&city);
    let (events, open) = catalog.len();
    println!(
        "catalog: {events} events, {open} open, {} joins; built in {:.1} s",
        city.joins.len(),
        built.elapsed().as_secs_f64()
    );
    let settings = RankSettings::default();
    let mut histogram = latency_histogram();
    let now = city.params.now;
    let mut histories: HashMap<usize, Vec<EventId>> = HashMap::new();
    for j in city.joins.iter().filter(|j| j.at < now) {
        histories
            .entry(j.person)
            .or_default()
            .push(event_id(j.event));
    }
    for u in 0..args.users {
        let person = u % city.people.len();
        let seed = seed_of(&city, person);
        let mut profile = Profile::new(
            user_id(u),
            seed.interests,
            seed.home,
            histories.get(&person).cloned().unwrap_or_default(),
        );
        let started = Instant::now();
        profile.learn(&catalog, settings.utc_offset_minutes);
        let list = rank(&catalog, &profile, &settings, now, 10);
        histogram
            .record(started.elapsed().as_micros().max(1) as u64)
            .expect("in range");
        assert!(!list.is_empty());
    }
    let p = Percentiles::of(&histogram);
    println!(
        "rank one user (profile learning included), {} users: p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
        p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
    );
    p
}

struct Seeds(HashMap<UserId, ProfileSeed>);

#[async_trait]
impl RecommendationSource for Seeds {
    async fn profile(&self, user: UserId) -> Result<ProfileSeed, StoreError> {
        Ok(self.0.get(&user).cloned().unwrap_or_default())
    }

    async fn venue(&self, _: VenueId) -> Result<Option<GeoPoint>, StoreError> {
        Ok(Some(GeoPoint {
            lat: CENTRE.0,
            lon: CENTRE.1,
        }))
    }
}

/// Reports each list a user receives: (user, when, whether it shows `watch`).
struct Probe {
    user: usize,
    watch: EventId,
    out: mpsc::Sender<(usize, Instant, bool)>,
}

impl ListSink for Probe {
    fn deliver(&mut self, list: &RankedList) -> bool {
        let shows = list.items.iter().any(|(r, _)| r.event == self.watch);
        self.out.send((self.user, Instant::now(), shows)).is_ok()
    }
}

fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

pub struct LiveResult {
    pub reached: usize,
    pub push: Percentiles,
    pub bytes_per_actor: f64,
}

/// Runs inside its own actix system (call from a plain thread).
pub fn live_bench(args: &BenchArgs) -> LiveResult {
    let city = city(args);
    let catalog: Catalog = catalog_at_cutoff(&city);
    let seeds: HashMap<UserId, ProfileSeed> = (0..args.users)
        .map(|u| (user_id(u), seed_of(&city, u)))
        .collect();
    let users = args.users;
    actix::System::new().block_on(async move {
        let thread = actix::Arbiter::new();
        let settings = RecommendSettings::default();
        let debounce = settings.debounce;
        let recommenders = Recommenders::start(catalog, Arc::new(Seeds(seeds)), settings, thread.handle());
        let festival = EventId::from(Uuid::now_v7());
        let (out, lists) = mpsc::channel();

        let before = resident_bytes();
        for u in 0..users {
            let probe = Probe {
                user: u,
                watch: festival,
                out: out.clone(),
            };
            recommenders.subscribe(user_id(u), u as u64, Box::new(probe));
        }
        let mut first = vec![false; users];
        let mut have = 0;
        while have < users {
            let (u, _, _) = lists.recv_timeout(Duration::from_secs(120)).expect("first lists");
            if !std::mem::replace(&mut first[u], true) {
                have += 1;
            }
        }
        let bytes_per_actor = resident_bytes().saturating_sub(before) as f64 / users as f64;
        println!(
            "{users} recommender actors ranked; {:.1} KiB resident per actor",
            bytes_per_actor / 1024.0
        );

        // A festival for every taste, at the centre, tomorrow evening: it
        // belongs in everyone's top 10.
        let tags: Vec<Tag> = TAGS.iter().take(Tag::MAX_PER_EVENT).filter_map(|t| Tag::parse(t).ok()).collect();
        let starts_at = (Utc::now() + chrono::Duration::days(1))
            .date_naive()
            .and_hms_opt(19, 0, 0)
            .expect("valid time")
            .and_utc();
        let committed = Instant::now();
        recommenders.apply(EventUpdate {
            id: festival,
            owner: UserId::from(Uuid::nil()),
            title: "City festival".into(),
            venue: VenueId::from(Uuid::nil()),
            starts_at,
            tags,
            lifecycle: Lifecycle::Published,
            capacity: 100_000,
            active: 0,
            offered: 0,
            waitlist: 0,
            version: 1,
            joined: Vec::new(),
            left: Vec::new(),
            at: Utc::now(),
        });
        let mut histogram = latency_histogram();
        let mut reached = vec![false; users];
        let mut count = 0;
        while count < users {
            match lists.recv_timeout(Duration::from_secs(30)) {
                Ok((u, at, true)) if !reached[u] => {
                    reached[u] = true;
                    count += 1;
                    histogram
                        .record(at.duration_since(committed).as_micros().max(1) as u64)
                        .expect("in range");
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let push = Percentiles::of(&histogram);
        println!(
            "one new event, {count} of {users} lists pushed (debounce {} ms included): p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            debounce.as_millis(),
            push.p50_ms,
            push.p90_ms,
            push.p99_ms,
            push.max_ms
        );
        thread.stop();
        LiveResult {
            reached: count,
            push,
            bytes_per_actor,
        }
    })
}
