//! `churn`: joins and leaves mixed, on many events at once. Each event gets
//! one worker that sends its operations one after another, so the tool can
//! keep an exact model of the event — who is active in which order, the
//! FIFO waitlist — and check every answer against it: a join told `active`
//! or `waitlisted` at the right position, a leave promoting the first
//! waiter. Afterwards each event's roster and counts must equal its model.

use std::collections::{BTreeMap, VecDeque};

use clap::Args;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use uuid::Uuid;

use crate::Common;
use crate::api::{Api, Minter};
use crate::progress;
use crate::report::{Check, Report, latency_histogram};

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
    /// Each event's capacity (small, so the waitlist moves).
    #[arg(long, default_value_t = 10)]
    pub capacity: u64,
    /// Share of operations that are leaves (when anyone is in).
    #[arg(long, default_value_t = 0.4)]
    pub leave_ratio: f64,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// What the tool expects an event to hold.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EventModel {
    pub capacity: usize,
    /// In the order they became active.
    pub active: Vec<Uuid>,
    pub waitlist: VecDeque<Uuid>,
}

/// What a join should be told.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    Active,
    Waitlisted { position: usize },
}

impl EventModel {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    pub fn join(&mut self, user: Uuid) -> Expected {
        if self.active.len() < self.capacity {
            self.active.push(user);
            Expected::Active
        } else {
            self.waitlist.push_back(user);
            Expected::Waitlisted {
                position: self.waitlist.len(),
            }
        }
    }

    /// Removes the user; returns who was promoted, if anyone.
    pub fn leave(&mut self, user: Uuid) -> Option<Uuid> {
        if let Some(at) = self.active.iter().position(|u| *u == user) {
            self.active.remove(at);
            let promoted = self.waitlist.pop_front()?;
            self.active.push(promoted);
            return Some(promoted);
        }
        if let Some(at) = self.waitlist.iter().position(|u| *u == user) {
            self.waitlist.remove(at);
        }
        None
    }

    pub fn members(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.active.iter().chain(self.waitlist.iter()).copied()
    }

    /// The roster the attendees endpoint must list: active in order of
    /// becoming active, then the waitlist in order.
    pub fn roster(&self) -> Vec<(Uuid, &'static str)> {
        self.active
            .iter()
            .map(|u| (*u, "active"))
            .chain(self.waitlist.iter().map(|u| (*u, "waitlisted")))
            .collect()
    }
}

/// What one event's worker saw.
struct Worker {
    latency: hdrhistogram::Histogram<u64>,
    outcomes: BTreeMap<String, u64>,
    wrong_answers: Vec<String>,
    roster_matches: bool,
    counts_match: bool,
}

async fn churn_event(
    api: Api,
    minter: &Minter,
    owner: &str,
    args: &Churn,
    index: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Worker> {
    let event = api.published_event(owner, args.capacity).await?;
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_add(index as u64));
    let mut model = EventModel::new(args.capacity as usize);
    let mut tokens: BTreeMap<Uuid, String> = BTreeMap::new();
    let mut worker = Worker {
        latency: latency_histogram(),
        outcomes: BTreeMap::new(),
        wrong_answers: Vec::new(),
        roster_matches: false,
        counts_match: false,
    };
    for _ in 0..args.ops {
        bar.inc(1);
        let members: Vec<Uuid> = model.members().collect();
        let leave = !members.is_empty() && rng.random::<f64>() < args.leave_ratio;
        let started = std::time::Instant::now();
        if leave {
            let user = members[rng.random_range(0..members.len())];
            let status = api.leave(&tokens[&user], event).await?;
            worker
                .latency
                .saturating_record(started.elapsed().as_micros() as u64);
            *worker
                .outcomes
                .entry(status.as_u16().to_string())
                .or_default() += 1;
            if status == StatusCode::OK {
                model.leave(user);
            } else {
                worker
                    .wrong_answers
                    .push(format!("a leave answered {status}"));
            }
        } else {
            let user = Uuid::now_v7();
            let token = minter.token(user);
            let (status, body) = api.join(&token, event, &Uuid::new_v4().to_string()).await?;
            worker
                .latency
                .saturating_record(started.elapsed().as_micros() as u64);
            *worker
                .outcomes
                .entry(status.as_u16().to_string())
                .or_default() += 1;
            tokens.insert(user, token);
            if !status.is_success() {
                worker
                    .wrong_answers
                    .push(format!("a join answered {status}"));
                continue;
            }
            let told = (
                body["data"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                body["data"]["position"].as_u64(),
            );
            let expected = match model.join(user) {
                Expected::Active => ("active".to_owned(), None),
                Expected::Waitlisted { position } => {
                    ("waitlisted".to_owned(), Some(position as u64))
                }
            };
            if told != expected {
                worker.wrong_answers.push(format!(
                    "a join was told {told:?}, the model says {expected:?}"
                ));
            }
        }
    }
    let roster: Vec<(Uuid, String)> = api
        .attendees(owner, event)
        .await?
        .into_iter()
        .map(|a| {
            (
                a["user_id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_default(),
                a["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(Uuid, String)> = model
        .roster()
        .into_iter()
        .map(|(u, s)| (u, s.to_owned()))
        .collect();
    worker.roster_matches = roster == expected;
    let counts = api.event(event).await?;
    worker.counts_match = counts["active_count"].as_u64() == Some(model.active.len() as u64)
        && counts["waitlist_count"].as_u64() == Some(model.waitlist.len() as u64);
    Ok(worker)
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
    let api = Api::new(&args.common.targets, args.events)?;
    let minter = args.common.minter()?;
    let owner = minter.token(Uuid::now_v7());
    eprintln!(
        "churn: {} events × {} operations (capacity {}, {:.0} % leaves)",
        args.events,
        args.ops,
        args.capacity,
        args.leave_ratio * 100.0
    );
    let bar = progress::bar(args.events * args.ops, "operations");
    let started = std::time::Instant::now();
    let workers = futures_util::future::try_join_all(
        (0..args.events).map(|i| churn_event(api.clone(), &minter, &owner, &args, i, &bar)),
    )
    .await?;
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    let mut latency = latency_histogram();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut wrong: Vec<String> = Vec::new();
    let (mut rosters, mut counts) = (0, 0);
    for worker in workers {
        latency.add(&worker.latency).expect("same bounds");
        for (kind, n) in worker.outcomes {
            *outcomes.entry(kind).or_default() += n;
        }
        wrong.extend(worker.wrong_answers);
        rosters += usize::from(worker.roster_matches);
        counts += usize::from(worker.counts_match);
    }
    let checks = vec![
        Check::new(
            "every answer matches the model (status, position)",
            wrong.is_empty(),
            match wrong.first() {
                None => format!("{} operations", latency.len()),
                Some(first) => format!("{} wrong, first: {first}", wrong.len()),
            },
        ),
        Check::new(
            "every roster equals the model (FIFO promotion)",
            rosters == args.events,
            format!("{rosters}/{} events", args.events),
        ),
        Check::new(
            "every event's counts equal the model",
            counts == args.events,
            format!("{counts}/{} events", args.events),
        ),
    ];
    Ok(Report::new(
        "churn",
        &args.common.target_label(),
        &latency,
        elapsed,
        outcomes,
        checks,
    )
    .by_target(api.outcomes_by_target()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(n: usize) -> Vec<Uuid> {
        (0..n).map(|i| Uuid::from_u128(i as u128 + 1)).collect()
    }

    #[test]
    fn joins_fill_then_queue_with_positions() {
        let u = users(4);
        let mut model = EventModel::new(2);
        assert_eq!(model.join(u[0]), Expected::Active);
        assert_eq!(model.join(u[1]), Expected::Active);
        assert_eq!(model.join(u[2]), Expected::Waitlisted { position: 1 });
        assert_eq!(model.join(u[3]), Expected::Waitlisted { position: 2 });
    }

    #[test]
    fn leaving_promotes_the_first_waiter_and_keeps_order() {
        let u = users(5);
        let mut model = EventModel::new(2);
        for user in &u {
            model.join(*user);
        }
        assert_eq!(model.leave(u[0]), Some(u[2]));
        assert_eq!(
            model.roster(),
            vec![
                (u[1], "active"),
                (u[2], "active"),
                (u[3], "waitlisted"),
                (u[4], "waitlisted"),
            ]
        );
        // A waiter leaving promotes nobody; the queue closes up.
        assert_eq!(model.leave(u[3]), None);
        assert_eq!(model.waitlist, VecDeque::from(vec![u[4]]));
        assert_eq!(
            model.join(Uuid::from_u128(99)),
            Expected::Waitlisted { position: 2 }
        );
    }
}
