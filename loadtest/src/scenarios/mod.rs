//! One module per scenario, each with its arguments and a `run`.

pub mod churn;
pub mod hot_join;
pub mod me_watch;
pub mod mixed;
pub mod recs_fanout;
pub mod spread_join;
pub mod ws_fanout;
