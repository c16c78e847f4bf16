//! `hot-join`: N users join one event at the same moment. Set-up (the event,
//! the tokens) happens before the clock starts; every request is released at
//! once and up to `--concurrency` are in flight. Latency is measured per
//! request from the moment it holds a connection slot (a closed model: with
//! `--concurrency` equal to `--users`, that is the common start).

use clap::Args;
use uuid::Uuid;

use crate::Common;
use crate::api::Api;
use crate::burst::{self, JoinResult, Joiners};
use crate::invariants::{HotJoinOutcome, Member, check_hot_join};
use crate::process::CpuMeter;
use crate::report::{Check, Report};

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
    let event = api.published_event(&owner, args.capacity).await?;
    let users: Vec<(Uuid, String)> = (0..args.users)
        .map(|_| {
            let id = Uuid::now_v7();
            (id, minter.token(id))
        })
        .collect();
    eprintln!(
        "hot-join: {} users on event {event} (capacity {}), {concurrency} in flight",
        args.users, args.capacity
    );
    let api_for_joins = api.clone();
    let cpu = CpuMeter::start(args.common.server_pid);

    let tally = burst::run(users, concurrency, move |_user, token: String| {
        let api = api_for_joins.clone();
        async move { JoinResult::of(api.join(&token, event, &Uuid::new_v4().to_string()).await) }
    })
    .await?;

    // The read side needs no settling: it is written in the same commit.
    let cpu = cpu.checks(args.users, "join");
    let mut checks = check_event(&api, &owner, event, args.capacity, &tally.joiners).await?;
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
