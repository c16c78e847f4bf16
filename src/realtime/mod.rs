//! Live updates over WebSocket (`GET /v1/ws`), modelled on Centrifugo and
//! Phoenix Channels: a subscriber gets a snapshot carrying the channel's
//! `epoch` and `offset`, then updates at offset+1, +2, … and can resume after
//! a disconnect from the last offset it saw. See docs/PROTOCOL.md.
//!
//! - `channel`: channel names (`event:<id>`, `venue:<id>`, `feed`, `feed?tag=…`).
//! - `protocol`: the JSON frames.
//! - `projection`: what a channel shows and how a change moves it (pure).
//! - `history`: a channel's recent updates, kept for resuming clients (pure).
//! - `hub`: one actor per channel around its projection; it owns the
//!   offsets and history, so a snapshot and the offsets after it can never
//!   disagree.
//!   It reaches the registry that started it only through its `HubHome`.
//! - `hubs`: finds or starts hubs, and routes committed changes to them.
//! - `router`: hands each committed change to the hubs and the recommenders
//!   (`LocalFanout` on one node, `redis_fanout` across nodes).
//! - `redis_fanout`: cross-node fan-out through Redis pub/sub.
//! - `me`: the `me` channel, each signed-in person's own places, live.
//! - `session`: one actor per connection: frames, subscriptions, heartbeats.
//! - `limits`: open connections, in total and per client address.
//! - `inbound`: the client's frames, decoded and joined into messages.
//! - `socket`: a connection's byte-bounded `SendQueue` of frames, and the
//!   writer that drains it; hubs write to a plain TCP socket themselves.
//!   A `ChannelQueue` is the way in of a channel served by an actor of its
//!   own (`me`, `recs`), which the session shuts with its `unsubscribed`.
//! - `takeover`: an upgraded connection's socket, taken from actix-http.

mod channel;
mod history;
mod hub;
mod hubs;
mod inbound;
mod limits;
mod me;
mod projection;
mod protocol;
mod redis_fanout;
mod router;
mod session;
mod socket;
mod takeover;

pub use channel::Channel;
pub use hubs::Hubs;
pub use inbound::Inbound;
pub use limits::{ConnectionLimits, ConnectionPermit, FeedPlaces, Refused};
pub use me::MeFeeds;
pub use protocol::{ClientFrame, parse_client_frame};
pub use redis_fanout::RedisFanout;
pub use router::{LocalFanout, Router};
pub use session::{Channels, WsSession};
pub use socket::SendQueue;
pub use takeover::{ReadSide, Takeover, WriteSide};

use serde::Deserialize;

/// `[realtime]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct RealtimeSettings {
    /// A server ping this often.
    pub heartbeat_secs: u64,
    /// A connection silent for longer is closed.
    pub client_timeout_secs: u64,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_subscriptions: usize,
    /// Subscribe and unsubscribe frames one connection may send a minute.
    pub max_subscribes_per_minute: u32,
    /// Event and venue hubs running at once; a subscribe past it is refused.
    pub max_hubs: usize,
    /// The share of `max_hubs`, in percent, that only venue channels (the
    /// kiosks') may take: event channels opened by a few addresses cannot
    /// leave them none. A share, so that it fits any `max_hubs`.
    pub venue_hubs_percent: usize,
    /// Feed hubs (`feed`, `feed?tag=…`, `feed?near=…`) running at once: each
    /// holds a listing of its own.
    pub max_feed_hubs: usize,
    /// Distinct filtered feeds (`feed?tag=…`, `feed?near=…`) one client
    /// address holds at once, over all its connections (0: no cap): one
    /// client cannot take every feed hub.
    pub max_filtered_feeds_per_ip: usize,
    /// Threads the channel hubs run on. A hub writes each update to its
    /// subscribers' sockets itself (on plain TCP); raise this on a machine
    /// with many cores and channels with big audiences.
    pub hub_threads: usize,
    /// Largest frame a client may send.
    pub max_frame_bytes: usize,
    /// Outgoing bytes a connection may have queued before it is closed as a
    /// slow consumer (close code 4008).
    pub max_queued_bytes: usize,
    /// Malformed frames tolerated before the connection is closed.
    pub max_strikes: u32,
    /// Updates each channel keeps for resuming clients, at most…
    pub history: usize,
    /// …and none older than this: a client away longer gets a snapshot.
    pub history_secs: u64,
    /// A hub with no subscribers for this long stops.
    pub hub_idle_secs: u64,
    /// Origins allowed to open a socket besides the server's own.
    #[serde(deserialize_with = "crate::config::trimmed_list")]
    pub allowed_origins: Vec<String>,
    /// The Redis pub/sub channel nodes share changes on (with a Redis URL).
    pub redis_channel: String,
}
