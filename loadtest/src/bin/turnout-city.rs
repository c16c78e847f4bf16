//! `turnout-city`: the synthetic city behind recommendations.
//!
//! - `evaluate`: offline precision/recall/NDCG@10 against popularity.
//! - `demo`: loads a demo city into a running server through the API.
//! - `bench-rank`: ranking latency over a large catalog.
//! - `bench-live`: live lists pushed to many users after one change.

use chrono::{DurationRound, Utc};
use clap::{Args, Parser, Subcommand};
use turnout_actors::recommend::RankSettings;
use turnout_loadtest::city::{CityParams, generate};
use turnout_loadtest::{demo, recs_bench, recs_eval};

#[derive(Parser)]
#[command(name = "turnout-city", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Scores Turnout's ranking and a popularity baseline on held-out joins.
    Evaluate(Evaluate),
    /// Loads a demo city into a running server through the API.
    Demo(demo::Demo),
    /// Ranking latency for single users over a large catalog.
    BenchRank(recs_bench::BenchArgs),
    /// Live lists for many users: push latency after one change, memory per actor.
    BenchLive(recs_bench::BenchArgs),
}

#[derive(Args)]
struct Evaluate {
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[arg(long, default_value_t = 40)]
    venues: usize,
    #[arg(long, default_value_t = 4000)]
    events: usize,
    #[arg(long, default_value_t = 3000)]
    people: usize,
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::BenchRank(args) => {
            recs_bench::rank_bench(&args);
        }
        Command::BenchLive(args) => {
            // The actors need an actix system of their own, off this runtime.
            std::thread::spawn(move || recs_bench::live_bench(&args))
                .join()
                .map_err(|_| anyhow::anyhow!("the live benchmark panicked"))?;
        }
        Command::Demo(args) => {
            let loaded = demo::load(&args).await?;
            let base = args.target.trim_end_matches('/');
            println!();
            println!("Kiosk:   {base}/kiosk/{}", loaded.busiest_venue);
            println!("Log in:  {} / {}", loaded.email, demo::PASSWORD);
            println!(
                "Recommendations:\n  curl -s {base}/v1/me/recommendations?limit=5 -H 'Authorization: Bearer {}'",
                loaded.token
            );
        }
        Command::Evaluate(args) => {
            let city = generate(CityParams {
                seed: args.seed,
                venues: args.venues,
                events: args.events,
                people: args.people,
                past_days: 60,
                ahead_days: 30,
                announce_days: 21,
                now: Utc::now().duration_trunc(chrono::Duration::days(1))?,
            });
            let result = recs_eval::evaluate(&city, &RankSettings::default());
            result.print();
            if let Some(path) = args.json {
                std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
            }
        }
    }
    Ok(())
}
