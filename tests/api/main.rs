//! Black-box tests of the server over HTTP, each run against SQLite and,
//! when `TURNOUT_TEST_POSTGRES_URL` is set, against a fresh Postgres database.

// The allocator the server runs on (src/main.rs), so /metrics reports its heap.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod browser;
mod helpers;
mod invariants;
mod process;

mod abuse;
mod accounts;
mod admin;
mod bad_input;
mod cluster;
mod crash;
mod events;
mod fleet;
mod fuzz;
mod joins;
mod kiosk;
mod migrations;
mod nodes;
mod offers;
mod ops;
mod outage;
mod outbox;
mod rate_limits;
mod realtime;
mod recommendations;
mod store;
mod tls;
mod traces;
