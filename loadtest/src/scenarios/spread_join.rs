//! `spread-join`: joins spread over M events, either at a fixed arrival rate
//! (open model, `--rate`: each join has an intended send time and its latency
//! is measured from that time, so a slow server cannot hide its queueing by
//! slowing the generator down — coordinated omission corrected, as wrk2
//! does) or flat out through `--concurrency` connections (closed model).
//! Afterwards every event is checked as `hot-join` checks its one event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use uuid::Uuid;

use super::hot_join::check_event;
use crate::Common;
use crate::api::Api;
use crate::burst::{Answers, JoinResult, paced};
use crate::process::CpuMeter;
use crate::report::{Check, Report, answered_2xx, latency_histogram};

#[derive(Args)]
pub struct SpreadJoin {
    #[command(flatten)]
    pub common: Common,
    /// Events the joins are spread over (round robin).
    #[arg(long, default_value_t = 20)]
    pub events: usize,
    /// Joins in all, one user each.
    #[arg(long, default_value_t = 5000)]
    pub users: usize,
    /// Each event's capacity.
    #[arg(long, default_value_t = 100)]
    pub capacity: u64,
    /// Open model: joins per second, each sent at its intended time.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Closed model: connections sending flat out; with --rate, the most
    /// requests in flight.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
}

/// When the `i`th join is meant to be sent, from the start, at `rate` per
/// second: the open model's schedule.
pub fn intended_offset(i: usize, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// One check per name over every event: it holds if it holds for all.
pub fn combine(per_event: Vec<Vec<Check>>) -> Vec<Check> {
    let mut combined: BTreeMap<String, (usize, usize, Vec<String>)> = BTreeMap::new();
    let events = per_event.len();
    for (e, checks) in per_event.into_iter().enumerate() {
        for check in checks {
            let entry = combined.entry(check.name).or_default();
            entry.0 += 1;
            if check.passed {
                entry.1 += 1;
            } else {
                entry.2.push(format!("event {e}: {}", check.detail));
            }
        }
    }
    combined
        .into_iter()
        .map(|(name, (seen, passed, failures))| {
            let detail = if failures.is_empty() {
                format!("all {events} events")
            } else {
                failures.join("; ")
            };
            Check::new(&name, seen == passed, detail)
        })
        .collect()
}

/// Checks every event as `hot-join` checks its one, combined per check.
pub(crate) async fn check_events(
    api: &Api,
    owner: &str,
    events: &[Uuid],
    capacity: u64,
    answers: &Answers,
) -> anyhow::Result<Vec<Check>> {
    let mut per_event = Vec::with_capacity(events.len());
    for (e, event) in events.iter().enumerate() {
        per_event.push(check_event(api, owner, *event, capacity, &answers.0[e]).await?);
    }
    Ok(combine(per_event))
}

pub async fn run(args: SpreadJoin) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.events > 0 && args.users > 0,
        "--events and --users must be positive"
    );
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate > 0.0, "--rate must be positive");
    }
    let api = Api::new(&args.common.targets, args.concurrency)?;
    let minter = args.common.minter()?;
    let owner = minter.token(Uuid::now_v7());
    let events = api
        .published_events(&owner, args.capacity, args.events)
        .await?;
    let joins: Vec<(Uuid, String, usize)> = (0..args.users)
        .map(|i| {
            let user = Uuid::now_v7();
            (user, minter.token(user), i % args.events)
        })
        .collect();
    match args.rate {
        Some(rate) => eprintln!(
            "spread-join: {} joins over {} events at {rate}/s (open model, ≤ {} in flight)",
            args.users, args.events, args.concurrency
        ),
        None => eprintln!(
            "spread-join: {} joins over {} events through {} connections (closed model)",
            args.users, args.events, args.concurrency
        ),
    }

    let items: Vec<(Option<Duration>, (Uuid, String, usize))> = joins
        .into_iter()
        .enumerate()
        .map(|(i, join)| (args.rate.map(|rate| intended_offset(i, rate)), join))
        .collect();
    let event_ids: Arc<[Uuid]> = events.clone().into();
    let cpu = CpuMeter::start(&args.common);
    let send = {
        let api = api.clone();
        move |(user, token, event): (Uuid, String, usize)| {
            let (api, event_id) = (api.clone(), event_ids[event]);
            async move {
                let key = Uuid::new_v4().to_string();
                (
                    user,
                    event,
                    JoinResult::of(api.join(&token, event_id, &key).await),
                )
            }
        }
    };
    let (answered, elapsed) = paced(items, args.concurrency, "joins", send).await?;
    let mut latency = latency_histogram();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut answers = Answers::new(args.events);
    for ((user, event, answer), took) in answered {
        latency.saturating_record(took.as_micros() as u64);
        *outcomes
            .entry(answers.record(event, user, answer))
            .or_default() += 1;
    }
    let cpu = cpu.checks(answered_2xx(&outcomes), "join");

    let mut checks = check_events(&api, &owner, &events, args.capacity, &answers).await?;
    checks.extend(cpu);
    let achieved = args.users as f64 / elapsed.as_secs_f64();
    checks.push(Check::rate(achieved, args.rate));
    Ok(Report::new(
        "spread-join",
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

    #[test]
    fn the_open_schedule_spaces_joins_evenly() {
        assert_eq!(intended_offset(0, 500.0), Duration::ZERO);
        assert_eq!(intended_offset(500, 500.0), Duration::from_secs(1));
        assert_eq!(intended_offset(3, 2.0), Duration::from_millis(1500));
    }

    #[test]
    fn a_check_holds_only_if_it_holds_for_every_event() {
        let combined = combine(vec![
            vec![Check::new("a", true, "fine"), Check::new("b", true, "fine")],
            vec![
                Check::new("a", true, "fine"),
                Check::new("b", false, "3 missing"),
            ],
        ]);
        assert_eq!(combined.len(), 2);
        assert!(combined[0].passed);
        assert_eq!(combined[0].detail, "all 2 events");
        assert!(!combined[1].passed);
        assert_eq!(combined[1].detail, "event 1: 3 missing");
    }
}
