//! `turnout-loadtest`: drives a Turnout server with a scenario, measures
//! latency and throughput, and then checks through the API that the server
//! kept its invariants. Exits non-zero when an invariant fails or a threshold
//! is missed, so it can gate a deployment.

use clap::{Parser, Subcommand};
use turnout_loadtest::scenarios;

#[derive(Parser)]
#[command(name = "turnout-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Threads the tool runs on. One leaves the rest of the machine to a
    /// server on the same host (and costs less CPU per request than two
    /// threads handing work to each other); give a tool on a machine of its
    /// own one per core.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
}

#[derive(Subcommand)]
enum Scenario {
    /// N users join one event at the same moment.
    HotJoin(scenarios::hot_join::HotJoin),
    /// Joins spread over M events: a fixed arrival rate (open model) or flat out.
    SpreadJoin(scenarios::spread_join::SpreadJoin),
    /// Joins, leaves and offer answers mixed on many events (parties, offer and
    /// first-fit waitlists optional), each answer checked against a model.
    Churn(scenarios::churn::Churn),
    /// Reads, joins and WebSocket subscribers together, each checked.
    Mixed(scenarios::mixed::Mixed),
    /// K WebSocket clients on one venue; time until each has an update.
    WsFanout(scenarios::ws_fanout::WsFanout),
    /// K users with live recommendation lists; time until a new event tops each.
    RecsFanout(scenarios::recs_fanout::RecsFanout),
}

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = match cli.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.into())
            .enable_all()
            .build()?,
    };
    runtime.block_on(run(cli.scenario))
}

async fn run(scenario: Scenario) -> anyhow::Result<()> {
    let (report, common) = match scenario {
        Scenario::HotJoin(args) => {
            let common = args.common.clone();
            (scenarios::hot_join::run(args).await?, common)
        }
        Scenario::SpreadJoin(args) => {
            let common = args.common.clone();
            (scenarios::spread_join::run(args).await?, common)
        }
        Scenario::Churn(args) => {
            let common = args.common.clone();
            (scenarios::churn::run(args).await?, common)
        }
        Scenario::Mixed(args) => {
            let common = args.common.clone();
            (scenarios::mixed::run(args).await?, common)
        }
        Scenario::WsFanout(args) => {
            let common = args.common.clone();
            (scenarios::ws_fanout::run(args).await?, common)
        }
        Scenario::RecsFanout(args) => {
            let common = args.common.clone();
            (scenarios::recs_fanout::run(args).await?, common)
        }
    };
    report.print();
    if let Some(path) = &common.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    let mut failed = !report.invariants_hold();
    if let Some(max) = common.max_p99_ms
        && report.latency.p99_ms > max
    {
        println!(
            "FAIL  p99 {:.2} ms is over --max-p99-ms {max}",
            report.latency.p99_ms
        );
        failed = true;
    }
    if let Some(max) = common.max_error_rate
        && report.error_rate > max
    {
        println!(
            "FAIL  error rate {:.4} is over --max-error-rate {max}",
            report.error_rate
        );
        failed = true;
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}
