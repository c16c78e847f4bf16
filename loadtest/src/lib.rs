//! The load generator and invariant checker for Turnout, as a library so
//! that its scenarios can also run inside tests.
//!
//! - `api`: a thin client for the Turnout API, and token minting.
//! - `scenarios`: one module per scenario (`hot_join`, `spread_join`, `churn`,
//!   `mixed`, `ws_fanout`, `recs_fanout`).
//! - `burst`: release many joins at once, time and tally them.
//! - `baseline`: the classic row-lock design, for side-by-side runs.
//! - `invariants`: what the server must have kept, checked through the API.
//! - `report`: percentiles, outcomes, checks; printed and as JSON.
//! - `progress`: the progress bar drawn while a run is under way.
//! - `process`: memory and CPU time of the server and of the tool, from /proc.
//! - `city`: a synthetic city drawn from a seed (recommendations).
//! - `recs_eval`: offline evaluation of recommendations against popularity.
//! - `recs_bench`: ranking latency and live-list push benchmarks.
//! - `demo`: loads a synthetic city into a running server through the API.

pub mod api;
pub mod baseline;
pub mod burst;
pub mod city;
pub mod demo;
pub mod invariants;
pub mod process;
pub mod progress;
pub mod recs_bench;
pub mod recs_eval;
pub mod report;
pub mod scenarios;

use std::path::PathBuf;

use clap::Args;

/// Options every scenario shares.
#[derive(Args, Clone)]
pub struct Common {
    /// The server to test; several (comma-separated or repeated) are used
    /// round-robin, request by request, as a balancer in front of a
    /// cluster would, and the report gives the outcomes per target.
    #[arg(long = "target", value_delimiter = ',', num_args = 1.., default_value = "http://127.0.0.1:8080")]
    pub targets: Vec<String>,
    /// The server's JWT key (its first TURNOUT_JWT_SECRETS entry), to mint
    /// tokens for simulated users.
    #[arg(long, env = "TURNOUT_JWT_KEY")]
    pub jwt_key: Option<String>,
    #[arg(long, default_value = "turnout")]
    pub jwt_issuer: String,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Fail when p99 latency exceeds this.
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    /// Fail when the share of non-2xx answers exceeds this (0..1).
    #[arg(long)]
    pub max_error_rate: Option<f64>,
    /// The server's process id, when it runs on this machine: the report
    /// then gives its memory and the CPU time it spent per request.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// A process the server works through (its database, Redis), by
    /// command name (`postgres`, `redis-server`); repeat for several. The
    /// report gives their CPU time per request over the server's window.
    #[arg(long)]
    pub companion: Vec<String>,
}

impl Common {
    /// The command line's defaults against `target`, minting with `jwt_key`:
    /// for tests and for programs that drive scenarios themselves.
    pub fn for_target(target: impl Into<String>, jwt_key: Option<String>) -> Self {
        Self {
            targets: vec![target.into()],
            jwt_key,
            jwt_issuer: "turnout".into(),
            json: None,
            max_p99_ms: None,
            max_error_rate: None,
            server_pid: None,
            companion: Vec::new(),
        }
    }

    /// The targets as the report names them.
    pub fn target_label(&self) -> String {
        self.targets.join(",")
    }

    /// A token minter for the server under test.
    pub fn minter(&self) -> anyhow::Result<api::Minter> {
        let key = self.jwt_key.as_deref().ok_or_else(|| {
            anyhow::anyhow!("--jwt-key (or TURNOUT_JWT_KEY) is needed to mint tokens")
        })?;
        Ok(api::Minter::new(key, &self.jwt_issuer))
    }
}
