//! Turnout's core: the domain and the actors that own it.
//!
//! - `changes`: the port committed changes leave through (live updates).
//! - `domain`: typed values and the event decider (`decide`, `evolve`) — pure.
//! - `store`: the persistence port the journal and actors need; adapters live
//!   in the server crate.
//! - `journal`: the group-commit persistence supervisor.
//! - `placement`: which shard an event is in and which node should own each
//!   shard (rendezvous hashing) — pure, the base of the cluster.
//! - `event_actor`: one actor per event, a thin shell around the decider.
//! - `idempotency`: answers given under idempotency keys, and the actor's
//!   memory of them.
//! - `in_flight`: the actor's appends awaiting the journal, and who waits
//!   on each.
//! - `shards`: the shards this node holds now, and the lease (fencing
//!   token) each event's actor writes under.
//! - `registry`: activates and routes to event actors; `roster`: the table
//!   of live actors it shares with them.
//! - `recommend`: recommendation scoring, ranking and the per-user
//!   recommender actors.
//! - `queued`: counts of messages waiting in mailboxes without a bound.

pub mod changes;
pub mod domain;
pub mod event_actor;
pub mod idempotency;
mod in_flight;
pub mod journal;
pub mod placement;
pub mod queued;
pub mod recommend;
pub mod registry;
mod roster;
pub mod shards;
pub mod store;
#[cfg(test)]
mod testing;
pub mod threads;

pub use event_actor::{ActorSettings, CommandError, Outcome, Reply};
pub use idempotency::{Answer, IdempotencyKey};
pub use journal::{Appended, Flush, Journal, JournalSettings};
pub use registry::EventRegistry;
