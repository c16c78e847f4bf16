//! `hot-join`: N users join one event at the same moment. Set-up (the event,
//! the tokens) happens before the clock starts; every request is released at
//! once and up to `--concurrency` are in flight. Latency is measured per
//! request from the moment it holds a connection slot (a closed model: with
//! `--concurrency` equal to `--users`, that is the common start).
//!
//! With `--replays`, some users send their join three times under one
//! `Idempotency-Key` — twice at once, then again after the first answer —
//! and every answer must be the same: one effect per key, under load. Only
//! the first of the three is timed and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Args;
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::Common;
use crate::api::Api;
use crate::burst::{self, JoinResult, Joiners};
use crate::invariants::{Answer, HotJoinOutcome, Member, check_hot_join};
use crate::process::CpuMeter;
use crate::report::{Check, Report, answered_2xx};

#[derive(Args)]
pub struct HotJoin {
    #[command(flatten)]
    pub common: Common,
    /// How many users join.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// The event's capacity; the rest are waitlisted.
    #[arg(long, default_value_t = 100)]
    pub capacity: u64,
    /// Requests in flight at once (connections); defaults to --users.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// The share of users (0 to 1, spread evenly) who send their join three
    /// times under one key: twice at once, then again after the answer.
    #[arg(long, default_value_t = 0.0)]
    pub replays: f64,
    /// Run the same load against the classic design instead: `rowlock`, one
    /// transaction per join with SELECT … FOR UPDATE (needs --database-url).
    #[arg(long, value_parser = ["rowlock"])]
    pub baseline: Option<String>,
    /// Postgres for --baseline.
    #[arg(long, env = "TURNOUT_BASELINE_DATABASE_URL")]
    pub database_url: Option<String>,
}

pub async fn run(args: HotJoin) -> anyhow::Result<Report> {
    let concurrency = args.concurrency.unwrap_or(args.users).max(1);
    if args.baseline.is_some() {
        let url = args.database_url.as_deref().ok_or_else(|| {
            anyhow::anyhow!("--baseline rowlock needs --database-url postgres://…")
        })?;
        return crate::baseline::hot_join(url, args.users, args.capacity, concurrency).await;
    }
    let api = Api::new(&args.common.targets, concurrency)?;
    let minter = args.common.minter()?;
    let owner = minter.token(Uuid::now_v7());
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.replays),
        "--replays is a share, from 0 to 1"
    );
    let event = api.published_event(&owner, args.capacity).await?;
    // User i replays when the running count of replayers steps up at i.
    let replays =
        |i: usize| (i as f64 * args.replays).floor() < ((i + 1) as f64 * args.replays).floor();
    let users: Vec<(Uuid, (String, bool))> = (0..args.users)
        .map(|i| {
            let id = Uuid::now_v7();
            (id, (minter.token(id), replays(i)))
        })
        .collect();
    let keys = Arc::new(KeyReplays::default());
    eprintln!(
        "hot-join: {} users on event {event} (capacity {}), {concurrency} in flight",
        args.users, args.capacity
    );
    let api_for_joins = api.clone();
    let cpu = CpuMeter::start(&args.common);

    let keys_for_joins = Arc::clone(&keys);
    let tally = burst::run(
        users,
        concurrency,
        move |_user, (token, replay): (String, bool)| {
            let (api, keys) = (api_for_joins.clone(), Arc::clone(&keys_for_joins));
            async move {
                let key = Uuid::new_v4().to_string();
                if !replay {
                    return JoinResult::of(api.join(&token, event, &key).await);
                }
                let (first, twin) =
                    tokio::join!(api.join(&token, event, &key), api.join(&token, event, &key));
                let again = api.join(&token, event, &key).await;
                keys.compare(&first, [&twin, &again]);
                JoinResult::of(first)
            }
        },
    )
    .await?;

    // The read side needs no settling: it is written in the same commit.
    let cpu = cpu.checks(answered_2xx(&tally.outcomes), "join");
    let mut checks = check_event(&api, &owner, event, args.capacity, &tally.joiners).await?;
    if args.replays > 0.0 {
        checks.push(keys.check());
    }
    checks.extend(cpu);
    Ok(Report::new(
        "hot-join",
        &args.common.target_label(),
        &tally.latency,
        tally.elapsed,
        tally.outcomes,
        checks,
    )
    .by_target(api.outcomes_by_target()))
}

/// What the replayed keys were answered, tallied as the joins run.
#[derive(Default)]
struct KeyReplays {
    sent: AtomicU64,
    differed: AtomicU64,
    unanswered: AtomicU64,
}

impl KeyReplays {
    /// Compares a key's first answer with its others: the same status code
    /// and the same place (status, seats, waitlist position).
    fn compare(
        &self,
        first: &reqwest::Result<(StatusCode, Value)>,
        others: [&reqwest::Result<(StatusCode, Value)>; 2],
    ) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let answer = |a: &reqwest::Result<(StatusCode, Value)>| {
            a.as_ref()
                .ok()
                .map(|(status, body)| Answer::of(*status, body))
        };
        let Some(told) = answer(first) else {
            self.unanswered.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut answered = others.map(answer).into_iter().flatten().peekable();
        if answered.peek().is_none() {
            self.unanswered.fetch_add(1, Ordering::Relaxed);
        }
        if answered.any(|other| other != told) {
            self.differed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn check(&self) -> Check {
        let (sent, differed, unanswered) = (
            self.sent.load(Ordering::Relaxed),
            self.differed.load(Ordering::Relaxed),
            self.unanswered.load(Ordering::Relaxed),
        );
        Check::new(
            "a key sent three times is answered the same each time",
            differed == 0 && unanswered < sent,
            format!(
                "{sent} keys sent three times, {differed} answered differently, {unanswered} without answers to compare"
            ),
        )
    }
}

/// Reads one event's roster and counts through the API and checks them
/// against what the load was told.
pub(crate) async fn check_event(
    api: &Api,
    owner: &str,
    event: Uuid,
    capacity: u64,
    joiners: &Joiners,
) -> anyhow::Result<Vec<Check>> {
    let roster: Vec<Member> = api
        .attendees(owner, event)
        .await?
        .into_iter()
        .map(|a| Member {
            user: a["user_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_default(),
            status: a["status"].as_str().unwrap_or_default().to_owned(),
            position: a["position"].as_u64(),
        })
        .collect();
    let counts = api.event(event).await?;
    Ok(check_hot_join(&HotJoinOutcome {
        capacity,
        acknowledged: &joiners.acknowledged,
        refused: &joiners.refused,
        unanswered: &joiners.unanswered,
        roster: &roster,
        active_count: counts["active_count"].as_u64().unwrap_or(0),
        waitlist_count: counts["waitlist_count"].as_u64().unwrap_or(0),
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn answer(status: u16, place: Value) -> reqwest::Result<(StatusCode, Value)> {
        Ok((
            StatusCode::from_u16(status).unwrap(),
            json!({ "data": place }),
        ))
    }

    #[test]
    fn a_key_answered_differently_fails_and_the_same_answer_passes() {
        let waiting = json!({ "status": "waitlisted", "seats": 1, "position": 3 });
        let keys = KeyReplays::default();
        keys.compare(
            &answer(201, waiting.clone()),
            [&answer(201, waiting.clone()), &answer(201, waiting.clone())],
        );
        assert!(keys.check().passed, "{}", keys.check().detail);

        let moved = json!({ "status": "waitlisted", "seats": 1, "position": 4 });
        keys.compare(
            &answer(201, waiting.clone()),
            [&answer(201, waiting.clone()), &answer(201, moved)],
        );
        assert!(!keys.check().passed);

        let twice = KeyReplays::default();
        twice.compare(
            &answer(201, waiting.clone()),
            [&answer(201, waiting.clone()), &answer(200, waiting)],
        );
        assert!(
            !twice.check().passed,
            "a second effect answers 200 already_member"
        );
    }
}
