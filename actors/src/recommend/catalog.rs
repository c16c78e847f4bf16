//! The catalog: everything recommendations know about events, kept in memory
//! and indexed so that ranking one user looks at a few hundred candidates
//! rather than every upcoming event.
//!
//! It is fed by committed changes (and loaded from the read models at
//! start), so it is as fresh as the live updates. Indexes hold only
//! *candidates*: published events that have not started. Cards of past
//! events stay for a while because users' histories point at them
//! (co-attendance, "people who joined Late jazz joined this").

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::changes::EventChange;
use itertools::Itertools;

use crate::domain::{EventId, GeoBox, GeoPoint, Lifecycle, Tag, UserId, VenueId, haversine_km};

/// Heat (join velocity) halves every this many hours.
pub const HEAT_HALF_LIFE_HOURS: f64 = 6.0;
/// How many recent joins of each user feed co-attendance.
pub const HISTORY_LEN: usize = 32;
/// Side of a grid cell, in degrees of latitude and longitude (~5.5 km N–S).
const CELL_DEG: f64 = 0.05;
/// Heat is measured against this instant (2020-01-01), in seconds.
const HEAT_EPOCH_SECS: f64 = 1_577_836_800.0;

/// What the catalog knows about one event.
#[derive(Debug, Clone)]
pub struct EventCard {
    pub id: EventId,
    pub owner: UserId,
    pub title: Arc<str>,
    pub venue: VenueId,
    /// The venue's position, once the catalog knows the venue.
    pub place: Option<GeoPoint>,
    pub starts_at: DateTime<Utc>,
    /// Shared with the card's index keys, which every join takes afresh.
    pub tags: Arc<[Tag]>,
    pub lifecycle: Lifecycle,
    pub capacity: u32,
    /// Seats taken: active, or held on offer.
    pub active: u32,
    /// Of those, the seats held on offer.
    pub offered: u32,
    pub waitlist: u32,
    /// When the catalog first saw it published: new events get explored.
    pub published_at: Option<DateTime<Utc>>,
    /// Users who joined and have not left, as far as the catalog has seen.
    pub joiners: u32,
    pub version: u64,
    /// Counts the changes to what a list shows of the event besides its
    /// counts (its title, start and venue): a list that showed an earlier
    /// one is pushed again.
    pub looks: u64,
    /// ln Σ exp((tᵢ − epoch)/τ) over the join times tᵢ of the members it
    /// has: in log form it never overflows, and the order of events by heat
    /// does not change as time passes, so the heat index needs no
    /// re-sorting. A leave takes back what its join gave, so joining and
    /// leaving over and over (one account, ten joins a minute) heats
    /// nothing, and the heat is what a load from the read model (members
    /// and when they joined) rebuilds after a restart.
    log_heat: f64,
}

impl EventCard {
    pub fn places_left(&self) -> u32 {
        self.capacity.saturating_sub(self.active)
    }

    /// The members' joins, each weighted by exp(−age/τ): a half-life of
    /// [`HEAT_HALF_LIFE_HOURS`].
    pub fn heat(&self, now: DateTime<Utc>) -> f64 {
        if self.log_heat == f64::NEG_INFINITY {
            return 0.0;
        }
        (self.log_heat - heat_exponent(now)).exp()
    }

    /// Published and not yet started.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        self.lifecycle == Lifecycle::Published && self.starts_at > now
    }

    fn start_key(&self) -> (i64, EventId) {
        (self.starts_at.timestamp_micros(), self.id)
    }

    fn index_keys(&self) -> IndexKeys {
        IndexKeys {
            start: self.start_key(),
            tags: self.tags.clone(),
            cell: self.place.map(cell_of),
            heat: self.heat_key(),
            published: self.published_at.map(|at| (at.timestamp_micros(), self.id)),
        }
    }

    fn heat_key(&self) -> (i64, EventId) {
        let key = if self.log_heat == f64::NEG_INFINITY {
            i64::MIN
        } else {
            (self.log_heat * 1e6) as i64
        };
        (key, self.id)
    }
}

/// Where an open card sits in the catalog's indexes.
struct IndexKeys {
    start: (i64, EventId),
    tags: Arc<[Tag]>,
    cell: Option<Cell>,
    heat: (i64, EventId),
    published: Option<(i64, EventId)>,
}

fn heat_exponent(t: DateTime<Utc>) -> f64 {
    let tau = HEAT_HALF_LIFE_HOURS * 3600.0 / std::f64::consts::LN_2;
    (t.timestamp_micros() as f64 / 1e6 - HEAT_EPOCH_SECS) / tau
}

/// ln(eᵃ − eᵇ), or −∞ (no heat) when eᵇ takes all of eᵃ.
fn log_sub_exp(a: f64, b: f64) -> f64 {
    if b >= a {
        return f64::NEG_INFINITY;
    }
    a + (-(b - a).exp()).ln_1p()
}

/// ln(eᵃ + eᵇ) without overflow.
fn log_add_exp(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    hi + (lo - hi).exp().ln_1p()
}

/// One committed change of one event, as the catalog needs it.
#[derive(Debug, Clone)]
pub struct EventUpdate {
    pub id: EventId,
    pub owner: UserId,
    pub title: String,
    pub venue: VenueId,
    pub starts_at: DateTime<Utc>,
    pub tags: Vec<Tag>,
    pub lifecycle: Lifecycle,
    pub capacity: u32,
    /// Seats taken: active, or held on offer (as good as taken for a
    /// newcomer).
    pub active: u32,
    /// Of those, the seats held on offer.
    pub offered: u32,
    pub waitlist: u32,
    pub version: u64,
    /// Users who joined (active or waitlisted) in this change, and who
    /// left, each with when they joined: a leave takes back what its join
    /// gave the event's heat.
    pub joined: Vec<(UserId, DateTime<Utc>)>,
    pub left: Vec<(UserId, DateTime<Utc>)>,
    pub at: DateTime<Utc>,
}

impl From<&EventChange> for EventUpdate {
    fn from(change: &EventChange) -> Self {
        let summary = &change.summary;
        Self {
            id: summary.id,
            owner: summary.owner,
            title: summary.details.title.as_str().to_owned(),
            venue: summary.details.venue_id,
            starts_at: summary.details.starts_at,
            tags: summary.details.tags.clone(),
            lifecycle: summary.lifecycle,
            capacity: summary.capacity.get() as u32,
            active: (summary.active_count + summary.offered_count) as u32,
            offered: summary.offered_count as u32,
            waitlist: summary.waitlist_count as u32,
            version: summary.version,
            joined: change.joined().collect(),
            left: change.left().collect(),
            at: change.committed_at,
        }
    }
}

/// Co-attendance evidence for one candidate: how strongly the user's joins
/// point at it, and the joined event that points hardest.
#[derive(Debug, Clone, Copy)]
pub struct CoEvidence {
    pub strength: f64,
    pub because: EventId,
    best: f64,
}

impl Default for CoEvidence {
    fn default() -> Self {
        Self {
            strength: 0.0,
            because: EventId::from(Uuid::nil()),
            best: 0.0,
        }
    }
}

impl CoEvidence {
    /// Adds what joined event `a` contributes.
    fn add(&mut self, a: EventId, strength: f64) {
        self.strength += strength;
        if strength > self.best {
            self.best = strength;
            self.because = a;
        }
    }
}

type Cell = (i32, i32);
/// Hash maps on the ranking path: ids are random already, so a fast hash
/// is as good as SipHash here and much cheaper.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Index = BTreeSet<(i64, EventId)>;

/// A user's most recent joins (at most [`HISTORY_LEN`]), oldest first, in a
/// slice of exactly their size: the catalog holds one for every user who
/// joined anything in its window, most of them with a join or two, so the
/// spare room a growable queue keeps would be most of what they cost.
#[derive(Debug, Default)]
struct RecentJoins(Box<[EventId]>);

impl RecentJoins {
    fn contains(&self, event: &EventId) -> bool {
        self.0.contains(event)
    }

    fn iter(&self) -> std::slice::Iter<'_, EventId> {
        self.0.iter()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds the newest join, letting go of the oldest beyond the bound.
    fn push(&mut self, event: EventId) {
        let keep = self.0.len().min(HISTORY_LEN - 1);
        let mut joins = Vec::with_capacity(keep + 1);
        joins.extend_from_slice(&self.0[self.0.len() - keep..]);
        joins.push(event);
        self.0 = joins.into_boxed_slice();
    }

    /// Whether `event` was there to remove.
    fn remove(&mut self, event: EventId) -> bool {
        let before = self.0.len();
        self.retain(|e| *e != event);
        self.0.len() < before
    }

    fn retain(&mut self, keep: impl Fn(&EventId) -> bool) {
        if !self.0.iter().all(&keep) {
            self.0 = self.0.iter().copied().filter(|e| keep(e)).collect();
        }
    }
}

#[derive(Debug, Default)]
pub struct Catalog {
    cards: FastMap<EventId, EventCard>,
    venues: HashMap<VenueId, GeoPoint>,
    by_start: Index,
    by_tag: HashMap<Tag, Index>,
    by_cell: HashMap<Cell, Index>,
    by_heat: Index,
    by_published: Index,
    /// Each user's recent joins, oldest first.
    histories: HashMap<UserId, RecentJoins>,
    /// `co[a][b]`: users who joined both a and b; `b` is always an event
    /// that was open when the pair was recorded.
    co: FastMap<EventId, FastMap<EventId, u32>>,
    /// The latest time the catalog has been told of: whether an event has
    /// started is judged against it, so replayed histories and simulations
    /// see the same catalog as live traffic.
    clock: DateTime<Utc>,
}

fn cell_of(p: GeoPoint) -> Cell {
    (
        (p.lat / CELL_DEG).floor() as i32,
        (p.lon / CELL_DEG).floor() as i32,
    )
}

/// How near and how far from `centre` a grid cell's points lie, in km, give
/// or take a margin that errs wide: its nearest point as if the cell were
/// flat (the centre's latitude and longitude each brought into the cell's
/// span, across the antimeridian too), and its farthest corner. A cell of
/// 0.05° is flat to within metres for circles of up to a few hundred km
/// (`recommendations.radius_km` is at most 200) away from the poles; the
/// margin covers that. Near a pole the way to a cell may cross it, and
/// there every cell counts as reached.
fn cell_reach((y, x): Cell, centre: GeoPoint) -> (f64, f64) {
    const MARGIN_KM: f64 = 0.5;
    const POLAR_DEG: f64 = 85.0;
    let (south, west) = (f64::from(y) * CELL_DEG, f64::from(x) * CELL_DEG);
    let (north, east) = (south + CELL_DEG, west + CELL_DEG);
    let at = |lat: f64, lon: f64| haversine_km(centre, GeoPoint { lat, lon });
    let lat = centre.lat.clamp(south, north);
    let nearest = if centre.lat.abs() >= POLAR_DEG || south.abs().max(north.abs()) >= POLAR_DEG {
        0.0
    } else {
        [-360.0, 0.0, 360.0]
            .into_iter()
            .map(|turn| at(lat, (centre.lon + turn).clamp(west, east)))
            .fold(f64::INFINITY, f64::min)
    };
    let farthest = [(south, west), (south, east), (north, west), (north, east)]
        .into_iter()
        .map(|(lat, lon)| at(lat, lon))
        .fold(0.0, f64::max);
    ((nearest - MARGIN_KM).max(0.0), farthest + MARGIN_KM)
}

/// The index's entries starting in `(from, to)`, soonest first.
fn starting_between(
    index: &Index,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> impl Iterator<Item = (i64, EventId)> + '_ {
    let lo = (from.timestamp_micros(), EventId::from(Uuid::max()));
    let hi = (to.timestamp_micros(), EventId::from(Uuid::nil()));
    index
        .range((Bound::Excluded(lo), Bound::Excluded(hi)))
        .copied()
}

impl Catalog {
    pub fn card(&self, id: EventId) -> Option<&EventCard> {
        self.cards.get(&id)
    }

    /// Events known, and of those the open ones (the candidates).
    pub fn len(&self) -> (usize, usize) {
        (self.cards.len(), self.by_start.len())
    }

    pub fn is_empty(&self) -> bool {
        self.cards.is_empty()
    }

    pub fn venue_located(&mut self, venue: VenueId, place: GeoPoint) {
        self.venues.insert(venue, place);
        let ids: Vec<EventId> = self
            .cards
            .values()
            .filter(|c| c.venue == venue && c.place != Some(place))
            .map(|c| c.id)
            .collect();
        for id in ids {
            self.modify(id, |card| card.place = Some(place));
        }
    }

    pub fn knows_venue(&self, venue: VenueId) -> bool {
        self.venues.contains_key(&venue)
    }

    /// Applies one committed change; stale details (an older version) are
    /// ignored, but its joins and leaves are facts of their own and count.
    pub fn apply(&mut self, u: &EventUpdate) {
        self.clock = self.clock.max(u.at);
        // A draft is recommended to nobody, and anyone may make drafts by
        // the thousand: no card until it is published. (A cancellation
        // still makes one: it may have overtaken the publishing, which must
        // then find the event cancelled.)
        if u.lifecycle == Lifecycle::Draft && !self.cards.contains_key(&u.id) {
            return;
        }
        let place = self.venues.get(&u.venue).copied();
        self.cards.entry(u.id).or_insert_with(|| EventCard {
            id: u.id,
            owner: u.owner,
            title: Arc::from(u.title.as_str()),
            venue: u.venue,
            place,
            starts_at: u.starts_at,
            tags: Arc::from([]),
            lifecycle: Lifecycle::Draft,
            capacity: u.capacity,
            active: 0,
            offered: 0,
            waitlist: 0,
            published_at: None,
            joiners: 0,
            version: 0,
            looks: 0,
            log_heat: f64::NEG_INFINITY,
        });
        self.modify(u.id, |card| {
            if u.version <= card.version {
                return;
            }
            if *card.title != *u.title || card.starts_at != u.starts_at || card.venue != u.venue {
                card.looks += 1;
            }
            if *card.title != *u.title {
                card.title = Arc::from(u.title.as_str());
            }
            card.owner = u.owner;
            card.venue = u.venue;
            card.place = place;
            card.starts_at = u.starts_at;
            if *card.tags != *u.tags {
                card.tags = Arc::from(u.tags.as_slice());
            }
            card.lifecycle = u.lifecycle;
            card.capacity = u.capacity;
            card.active = u.active;
            card.offered = u.offered;
            card.waitlist = u.waitlist;
            card.version = u.version;
            if u.lifecycle == Lifecycle::Published && card.published_at.is_none() {
                card.published_at = Some(u.at);
            }
        });
        for &(user, at) in &u.joined {
            self.joined(user, u.id, at);
        }
        for &(user, joined_at) in &u.left {
            self.left(user, u.id, joined_at);
        }
    }

    /// Applies a change again to a catalog read from the store while it was
    /// being committed. A card at the change's version or later was read
    /// with it, joins and leaves included: the change is skipped, where
    /// [`Catalog::apply`] would count a late change's joins (a change that
    /// comes out of order comes once). Not quite exact: a load reads the
    /// events, then their joins, so a join committed between the two reads
    /// counts twice (a leave not at all) — heat a little off, no card's
    /// details or lifecycle.
    pub fn reapply(&mut self, u: &EventUpdate) {
        if self
            .cards
            .get(&u.id)
            .is_none_or(|card| card.version < u.version)
        {
            self.apply(u);
        }
    }

    /// Records a join: heat, the joiner count, and co-attendance with the
    /// user's recent joins.
    pub fn joined(&mut self, user: UserId, event: EventId, at: DateTime<Utc>) {
        if !self.cards.contains_key(&event) {
            return;
        }
        self.modify(event, |card| {
            card.joiners += 1;
            card.log_heat = log_add_exp(card.log_heat, heat_exponent(at));
        });
        let history = self.histories.entry(user).or_default();
        if history.contains(&event) {
            return;
        }
        for &earlier in history.iter() {
            *self
                .co
                .entry(earlier)
                .or_default()
                .entry(event)
                .or_default() += 1;
            if self.cards.get(&earlier).is_some_and(|c| c.is_open(at)) {
                *self
                    .co
                    .entry(event)
                    .or_default()
                    .entry(earlier)
                    .or_default() += 1;
            }
        }
        history.push(event);
    }

    /// Records a leave (or an offer declined or run out) of a member who
    /// joined at `joined_at`: the joiner count, heat (what the join gave is
    /// taken back), and co-attendance.
    pub fn left(&mut self, user: UserId, event: EventId, joined_at: DateTime<Utc>) {
        if self.cards.contains_key(&event) {
            self.modify(event, |card| {
                card.joiners = card.joiners.saturating_sub(1);
                card.log_heat = log_sub_exp(card.log_heat, heat_exponent(joined_at));
            });
        }
        let Some(history) = self.histories.get_mut(&user) else {
            return;
        };
        if !history.remove(event) {
            return;
        }
        for &other in history.iter() {
            for (a, b) in [(other, event), (event, other)] {
                if let Some(row) = self.co.get_mut(&a)
                    && let Some(n) = row.get_mut(&b)
                {
                    *n -= 1;
                    if *n == 0 {
                        row.remove(&b);
                    }
                }
            }
        }
    }

    /// Whether an event among the candidates has started by `now`.
    pub fn has_started(&self, now: DateTime<Utc>) -> bool {
        self.by_start
            .first()
            .is_some_and(|(at, _)| *at <= now.timestamp_micros())
    }

    /// Drops the events that started by `now` from the candidate indexes;
    /// their ids, for the lists that still show them.
    pub fn close_started(&mut self, now: DateTime<Utc>) -> Vec<EventId> {
        self.clock = self.clock.max(now);
        let started: Vec<EventId> = self
            .by_start
            .range(..(now.timestamp_micros() + 1, EventId::from(Uuid::nil())))
            .map(|(_, id)| *id)
            .collect();
        for &id in &started {
            self.modify(id, |_| {});
        }
        started
    }

    /// Drops started events from the candidate indexes (their ids are
    /// returned), forgets events that started before `forget_before`, and
    /// prunes co-attendance rows to events still open. Run every minute or
    /// so.
    pub fn maintain(&mut self, now: DateTime<Utc>, forget_before: DateTime<Utc>) -> Vec<EventId> {
        let started = self.close_started(now);
        let forgotten: Vec<EventId> = self
            .cards
            .values()
            .filter(|c| c.starts_at < forget_before)
            .map(|c| c.id)
            .collect();
        for id in &forgotten {
            self.cards.remove(id);
            self.co.remove(id);
        }
        let cards = &self.cards;
        for row in self.co.values_mut() {
            row.retain(|b, _| cards.get(b).is_some_and(|c| c.is_open(now)));
        }
        self.co.retain(|_, row| !row.is_empty());
        for history in self.histories.values_mut() {
            history.retain(|e| cards.contains_key(e));
        }
        self.histories.retain(|_, h| !h.is_empty());
        started
    }

    /// Changes a card and keeps the indexes in step with it.
    fn modify(&mut self, id: EventId, change: impl FnOnce(&mut EventCard)) {
        let Some(mut card) = self.cards.remove(&id) else {
            return;
        };
        let before = self
            .by_start
            .contains(&card.start_key())
            .then(|| card.index_keys());
        change(&mut card);
        let after = card.is_open(self.clock).then(|| card.index_keys());
        match (before, after) {
            (None, None) => {}
            (Some(before), None) => self.unindex(&before),
            (None, Some(after)) => self.index(&after),
            (Some(before), Some(after)) => self.reindex(&before, &after),
        }
        self.cards.insert(id, card);
    }

    /// Moves an indexed card only in the indexes whose keys changed: a
    /// join on a busy event moves its heat alone, new counts nothing.
    fn reindex(&mut self, before: &IndexKeys, after: &IndexKeys) {
        if before.start != after.start || before.tags != after.tags || before.cell != after.cell {
            self.unindex(before);
            self.index(after);
            return;
        }
        if before.heat != after.heat {
            self.by_heat.remove(&before.heat);
            self.by_heat.insert(after.heat);
        }
        if before.published != after.published {
            if let Some(published) = before.published {
                self.by_published.remove(&published);
            }
            if let Some(published) = after.published {
                self.by_published.insert(published);
            }
        }
    }

    fn index(&mut self, keys: &IndexKeys) {
        self.by_start.insert(keys.start);
        for tag in keys.tags.iter() {
            self.by_tag
                .entry(tag.clone())
                .or_default()
                .insert(keys.start);
        }
        if let Some(cell) = keys.cell {
            self.by_cell.entry(cell).or_default().insert(keys.start);
        }
        self.by_heat.insert(keys.heat);
        if let Some(published) = keys.published {
            self.by_published.insert(published);
        }
    }

    fn unindex(&mut self, keys: &IndexKeys) {
        self.by_start.remove(&keys.start);
        for tag in keys.tags.iter() {
            if let Some(index) = self.by_tag.get_mut(tag) {
                index.remove(&keys.start);
                if index.is_empty() {
                    self.by_tag.remove(tag);
                }
            }
        }
        if let Some(cell) = keys.cell
            && let Some(index) = self.by_cell.get_mut(&cell)
        {
            index.remove(&keys.start);
            if index.is_empty() {
                self.by_cell.remove(&cell);
            }
        }
        self.by_heat.remove(&keys.heat);
        if let Some(published) = keys.published {
            self.by_published.remove(&published);
        }
    }

    /// Open events with the tag starting in `(from, to)`, soonest first.
    pub(crate) fn with_tag(
        &self,
        tag: &Tag,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> impl Iterator<Item = EventId> + '_ {
        self.by_tag
            .get(tag)
            .into_iter()
            .flat_map(move |index| starting_between(index, from, to))
            .map(|(_, id)| id)
    }

    /// Up to `limit` open events at venues within `km` of `centre` starting
    /// in `(from, to)`, soonest first. The grid cells under the circle's box
    /// are merged by start (where the box spans more cells than hold any
    /// event — a circle that takes in a pole or crosses the antimeridian
    /// spans every longitude — the cells that do are looked through
    /// instead); a cell the circle misses is left out, one wholly inside it
    /// is taken unmeasured, and an event in a cell on the circle's edge is
    /// measured. At most `NEAR_LOOKS_PER_EVENT` × `limit` entries are looked
    /// at: a busy district in a cell on the edge of a quiet circle ends the
    /// search early rather than measuring its every event.
    pub(crate) fn near(
        &self,
        centre: GeoPoint,
        km: f64,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> impl Iterator<Item = EventId> + '_ {
        const NEAR_LOOKS_PER_EVENT: usize = 4;
        let area = GeoBox::around(centre, km);
        let (lo, hi) = (
            cell_of(GeoPoint {
                lat: area.south,
                lon: area.west,
            }),
            cell_of(GeoPoint {
                lat: area.north,
                lon: area.east,
            }),
        );
        let spanned = u64::from((hi.0 - lo.0 + 1).unsigned_abs())
            * u64::from((hi.1 - lo.1 + 1).unsigned_abs());
        let in_box: Vec<(Cell, &Index)> = if spanned <= self.by_cell.len() as u64 {
            (lo.0..=hi.0)
                .flat_map(|y| (lo.1..=hi.1).map(move |x| (y, x)))
                .filter_map(|cell| Some((cell, self.by_cell.get(&cell)?)))
                .collect()
        } else {
            self.by_cell
                .iter()
                .filter(|((y, x), _)| (lo.0..=hi.0).contains(y) && (lo.1..=hi.1).contains(x))
                .map(|(cell, index)| (*cell, index))
                .collect()
        };
        in_box
            .into_iter()
            .filter_map(|(cell, index)| {
                let (nearest, farthest) = cell_reach(cell, centre);
                (nearest <= km).then(|| {
                    let measure = farthest > km;
                    starting_between(index, from, to).map(move |entry| (entry, measure))
                })
            })
            .kmerge()
            .take(NEAR_LOOKS_PER_EVENT.saturating_mul(limit))
            .filter(move |&((_, id), measure)| {
                !measure
                    || self
                        .cards
                        .get(&id)
                        .and_then(|card| card.place)
                        .is_some_and(|place| haversine_km(centre, place) <= km)
            })
            .map(|((_, id), _)| id)
            .take(limit)
    }

    /// Open events, hottest first.
    pub(crate) fn hottest(&self) -> impl Iterator<Item = EventId> + '_ {
        self.by_heat.iter().rev().map(|(_, id)| *id)
    }

    /// Open events, most recently published first.
    pub(crate) fn newest(&self) -> impl Iterator<Item = EventId> + '_ {
        self.by_published.iter().rev().map(|(_, id)| *id)
    }

    /// Every open event, soonest first.
    pub(crate) fn open(&self) -> impl Iterator<Item = &EventCard> + '_ {
        self.by_start
            .iter()
            .filter_map(|(_, id)| self.cards.get(id))
    }

    /// How strongly the user's recent joins point at each open event through
    /// co-attendance: Σ over joined events a of co(a, b) / √(n_a · n_b).
    pub(crate) fn co_evidence(&self, history: &[EventId]) -> FastMap<EventId, CoEvidence> {
        let mut evidence: FastMap<EventId, CoEvidence> = FastMap::default();
        for &a in history {
            let Some(row) = self.co.get(&a) else {
                continue;
            };
            for (&b, &count) in row {
                if let Some(s) = self.pair_strength(a, b, count) {
                    CoEvidence::add(evidence.entry(b).or_default(), a, s);
                }
            }
        }
        evidence
    }

    /// Co-attendance evidence for one event only (incremental updates).
    pub(crate) fn co_evidence_for(&self, history: &[EventId], b: EventId) -> Option<CoEvidence> {
        let mut found: Option<CoEvidence> = None;
        for &a in history {
            let Some(&count) = self.co.get(&a).and_then(|row| row.get(&b)) else {
                continue;
            };
            if let Some(s) = self.pair_strength(a, b, count) {
                CoEvidence::add(found.get_or_insert_with(CoEvidence::default), a, s);
            }
        }
        found
    }

    /// co(a, b) / √(nₐ · n_b); `None` when either card is gone.
    fn pair_strength(&self, a: EventId, b: EventId, count: u32) -> Option<f64> {
        let (n_a, n_b) = (self.cards.get(&a)?.joiners, self.cards.get(&b)?.joiners);
        Some(f64::from(count) / (f64::from(n_a.max(1)) * f64::from(n_b.max(1))).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_joins_keep_the_newest_in_a_slice_of_their_own_size() {
        let events: Vec<EventId> = (0..HISTORY_LEN + 2)
            .map(|_| EventId::from(Uuid::new_v4()))
            .collect();
        let mut joins = RecentJoins::default();
        joins.push(events[0]);
        assert_eq!(joins.0.len(), 1);
        for &event in &events[1..] {
            joins.push(event);
        }
        assert_eq!(&*joins.0, &events[2..], "the oldest two are let go");
        assert!(joins.remove(events[5]));
        assert!(!joins.remove(events[5]));
        assert!(!joins.contains(&events[5]));
        assert_eq!(joins.0.len(), HISTORY_LEN - 1);
        joins.retain(|_| false);
        assert!(joins.is_empty());
    }
    use chrono::Duration;

    fn update(id: EventId, starts_in_days: i64, tags: &[&str]) -> EventUpdate {
        EventUpdate {
            id,
            owner: UserId::from(Uuid::now_v7()),
            title: format!("event {id:?}"),
            venue: VenueId::from(Uuid::nil()),
            starts_at: Utc::now() + Duration::days(starts_in_days),
            tags: tags.iter().map(|t| Tag::parse(t).unwrap()).collect(),
            lifecycle: Lifecycle::Published,
            capacity: 10,
            active: 0,
            offered: 0,
            waitlist: 0,
            version: 1,
            joined: vec![],
            left: vec![],
            at: Utc::now(),
        }
    }

    fn new_id() -> EventId {
        EventId::from(Uuid::now_v7())
    }

    #[test]
    fn indexes_follow_lifecycle_and_time() {
        let mut catalog = Catalog::default();
        let (soon, later, draft) = (new_id(), new_id(), new_id());
        catalog.apply(&update(soon, 1, &["jazz"]));
        catalog.apply(&update(later, 40, &["jazz"]));
        catalog.apply(&EventUpdate {
            lifecycle: Lifecycle::Draft,
            ..update(draft, 1, &["jazz"])
        });
        let jazz = Tag::parse("jazz").unwrap();
        let now = Utc::now();
        let within_month: Vec<_> = catalog
            .with_tag(&jazz, now, now + Duration::days(30))
            .collect();
        assert_eq!(within_month, vec![soon]);
        assert_eq!(catalog.len(), (2, 2), "a draft leaves no card");

        let mut cancelled = update(soon, 1, &["jazz"]);
        cancelled.lifecycle = Lifecycle::Cancelled;
        cancelled.version = 2;
        catalog.apply(&cancelled);
        assert_eq!(
            catalog
                .with_tag(&jazz, now, now + Duration::days(30))
                .count(),
            0
        );
        assert_eq!(catalog.len(), (2, 1));
    }

    #[test]
    fn stale_details_are_ignored_but_their_joins_count() {
        let mut catalog = Catalog::default();
        let id = new_id();
        let mut newer = update(id, 2, &["jazz"]);
        newer.version = 5;
        newer.title = "newer".into();
        catalog.apply(&newer);
        let mut older = update(id, 2, &["rock"]);
        older.version = 4;
        older.title = "older".into();
        older.joined = vec![(UserId::from(Uuid::now_v7()), older.at)];
        catalog.apply(&older);
        let card = catalog.card(id).unwrap();
        assert_eq!(&*card.title, "newer");
        assert_eq!(card.joiners, 1);
        assert!(card.heat(Utc::now()) > 0.9);
    }

    #[test]
    fn a_change_reapplied_counts_only_where_the_catalog_was_read_before_it() {
        let mut catalog = Catalog::default();
        let id = new_id();
        let mut joined = update(id, 2, &["jazz"]);
        joined.joined = vec![(UserId::from(Uuid::now_v7()), joined.at)];
        catalog.apply(&joined);
        catalog.reapply(&joined);
        assert_eq!(
            catalog.card(id).unwrap().joiners,
            1,
            "read with it: skipped"
        );

        let mut next = joined.clone();
        next.version += 1;
        next.title = "next".into();
        next.joined = vec![(UserId::from(Uuid::now_v7()), next.at)];
        catalog.reapply(&next);
        let card = catalog.card(id).unwrap();
        assert_eq!(
            (&*card.title, card.joiners),
            ("next", 2),
            "read before it: applied"
        );
    }

    #[test]
    fn heat_halves_every_half_life_and_orders_the_index() {
        let mut catalog = Catalog::default();
        let (cold, hot) = (new_id(), new_id());
        catalog.apply(&update(cold, 3, &[]));
        catalog.apply(&update(hot, 3, &[]));
        let past = Utc::now() - Duration::hours(HEAT_HALF_LIFE_HOURS as i64);
        for _ in 0..4 {
            catalog.joined(UserId::from(Uuid::now_v7()), cold, past);
        }
        for _ in 0..3 {
            catalog.joined(UserId::from(Uuid::now_v7()), hot, Utc::now());
        }
        let now = Utc::now();
        let cold_heat = catalog.card(cold).unwrap().heat(now);
        assert!((cold_heat - 2.0).abs() < 0.01, "{cold_heat}");
        assert_eq!(catalog.hottest().collect::<Vec<_>>(), vec![hot, cold]);
    }

    /// One account joining and leaving over and over (as fast as its join
    /// budget lets it) heats nothing: one stranger's single join outranks it.
    #[test]
    fn joining_and_leaving_over_and_over_heats_nothing() {
        let mut catalog = Catalog::default();
        let (churned, liked) = (new_id(), new_id());
        catalog.apply(&update(churned, 3, &[]));
        catalog.apply(&update(liked, 3, &[]));
        let churner = UserId::from(Uuid::now_v7());
        let start = Utc::now() - Duration::hours(1);
        for minute in 0..60 {
            for second in [0, 30] {
                let at = start + Duration::minutes(minute) + Duration::seconds(second);
                catalog.joined(churner, churned, at);
                catalog.left(churner, churned, at);
            }
        }
        catalog.joined(UserId::from(Uuid::now_v7()), liked, start);
        let now = Utc::now();
        assert_eq!(catalog.card(churned).unwrap().heat(now), 0.0);
        assert_eq!(catalog.card(churned).unwrap().joiners, 0);
        assert_eq!(catalog.hottest().next(), Some(liked));
    }

    /// A leave takes back what its join gave, however long ago it was: a
    /// member of long standing who leaves does not cool the event below
    /// what the members who stay give it (as a load from the read model
    /// would count them).
    #[test]
    fn a_leave_takes_back_what_its_join_gave() {
        let mut catalog = Catalog::default();
        let id = new_id();
        catalog.apply(&update(id, 3, &[]));
        let now = Utc::now();
        let long_ago = now - Duration::days(2);
        let (stays, goes) = (UserId::from(Uuid::now_v7()), UserId::from(Uuid::now_v7()));
        catalog.joined(stays, id, now);
        catalog.joined(goes, id, long_ago);
        catalog.left(goes, id, long_ago);
        let heat = catalog.card(id).unwrap().heat(now);
        assert!((heat - 1.0).abs() < 1e-9, "{heat}");
        catalog.left(stays, id, now);
        assert_eq!(catalog.card(id).unwrap().heat(now), 0.0);
    }

    #[test]
    fn co_attendance_counts_shared_joiners_and_undoes_leaves() {
        let mut catalog = Catalog::default();
        let (a, b, c) = (new_id(), new_id(), new_id());
        for id in [a, b, c] {
            catalog.apply(&update(id, 2, &[]));
        }
        let (u1, u2) = (UserId::from(Uuid::now_v7()), UserId::from(Uuid::now_v7()));
        let now = Utc::now();
        for u in [u1, u2] {
            catalog.joined(u, a, now);
            catalog.joined(u, b, now);
        }
        catalog.joined(u1, c, now);
        let evidence = catalog.co_evidence(&[a]);
        // Both joiners of a joined b: 2 / √(2·2) = 1; one of them joined c: 1 / √(2·1).
        assert!((evidence[&b].strength - 1.0).abs() < 1e-9);
        assert!((evidence[&c].strength - 1.0 / 2f64.sqrt()).abs() < 1e-9);
        assert_eq!(evidence[&b].because, a);

        catalog.left(u1, c, now);
        assert!(!catalog.co_evidence(&[a]).contains_key(&c));
        assert!(catalog.co_evidence_for(&[a], c).is_none());
    }

    proptest::proptest! {
        /// Every point of a cell lies between the cell's reach from any
        /// centre it is near (across a pole and the antimeridian too): a
        /// cell the circle reaches is never left out, and one taken
        /// unmeasured holds nothing outside it.
        #[test]
        fn a_cells_points_lie_within_its_reach(
            (lat, dlon) in proptest::prop_oneof![
                (-89.9f64..89.9, -0.5f64..0.5),
                // Near a pole, a point on the far side of it.
                (
                    proptest::prop_oneof![88.7f64..89.9, -89.9f64..-88.7],
                    proptest::prop_oneof![-0.5f64..0.5, 179.5f64..180.5],
                ),
            ],
            lon in proptest::prop_oneof![-180.0f64..180.0, 179.0f64..180.0, -180.0f64..-179.0],
            dlat in -0.5f64..0.5,
        ) {
            let centre = GeoPoint { lat, lon };
            let lon = lon + dlon;
            let point = GeoPoint {
                lat: (lat + dlat).clamp(-89.999, 89.999),
                lon: if lon >= 180.0 { lon - 360.0 } else if lon < -180.0 { lon + 360.0 } else { lon },
            };
            let (nearest, farthest) = cell_reach(cell_of(point), centre);
            let distance = haversine_km(centre, point);
            // Circles are at most 200 km (`recommendations.radius_km`).
            proptest::prop_assume!(distance <= 300.0);
            proptest::prop_assert!(nearest <= distance && distance <= farthest,
                "{nearest} <= {distance} <= {farthest}");
        }
    }

    /// Given events at venues around a centre, when the catalog is asked
    /// for those within a radius, then it names the circle's events, soonest
    /// first whichever cell they lie in, and none outside the circle (a
    /// corner of its box): at mid-latitudes, far north and across the
    /// antimeridian.
    #[test]
    fn near_names_the_circles_events_soonest_first_wherever_it_lies() {
        let (now, km) = (Utc::now(), 6.0);
        for (centre, inside, outside) in [
            // Amsterdam: 5.5 km north-east and 5.5 km south-west (cells on
            // the circle's edge), 2 km away (in a cell wholly inside), and
            // a box corner 7.5 km away.
            (
                (52.37, 4.90),
                [(52.405, 4.958), (52.335, 4.842), (52.38, 4.92)],
                (52.42, 4.98),
            ),
            // 80° N, where a cell is 1 km from west to east.
            (
                (80.0, 10.0),
                [(80.004, 10.30), (79.99, 9.9), (80.01, 10.02)],
                (80.0, 10.4),
            ),
            // Across the antimeridian.
            (
                (0.0, 179.99),
                [(0.0, -179.98), (0.01, 179.96), (-0.01, 179.995)],
                (0.0, -179.9),
            ),
        ] {
            let mut catalog = Catalog::default();
            let point = |(lat, lon): (f64, f64)| GeoPoint { lat, lon };
            let mut within = Vec::new();
            let placed = [(1, inside[0]), (3, inside[1]), (4, inside[2]), (2, outside)];
            for (days, place) in placed {
                let (id, venue) = (new_id(), VenueId::from(Uuid::now_v7()));
                catalog.venue_located(venue, point(place));
                catalog.apply(&EventUpdate {
                    venue,
                    ..update(id, days, &[])
                });
                if place != outside {
                    within.push((days, id));
                }
            }
            within.sort();
            let found: Vec<EventId> = catalog
                .near(point(centre), km, now, now + Duration::days(7), 10)
                .collect();
            assert_eq!(
                found,
                within.iter().map(|(_, id)| *id).collect::<Vec<_>>(),
                "around {centre:?}"
            );
            for place in inside {
                assert!(haversine_km(point(centre), point(place)) <= km);
            }
            assert!(haversine_km(point(centre), point(outside)) > km);
        }
    }

    #[test]
    fn maintenance_drops_started_and_forgotten_events() {
        let mut catalog = Catalog::default();
        let (past, future) = (new_id(), new_id());
        catalog.apply(&update(past, 1, &[]));
        catalog.apply(&update(future, 5, &[]));
        let now = Utc::now() + Duration::days(2);
        assert!(!catalog.has_started(Utc::now()));
        assert!(catalog.has_started(now));
        // The started event's id goes to the lists that may show it, once.
        assert_eq!(catalog.maintain(now, now - Duration::days(30)), vec![past]);
        assert!(!catalog.has_started(now));
        assert_eq!(catalog.len(), (2, 1));
        assert_eq!(catalog.maintain(now, now), vec![]);
        assert_eq!(catalog.len(), (1, 1));
        assert!(catalog.card(past).is_none());
    }

    /// The indexes as they would be built afresh from the cards indexed
    /// now: what moving a card only where its keys changed must give.
    fn rebuilt(catalog: &Catalog) -> Catalog {
        let mut fresh = Catalog::default();
        for card in catalog.cards.values() {
            if catalog.by_start.contains(&card.start_key()) {
                fresh.index(&card.index_keys());
            }
        }
        fresh
    }

    fn same_indexes(a: &Catalog, b: &Catalog) -> bool {
        a.by_start == b.by_start
            && a.by_tag == b.by_tag
            && a.by_cell == b.by_cell
            && a.by_heat == b.by_heat
            && a.by_published == b.by_published
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Event, version, start in hours, tags, lifecycle, active seats.
        Details(usize, u64, i64, Vec<&'static str>, Lifecycle, u32),
        Joined(usize, usize),
        Left(usize, usize),
        Located(usize),
        /// The clock moves on this many hours and the catalog is kept.
        Maintain(i64),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        let lifecycle = prop_oneof![
            Just(Lifecycle::Draft),
            Just(Lifecycle::Published),
            Just(Lifecycle::Cancelled)
        ];
        let tags = proptest::sample::subsequence(vec!["jazz", "rock", "folk"], 0..=3);
        prop_oneof![
            4 => (0..4usize, 1..8u64, -2..48i64, tags, lifecycle, 0..10u32)
                .prop_map(|(e, v, h, t, l, a)| Step::Details(e, v, h, t, l, a)),
            4 => (0..4usize, 0..6usize).prop_map(|(e, u)| Step::Joined(e, u)),
            2 => (0..4usize, 0..6usize).prop_map(|(e, u)| Step::Left(e, u)),
            1 => (0..2usize).prop_map(Step::Located),
            1 => (0..6i64).prop_map(Step::Maintain),
        ]
    }

    proptest::proptest! {
        /// Whatever the changes, the indexes hold exactly the keys of the
        /// cards they index, and after upkeep exactly the open cards.
        #[test]
        fn indexes_match_indexes_built_afresh(steps in proptest::collection::vec(step(), 1..60)) {
            let start = Utc::now();
            let events: Vec<EventId> = (0..4).map(|_| new_id()).collect();
            let users: Vec<UserId> = (0..6).map(|_| UserId::from(Uuid::now_v7())).collect();
            let venues = [VenueId::from(Uuid::nil()), VenueId::from(Uuid::now_v7())];
            let mut clock = start;
            let mut catalog = Catalog::default();
            for step in steps {
                match step {
                    Step::Details(e, version, hours, tags, lifecycle, active) => {
                        catalog.apply(&EventUpdate {
                            version,
                            lifecycle,
                            active,
                            venue: venues[e % 2],
                            starts_at: start + Duration::hours(hours),
                            at: clock,
                            ..update(events[e], 0, &tags)
                        });
                    }
                    Step::Joined(e, u) => catalog.joined(users[u], events[e], clock),
                    Step::Left(e, u) => catalog.left(users[u], events[e], clock),
                    Step::Located(v) => catalog.venue_located(
                        venues[v],
                        GeoPoint { lat: 52.0 + v as f64, lon: 4.9 },
                    ),
                    Step::Maintain(hours) => {
                        clock += Duration::hours(hours);
                        catalog.maintain(clock, start - Duration::days(1));
                        let open: Vec<_> =
                            catalog.cards.values().filter(|c| c.is_open(catalog.clock)).collect();
                        proptest::prop_assert_eq!(catalog.by_start.len(), open.len());
                        for card in open {
                            proptest::prop_assert!(catalog.by_start.contains(&card.start_key()));
                        }
                    }
                }
                proptest::prop_assert!(same_indexes(&catalog, &rebuilt(&catalog)));
            }
        }
    }
}
