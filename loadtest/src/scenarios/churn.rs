//! `churn`: joins, leaves and answers to waitlist offers mixed, on many
//! events at once. Each event gets one worker that sends its operations one
//! after another, so the tool can keep an exact model of the event — the
//! parties active in the order they became active, those holding an offer,
//! the FIFO waitlist — and check every answer against it: a join told
//! `active` or `waitlisted` at the right position (counting parties) with its
//! seats, a leave told `left`, an accepted offer told `active`, a declined one
//! `declined`. Afterwards each event's roster (order, status, seats,
//! positions) and counts (seats active, on offer and waiting, places left)
//! must equal its model.
//!
//! By default every join is one seat and every event promotes waiting
//! parties at once in strict order (`waitlist_mode` `auto`, `waitlist_fill`
//! `strict`). `--max-party N` makes each join a party of 1 to N seats;
//! `--offers S` puts a share S of the events in offer mode, where freed
//! places are held for the next party until it accepts or declines (each
//! operation answers a held offer with chance `--answer-ratio`, declining
//! with chance `--decline-ratio`); `--first-fit S` lets a share S of the
//! events (of each mode) serve smaller parties past one that does not fit.
//! The model serves waiting parties as the server must: when places come
//! free (a leave, a decline), strict order serves parties in order and stops
//! at the first that does not fit, first fit passes it over; a waiting party
//! leaving can unblock those behind it.
//!
//! With `--server-pid`, the server's CPU is metered over the operations
//! alone (not the events' making before, nor the roster reads after): what
//! they leave running when the last is answered (the outbox catching up,
//! `me` updates in flight) falls outside it.
//!
//! `--me-watchers N` has each event's first N joiners watch their own
//! places (`me`) over a WebSocket from before the run; afterwards each must
//! have been told its place as the model has it: active, offered, waiting
//! at its position, or left or declined.
//!
//! Offers are held for `--offer-hold-secs` (600 s by default), longer than a
//! run: the model does not follow offers running out, and the report warns
//! when a run outlasts the hold. Expiry is covered by the server's own tests
//! (tests/api/offers.rs).

use std::collections::{BTreeMap, HashMap, VecDeque};

use clap::Args;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::Common;
use crate::api::{Api, Minter};
use crate::invariants::{Answer, Told};
use crate::process::CpuMeter;
use crate::progress;
use crate::report::{Check, Report, answered_2xx, latency_histogram};

use super::me_watch;
use super::ws_fanout::{connect_all, server_addrs};

#[derive(Args)]
pub struct Churn {
    #[command(flatten)]
    pub common: Common,
    /// Events churned at once, one worker each.
    #[arg(long, default_value_t = 50)]
    pub events: usize,
    /// Operations per event.
    #[arg(long, default_value_t = 200)]
    pub ops: usize,
    /// Each event's capacity in seats (small, so the waitlist moves).
    #[arg(long, default_value_t = 10)]
    pub capacity: u64,
    /// Share of operations that are leaves (when anyone is in).
    #[arg(long, default_value_t = 0.4)]
    pub leave_ratio: f64,
    /// The largest party: each event's `max_party`, and each join asks for
    /// 1 to this many seats, drawn evenly (1 to 20, at most --capacity).
    #[arg(long, default_value_t = 1)]
    pub max_party: usize,
    /// Share of the events (0 to 1, spread evenly) whose waitlist makes
    /// offers (`waitlist_mode` `offer`) instead of promoting at once.
    #[arg(long, default_value_t = 0.0)]
    pub offers: f64,
    /// Share of the events of each mode (0 to 1, spread evenly) served
    /// first-fit (`waitlist_fill` `first_fit`) instead of in strict order.
    #[arg(long, default_value_t = 0.0)]
    pub first_fit: f64,
    /// While someone holds an offer: the chance that an operation answers
    /// one (a holder drawn at random) instead of joining or leaving.
    #[arg(long, default_value_t = 0.5)]
    pub answer_ratio: f64,
    /// Share of the answers to offers that decline; the rest accept.
    #[arg(long, default_value_t = 0.3)]
    pub decline_ratio: f64,
    /// How long offer-mode events hold an offer (60 to 604800 s). The model
    /// does not follow offers running out: a run must end within the hold.
    #[arg(long, default_value_t = 600)]
    pub offer_hold_secs: u64,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Each event's first N joiners watch their own places (`me`) from
    /// before the run, and must end told them as the model has them.
    #[arg(long, default_value_t = 0)]
    pub me_watchers: usize,
    /// Spread the `me` watchers over 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, default_value_t = 4)]
    pub source_addresses: u8,
}

/// What a freed place becomes for the party it goes to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// The party is active at once (promoted).
    #[default]
    Auto,
    /// The places are held for the party until it accepts or declines.
    Offer,
}

/// Which waiting parties freed places go to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fill {
    /// In order, stopping at the first party that does not fit; a newcomer
    /// is active only if nobody waits.
    #[default]
    Strict,
    /// In order, passing over parties that do not fit; a newcomer that fits
    /// is active whoever waits.
    FirstFit,
}

/// An event's waitlist settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    pub mode: Mode,
    pub fill: Fill,
}

/// The rules of `events` events: a share `offers` of them in offer mode, and
/// of each mode's events a share `first_fit` served first-fit, each spread
/// evenly over the events (so a few events already mix every combination).
pub fn spread_rules(events: usize, offers: f64, first_fit: f64) -> Vec<Rules> {
    // The k-th item is picked when the running share passes a whole number.
    let picked =
        |k: usize, share: f64| ((k + 1) as f64 * share).floor() > (k as f64 * share).floor();
    let mut of_mode = [0usize; 2];
    (0..events)
        .map(|i| {
            let mode = match picked(i, offers) {
                true => Mode::Offer,
                false => Mode::Auto,
            };
            let k = &mut of_mode[mode as usize];
            let fill = match picked(*k, first_fit) {
                true => Fill::FirstFit,
                false => Fill::Strict,
            };
            *k += 1;
            Rules { mode, fill }
        })
        .collect()
}

/// A member and the seats it holds or asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Party {
    pub user: Uuid,
    pub seats: usize,
}

/// What the tool expects an event to hold.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EventModel {
    /// In seats.
    pub capacity: usize,
    pub rules: Rules,
    /// In the order they became active (joined, promoted or accepted).
    pub active: Vec<Party>,
    /// Holding an offer (offer mode), in the order offered.
    pub offered: Vec<Party>,
    /// In the order they joined.
    pub waitlist: VecDeque<Party>,
}

/// What a join should be told.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    Active,
    /// 1-based, counting parties.
    Waitlisted {
        position: usize,
    },
}

/// An offer answered by someone who holds none: 409 `no_offer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoOffer;

/// A row of the roster, as the attendees endpoint lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterRow {
    pub user: Uuid,
    pub status: String,
    pub seats: usize,
    /// Waitlisted rows only.
    pub position: Option<usize>,
    /// Whether `offer_expires_at` is set: offered rows only.
    pub offer_expires: bool,
}

fn seats<'a>(parties: impl IntoIterator<Item = &'a Party>) -> usize {
    parties.into_iter().map(|p| p.seats).sum()
}

/// Takes `user`'s party out of `parties`, if there.
fn take(parties: &mut Vec<Party>, user: Uuid) -> Option<Party> {
    let at = parties.iter().position(|p| p.user == user)?;
    Some(parties.remove(at))
}

impl EventModel {
    /// One-seat parties, promoted at once, in strict order.
    pub fn new(capacity: usize) -> Self {
        Self::with_rules(capacity, Rules::default())
    }

    pub fn with_rules(capacity: usize, rules: Rules) -> Self {
        Self {
            capacity,
            rules,
            ..Self::default()
        }
    }

    pub fn active_seats(&self) -> usize {
        seats(&self.active)
    }

    pub fn offered_seats(&self) -> usize {
        seats(&self.offered)
    }

    pub fn waiting_seats(&self) -> usize {
        seats(&self.waitlist)
    }

    /// Seats neither active nor held for an offer.
    pub fn free_places(&self) -> usize {
        self.capacity
            .saturating_sub(self.active_seats() + self.offered_seats())
    }

    /// A newcomer's party of `seats`: active if it fits the free places and
    /// (in strict order) nobody waits; else at the back of the waitlist.
    pub fn join(&mut self, user: Uuid, seats: usize) -> Expected {
        let party = Party { user, seats };
        let ahead = self.rules.fill == Fill::Strict && !self.waitlist.is_empty();
        if seats <= self.free_places() && !ahead {
            self.active.push(party);
            Expected::Active
        } else {
            self.waitlist.push_back(party);
            Expected::Waitlisted {
                position: self.waitlist.len(),
            }
        }
    }

    /// Removes the user's party, active, offered or waiting; returns the
    /// parties served then (promoted, or offered in offer mode), in order.
    pub fn leave(&mut self, user: Uuid) -> Vec<Uuid> {
        let gone = take(&mut self.active, user)
            .or_else(|| take(&mut self.offered, user))
            .or_else(|| {
                let at = self.waitlist.iter().position(|p| p.user == user)?;
                self.waitlist.remove(at)
            });
        match gone {
            // A waiting party frees nothing, but may have stood in the way.
            Some(_) => self.serve(),
            None => Vec::new(),
        }
    }

    /// The seats of the party now active: the offer's, or the party's own
    /// when it was active already (an accept changes nothing then).
    pub fn accept(&mut self, user: Uuid) -> Result<usize, NoOffer> {
        if let Some(party) = self.active.iter().find(|p| p.user == user) {
            return Ok(party.seats);
        }
        let party = take(&mut self.offered, user).ok_or(NoOffer)?;
        self.active.push(party);
        Ok(party.seats)
    }

    /// The party is out; its places pass on at once. Returns the parties
    /// served, in order.
    pub fn decline(&mut self, user: Uuid) -> Result<Vec<Uuid>, NoOffer> {
        take(&mut self.offered, user).ok_or(NoOffer)?;
        Ok(self.serve())
    }

    /// Hands the free places to waiting parties in order: strict stops at
    /// the first party that does not fit, first fit passes it over.
    fn serve(&mut self) -> Vec<Uuid> {
        let mut free = self.free_places();
        let mut served = Vec::new();
        let mut at = 0;
        while free > 0 && at < self.waitlist.len() {
            let party = self.waitlist[at];
            if party.seats <= free {
                free -= party.seats;
                self.waitlist.remove(at);
                match self.rules.mode {
                    Mode::Auto => self.active.push(party),
                    Mode::Offer => self.offered.push(party),
                }
                served.push(party.user);
            } else if self.rules.fill == Fill::Strict {
                break;
            } else {
                at += 1;
            }
        }
        served
    }

    /// Where `user` stands, as their `me` channel must show it; `None` for
    /// someone who is not a member (never joined, or left).
    pub fn standing(&self, user: Uuid) -> Option<Told> {
        let told = |status: &str, position: Option<usize>| Told {
            status: status.to_owned(),
            position: position.map(|p| p as u64),
        };
        if self.active.iter().any(|p| p.user == user) {
            return Some(told("active", None));
        }
        if self.offered.iter().any(|p| p.user == user) {
            return Some(told("offered", None));
        }
        let at = self.waitlist.iter().position(|p| p.user == user)?;
        Some(told("waitlisted", Some(at + 1)))
    }

    /// Every member: active, offered and waiting.
    pub fn members(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.active
            .iter()
            .chain(&self.offered)
            .chain(&self.waitlist)
            .map(|p| p.user)
    }

    /// The roster the attendees endpoint must list: active parties in order
    /// of becoming active, then those holding an offer in order offered,
    /// then the waitlist in order (with positions).
    pub fn roster(&self) -> Vec<RosterRow> {
        let row = |p: &Party, status: &str, position, offer_expires| RosterRow {
            user: p.user,
            status: status.to_owned(),
            seats: p.seats,
            position,
            offer_expires,
        };
        self.active
            .iter()
            .map(|p| row(p, "active", None, false))
            .chain(self.offered.iter().map(|p| row(p, "offered", None, true)))
            .chain(
                self.waitlist
                    .iter()
                    .enumerate()
                    .map(|(i, p)| row(p, "waitlisted", Some(i + 1), false)),
            )
            .collect()
    }
}

/// One operation of a worker.
enum Op {
    Join { seats: usize },
    Leave { user: Uuid },
    Answer { user: Uuid, accept: bool },
}

/// What a run's operations were, and what they set going.
#[derive(Debug, Default)]
struct Tally {
    joins: u64,
    seats_asked: u64,
    leaves: u64,
    accepts: u64,
    declines: u64,
    promoted: u64,
    offered: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.joins += other.joins;
        self.seats_asked += other.seats_asked;
        self.leaves += other.leaves;
        self.accepts += other.accepts;
        self.declines += other.declines;
        self.promoted += other.promoted;
        self.offered += other.offered;
    }

    fn served(&mut self, mode: Mode, parties: usize) {
        match mode {
            Mode::Auto => self.promoted += parties as u64,
            Mode::Offer => self.offered += parties as u64,
        }
    }
}

/// One event's part of the run.
struct Plan {
    index: usize,
    event: Uuid,
    rules: Rules,
    /// The users of its first joins, who watch their places.
    watched: VecDeque<Uuid>,
}

/// What one event's worker saw.
struct Worker {
    latency: hdrhistogram::Histogram<u64>,
    outcomes: BTreeMap<String, u64>,
    tally: Tally,
    wrong_answers: Vec<String>,
    /// The first difference, if the roster is not the model's.
    roster_differs: Option<String>,
    counts_differ: Option<String>,
    /// Where each watched joiner ended, as the model has it.
    watched: HashMap<Uuid, Told>,
    /// The event, as the operations left it.
    event: Uuid,
    name: String,
    model: EventModel,
}

/// The waitlist settings an event is created with: only those not left at
/// the server's defaults.
fn settings(args: &Churn, rules: Rules) -> Value {
    let mut settings = serde_json::Map::new();
    if args.max_party > 1 {
        settings.insert("max_party".into(), json!(args.max_party));
    }
    if rules.mode == Mode::Offer {
        settings.insert("waitlist_mode".into(), json!("offer"));
        settings.insert("offer_hold_secs".into(), json!(args.offer_hold_secs));
    }
    if rules.fill == Fill::FirstFit {
        settings.insert("waitlist_fill".into(), json!("first_fit"));
    }
    Value::Object(settings)
}

/// Where the server's roster first differs from the model's, if it does.
fn roster_difference(told: &[RosterRow], model: &[RosterRow]) -> Option<String> {
    let at = (0..told.len().max(model.len())).find(|&i| told.get(i) != model.get(i))?;
    Some(format!(
        "row {} of {} (model: {}) is {:?}, the model says {:?}",
        at + 1,
        told.len(),
        model.len(),
        told.get(at),
        model.get(at)
    ))
}

/// Runs one event's operations, checking each answer against the model.
async fn churn_event(
    api: Api,
    minter: &Minter,
    args: &Churn,
    plan: Plan,
    bar: &ProgressBar,
) -> anyhow::Result<Worker> {
    let Plan {
        index,
        event,
        rules,
        mut watched,
    } = plan;
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_add(index as u64));
    let mut tokens: BTreeMap<Uuid, String> = BTreeMap::new();
    let mut worker = Worker {
        latency: latency_histogram(),
        outcomes: BTreeMap::new(),
        tally: Tally::default(),
        wrong_answers: Vec::new(),
        roster_differs: None,
        counts_differ: None,
        watched: HashMap::new(),
        event,
        name: format!("event {index} ({rules:?})"),
        model: EventModel::with_rules(args.capacity as usize, rules),
    };
    // Each watched joiner, once joined; where they ended, if they left.
    let mut watched_joined: Vec<Uuid> = Vec::new();
    let mut ended: HashMap<Uuid, &'static str> = HashMap::new();
    let name = worker.name.clone();
    let model = &mut worker.model;
    for _ in 0..args.ops {
        bar.inc(1);
        // Draws nothing more than before parties and offers unless they are
        // in play, so a seed's default run is the same as it was.
        let op = match model.offered.len() {
            holders if holders > 0 && rng.random::<f64>() < args.answer_ratio => {
                let user = model.offered[rng.random_range(0..holders)].user;
                let accept = rng.random::<f64>() >= args.decline_ratio;
                Op::Answer { user, accept }
            }
            _ => {
                let members: Vec<Uuid> = model.members().collect();
                if !members.is_empty() && rng.random::<f64>() < args.leave_ratio {
                    Op::Leave {
                        user: members[rng.random_range(0..members.len())],
                    }
                } else if args.max_party > 1 {
                    Op::Join {
                        seats: rng.random_range(1..=args.max_party),
                    }
                } else {
                    Op::Join { seats: 1 }
                }
            }
        };
        let started = std::time::Instant::now();
        let (code, body, user) = match &op {
            Op::Join { seats } => {
                let user = match watched.pop_front() {
                    Some(user) => {
                        watched_joined.push(user);
                        user
                    }
                    None => Uuid::now_v7(),
                };
                let token = minter.token(user);
                // One-seat runs send no body, as before parties.
                let party = (args.max_party > 1).then_some(*seats);
                let key = Uuid::new_v4().to_string();
                let (code, body) = api.join_party(&token, event, &key, party).await?;
                tokens.insert(user, token);
                (code, body, user)
            }
            Op::Leave { user } => {
                let (code, body) = api.leave(&tokens[user], event).await?;
                (code, body, *user)
            }
            Op::Answer { user, accept } => {
                let (code, body) = api.answer_offer(&tokens[user], event, *accept).await?;
                (code, body, *user)
            }
        };
        worker
            .latency
            .saturating_record(started.elapsed().as_micros() as u64);
        *worker
            .outcomes
            .entry(code.as_u16().to_string())
            .or_default() += 1;
        let told = Answer::of(code, &body);
        // The model moves only when the server says it did something; an
        // answer with another status is wrong, and changes nothing.
        let (what, expected) = match op {
            Op::Join { seats } => {
                worker.tally.joins += 1;
                worker.tally.seats_asked += seats as u64;
                let what = format!("a join of {seats} seats");
                if code != StatusCode::CREATED {
                    worker
                        .wrong_answers
                        .push(format!("{name}: {what} answered {code}: {body}"));
                    continue;
                }
                let expected = match model.join(user, seats) {
                    Expected::Active => Answer::expected(code, "active", Some(seats), None),
                    Expected::Waitlisted { position } => {
                        Answer::expected(code, "waitlisted", Some(seats), Some(position))
                    }
                };
                (what, expected)
            }
            Op::Leave { .. } => {
                worker.tally.leaves += 1;
                if code != StatusCode::OK {
                    worker
                        .wrong_answers
                        .push(format!("{name}: a leave answered {code}: {body}"));
                    continue;
                }
                let served = model.leave(user);
                ended.insert(user, "left");
                worker.tally.served(rules.mode, served.len());
                (
                    "a leave".to_owned(),
                    Answer::expected(code, "left", None, None),
                )
            }
            Op::Answer { accept: true, .. } => {
                worker.tally.accepts += 1;
                if code != StatusCode::OK {
                    worker.wrong_answers.push(format!(
                        "{name}: accepting an offer answered {code}: {body}"
                    ));
                    continue;
                }
                let expected = match model.accept(user) {
                    Ok(seats) => Answer::expected(code, "active", Some(seats), None),
                    Err(NoOffer) => Answer::expected(StatusCode::CONFLICT, "", None, None),
                };
                ("accepting an offer".to_owned(), expected)
            }
            Op::Answer { accept: false, .. } => {
                worker.tally.declines += 1;
                if code != StatusCode::OK {
                    worker.wrong_answers.push(format!(
                        "{name}: declining an offer answered {code}: {body}"
                    ));
                    continue;
                }
                let expected = match model.decline(user) {
                    Ok(served) => {
                        ended.insert(user, "declined");
                        worker.tally.served(rules.mode, served.len());
                        Answer::expected(code, "declined", None, None)
                    }
                    Err(NoOffer) => Answer::expected(StatusCode::CONFLICT, "", None, None),
                };
                ("declining an offer".to_owned(), expected)
            }
        };
        if told != expected {
            worker.wrong_answers.push(format!(
                "{name}: {what} was told {told:?}, the model says {expected:?}"
            ));
        }
    }
    worker.watched = watched_joined
        .into_iter()
        .filter_map(|user| {
            let standing = model.standing(user).or_else(|| {
                let status = ended.get(&user)?;
                Some(Told {
                    status: (*status).to_owned(),
                    position: None,
                })
            })?;
            Some((user, standing))
        })
        .collect();
    Ok(worker)
}

/// Checks the event's roster and counts against the model, once its
/// operations are done.
async fn verify(api: &Api, owner: &str, worker: &mut Worker) -> anyhow::Result<()> {
    let (event, name, model) = (worker.event, &worker.name, &worker.model);
    let roster: Vec<RosterRow> = api
        .attendees(owner, event)
        .await?
        .into_iter()
        .map(|a| RosterRow {
            user: a["user_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_default(),
            status: a["status"].as_str().unwrap_or_default().to_owned(),
            seats: a["seats"].as_u64().unwrap_or_default() as usize,
            position: a["position"].as_u64().map(|n| n as usize),
            offer_expires: !a["offer_expires_at"].is_null(),
        })
        .collect();
    worker.roster_differs =
        roster_difference(&roster, &model.roster()).map(|d| format!("{name}: {d}"));
    let counts = api.event(event).await?;
    let told = [
        "active_count",
        "offered_seats",
        "waitlist_count",
        "places_left",
    ]
    .map(|field| counts[field].as_u64());
    let expected = [
        model.active_seats(),
        model.offered_seats(),
        model.waiting_seats(),
        model.free_places(),
    ]
    .map(|n| Some(n as u64));
    if told != expected {
        worker.counts_differ = Some(format!(
            "{name}: (active, offered, waiting seats, places left) are {told:?}, the model says {expected:?}"
        ));
    }
    Ok(())
}

pub async fn run(args: Churn) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.events > 0 && args.capacity > 0,
        "--events and --capacity must be positive"
    );
    anyhow::ensure!(
        (0.0..1.0).contains(&args.leave_ratio),
        "--leave-ratio is in [0, 1)"
    );
    anyhow::ensure!(
        (1..=20).contains(&args.max_party) && args.max_party as u64 <= args.capacity,
        "--max-party is 1 to 20, and at most --capacity"
    );
    for (name, share) in [
        ("--offers", args.offers),
        ("--first-fit", args.first_fit),
        ("--answer-ratio", args.answer_ratio),
        ("--decline-ratio", args.decline_ratio),
    ] {
        anyhow::ensure!((0.0..=1.0).contains(&share), "{name} is in [0, 1]");
    }
    anyhow::ensure!(
        (60..=604_800).contains(&args.offer_hold_secs),
        "--offer-hold-secs is 60 to 604800"
    );
    let api = Api::new(&args.common.targets, args.events)?;
    let minter = args.common.minter()?;
    let owner = minter.token(Uuid::now_v7());
    let rules = spread_rules(args.events, args.offers, args.first_fit);
    let in_offer_mode = rules.iter().filter(|r| r.mode == Mode::Offer).count();
    let first_fit = rules.iter().filter(|r| r.fill == Fill::FirstFit).count();
    eprintln!(
        "churn: {} events × {} operations (capacity {}, {:.0} % leaves)",
        args.events,
        args.ops,
        args.capacity,
        args.leave_ratio * 100.0
    );
    if args.max_party > 1 || in_offer_mode > 0 || first_fit > 0 {
        eprintln!(
            "churn: parties of 1 to {} seats; {in_offer_mode} events make offers (held {} s), \
             {first_fit} fill first-fit",
            args.max_party, args.offer_hold_secs
        );
    }
    let events = futures_util::future::try_join_all(
        rules
            .iter()
            .map(|r| api.published_event_with(&owner, args.capacity, settings(&args, *r))),
    )
    .await?;
    // Each event's first joiners, made up front so that they can watch:
    // those of event `i` are `watched[i * me_watchers..][..me_watchers]`.
    let watched: Vec<(usize, Uuid)> = (0..args.events)
        .flat_map(|event| (0..args.me_watchers).map(move |_| (event, Uuid::now_v7())))
        .collect();
    let (watchers, watch_failures) = if watched.is_empty() {
        (Vec::new(), BTreeMap::new())
    } else {
        let servers = server_addrs(&args.common.targets)?;
        let connected = connect_all(watched.len(), args.source_addresses, |i, source| {
            let (event, user) = watched[i];
            let server = servers[i % servers.len()];
            me_watch::watch(server, source, user, minter.token(user), event)
        })
        .await?;
        eprintln!("churn: {} joiners watch their places", connected.0.len());
        connected
    };
    let bar = progress::bar(args.events * args.ops, "operations");
    let cpu = CpuMeter::start(&args.common);
    let started = std::time::Instant::now();
    let workers = futures_util::future::try_join_all(rules.iter().enumerate().map(|(index, r)| {
        let theirs = &watched[index * args.me_watchers..][..args.me_watchers];
        let plan = Plan {
            index,
            event: events[index],
            rules: *r,
            watched: theirs.iter().map(|(_, user)| *user).collect(),
        };
        churn_event(api.clone(), &minter, &args, plan, &bar)
    }))
    .await?;
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for worker in &workers {
        for (kind, n) in &worker.outcomes {
            *outcomes.entry(kind.clone()).or_default() += n;
        }
    }
    // The operations' alone: not the events' making, nor the checks after.
    let cpu = cpu.checks(answered_2xx(&outcomes), "operation");
    let mut workers = workers;
    futures_util::future::try_join_all(workers.iter_mut().map(|w| verify(&api, &owner, w))).await?;

    let mut latency = latency_histogram();
    let mut tally = Tally::default();
    let mut wrong: Vec<String> = Vec::new();
    let (mut rosters, mut counts) = (Vec::new(), Vec::new());
    let mut standing: HashMap<Uuid, (Uuid, Told)> = HashMap::new();
    for worker in workers {
        let event = worker.event;
        standing.extend(
            (worker.watched)
                .into_iter()
                .map(|(user, told)| (user, (event, told))),
        );
        latency.add(&worker.latency).expect("same bounds");
        tally.add(&worker.tally);
        wrong.extend(worker.wrong_answers);
        rosters.extend(worker.roster_differs);
        counts.extend(worker.counts_differ);
    }
    let matched = |differ: &[String]| match differ.first() {
        None => format!("{}/{} events", args.events, args.events),
        Some(first) => format!(
            "{}/{} events, first: {first}",
            args.events - differ.len(),
            args.events
        ),
    };
    let mut checks = vec![
        Check::new(
            "every answer matches the model (status, seats, position)",
            wrong.is_empty(),
            match wrong.first() {
                None => format!("{} operations", latency.len()),
                Some(first) => format!("{} wrong, first: {first}", wrong.len()),
            },
        ),
        Check::new(
            "every roster equals the model (order, status, seats, positions)",
            rosters.is_empty(),
            matched(&rosters),
        ),
        Check::new(
            "every event's counts equal the model (seats active, offered, waiting, left)",
            counts.is_empty(),
            matched(&counts),
        ),
        Check::new(
            "operations (info)",
            true,
            format!(
                "{} joins ({} seats), {} leaves, {} accepts, {} declines; {} parties promoted, \
                 {} offered; {in_offer_mode} events in offer mode, {first_fit} first-fit",
                tally.joins,
                tally.seats_asked,
                tally.leaves,
                tally.accepts,
                tally.declines,
                tally.promoted,
                tally.offered
            ),
        ),
    ];
    checks.extend(cpu);
    if args.me_watchers > 0 {
        let as_modelled = |w: &me_watch::Watcher| standing.get(&w.user()).cloned();
        checks.extend(
            me_watch::check(
                (&watchers, watched.len(), &watch_failures),
                "as the model has it",
                "never joined or refused",
                as_modelled,
            )
            .await,
        );
    }
    let mut report = Report::new(
        "churn",
        &args.common.target_label(),
        &latency,
        elapsed,
        outcomes,
        checks,
    )
    .by_target(api.outcomes_by_target());
    if in_offer_mode > 0 && elapsed.as_secs() >= args.offer_hold_secs {
        report.warnings.push(format!(
            "the run took {:.0} s, longer than offers are held ({} s): offers may have run out, \
             which the model does not follow; raise --offer-hold-secs",
            elapsed.as_secs_f64(),
            args.offer_hold_secs
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(n: usize) -> Vec<Uuid> {
        (0..n).map(|i| Uuid::from_u128(i as u128 + 1)).collect()
    }

    /// The roster as (user, status, seats) rows.
    fn roster(model: &EventModel) -> Vec<(Uuid, String, usize)> {
        model
            .roster()
            .into_iter()
            .map(|r| (r.user, r.status, r.seats))
            .collect()
    }

    fn row(user: Uuid, status: &str, seats: usize) -> (Uuid, String, usize) {
        (user, status.to_owned(), seats)
    }

    fn rules(mode: Mode, fill: Fill) -> Rules {
        Rules { mode, fill }
    }

    #[test]
    fn joins_fill_then_queue_with_positions() {
        let u = users(4);
        let mut model = EventModel::new(2);
        assert_eq!(model.join(u[0], 1), Expected::Active);
        assert_eq!(model.join(u[1], 1), Expected::Active);
        assert_eq!(model.join(u[2], 1), Expected::Waitlisted { position: 1 });
        assert_eq!(model.join(u[3], 1), Expected::Waitlisted { position: 2 });
    }

    #[test]
    fn leaving_promotes_the_first_waiter_and_keeps_order() {
        let u = users(5);
        let mut model = EventModel::new(2);
        for user in &u {
            model.join(*user, 1);
        }
        assert_eq!(model.leave(u[0]), vec![u[2]]);
        assert_eq!(
            roster(&model),
            vec![
                row(u[1], "active", 1),
                row(u[2], "active", 1),
                row(u[3], "waitlisted", 1),
                row(u[4], "waitlisted", 1),
            ]
        );
        // A waiter leaving promotes nobody; the queue closes up.
        assert_eq!(model.leave(u[3]), Vec::<Uuid>::new());
        assert_eq!(model.roster()[2].position, Some(1));
        assert_eq!(
            model.join(Uuid::from_u128(99), 1),
            Expected::Waitlisted { position: 2 }
        );
    }

    #[test]
    fn in_strict_order_a_party_that_does_not_fit_holds_up_those_behind() {
        let u = users(5);
        let mut model = EventModel::new(4);
        assert_eq!(model.join(u[0], 2), Expected::Active);
        assert_eq!(model.join(u[1], 1), Expected::Active);
        assert_eq!(model.join(u[2], 3), Expected::Waitlisted { position: 1 });
        // One place is free, but someone waits: strict order queues.
        assert_eq!(model.join(u[3], 1), Expected::Waitlisted { position: 2 });
        assert_eq!(model.free_places(), 1);
        // Two places free: the 3-seat party does not fit, nor does anyone
        // behind it get past.
        assert_eq!(model.leave(u[1]), Vec::<Uuid>::new());
        assert_eq!(model.free_places(), 2);
        // The party in the way leaves: the one behind it is served.
        assert_eq!(model.leave(u[2]), vec![u[3]]);
        assert_eq!(
            (
                model.active_seats(),
                model.waiting_seats(),
                model.free_places()
            ),
            (3, 0, 1)
        );
        assert_eq!(model.join(u[4], 1), Expected::Active);
    }

    #[test]
    fn first_fit_passes_over_a_party_that_does_not_fit() {
        let u = users(6);
        let mut model = EventModel::with_rules(4, rules(Mode::Auto, Fill::FirstFit));
        model.join(u[0], 2);
        model.join(u[1], 2);
        assert_eq!(model.join(u[2], 3), Expected::Waitlisted { position: 1 });
        assert_eq!(model.join(u[3], 1), Expected::Waitlisted { position: 2 });
        assert_eq!(model.leave(u[0]), vec![u[3]]);
        // One place left, a party of three waiting: a newcomer that fits
        // goes in past it.
        assert_eq!(model.join(u[4], 1), Expected::Active);
        assert_eq!(model.join(u[5], 1), Expected::Waitlisted { position: 2 });
        assert_eq!(
            roster(&model),
            vec![
                row(u[1], "active", 2),
                row(u[3], "active", 1),
                row(u[4], "active", 1),
                row(u[2], "waitlisted", 3),
                row(u[5], "waitlisted", 1),
            ]
        );
    }

    #[test]
    fn offers_hold_places_until_accepted_and_pass_on_when_declined() {
        let u = users(6);
        let mut model = EventModel::with_rules(3, rules(Mode::Offer, Fill::Strict));
        model.join(u[0], 2);
        model.join(u[1], 1);
        model.join(u[2], 2);
        model.join(u[3], 1);
        // Two places free: the first party is offered them, held.
        assert_eq!(model.leave(u[0]), vec![u[2]]);
        assert_eq!((model.offered_seats(), model.free_places()), (2, 0));
        assert_eq!(model.join(u[4], 1), Expected::Waitlisted { position: 2 });
        let rows = model.roster();
        assert_eq!(
            (rows[1].status.as_str(), rows[1].offer_expires),
            ("offered", true)
        );
        assert_eq!(rows[2].position, Some(1));
        // Declined: the places pass on at once, to the next two parties.
        assert_eq!(model.decline(u[2]), Ok(vec![u[3], u[4]]));
        assert_eq!(model.decline(u[2]), Err(NoOffer));
        assert_eq!(model.accept(u[3]), Ok(1));
        // Accepting again changes nothing; an active party holds no offer
        // to decline.
        assert_eq!(model.accept(u[3]), Ok(1));
        assert_eq!(model.decline(u[3]), Err(NoOffer));
        assert_eq!(model.accept(u[5]), Err(NoOffer));
        // Leaving with an offer in hand frees its places too.
        model.join(u[5], 1);
        assert_eq!(model.leave(u[4]), vec![u[5]]);
        assert_eq!(
            roster(&model),
            vec![
                row(u[1], "active", 1),
                row(u[3], "active", 1),
                row(u[5], "offered", 1),
            ]
        );
    }

    #[test]
    fn rules_are_spread_evenly_over_the_events() {
        assert!(
            spread_rules(5, 0.0, 0.0)
                .iter()
                .all(|r| *r == Rules::default())
        );
        assert!(
            spread_rules(3, 1.0, 1.0)
                .iter()
                .all(|r| *r == rules(Mode::Offer, Fill::FirstFit))
        );
        // Four events, half each way: every combination once.
        let mut four = spread_rules(4, 0.5, 0.5);
        four.sort_by_key(|r| (r.mode as u8, r.fill as u8));
        assert_eq!(
            four,
            vec![
                rules(Mode::Auto, Fill::Strict),
                rules(Mode::Auto, Fill::FirstFit),
                rules(Mode::Offer, Fill::Strict),
                rules(Mode::Offer, Fill::FirstFit),
            ]
        );
    }
}
