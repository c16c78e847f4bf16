//! The Turnout server: HTTP API over one actor per event.
//!
//! - `app`: wires settings, store, actors and the HTTP server together.
//! - `background`: background tasks that stop at a shutdown signal.
//! - `client_address`: what every per-address limit counts a client as.
//! - `cluster`: this node's membership of the cluster (registration, heartbeat).
//! - `config`: layered settings (file, environment, flags).
//! - `auth`: passwords, tokens and the identity extractors.
//! - `http`: routes, the error envelope, pagination, OpenAPI.
//! - `memory`: the process's memory, as /metrics reports it.
//! - `outbox`: the relay that publishes committed facts to Redis streams.
//! - `consumers`: in-process consumers of those facts, idempotent by inbox.
//! - `realtime`: WebSocket sessions, channel hubs and fan-out.
//! - `recommendations`: the recommenders' settings, source and catalog load.
//! - `store`: the SQLite and Postgres adapters.
//! - `telemetry`: logs and metrics.
//! - `testing`: test support: a Postgres database per test, ports for
//!   servers started as processes.
//! - `views`: what clients see of an event, on HTTP and WebSocket alike.

pub mod app;
pub mod auth;
pub mod background;
pub mod client_address;
pub mod cluster;
pub mod config;
pub mod consumers;
pub mod event_cache;
pub mod fanout_link;
pub mod http;
pub mod memory;
pub mod offer_clock;
pub mod outbox;
pub mod realtime;
pub mod recommendations;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod views;
