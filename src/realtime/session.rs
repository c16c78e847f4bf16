//! One actor per WebSocket connection: parses client frames, manages the
//! connection's subscriptions, and answers through the connection's
//! [`SendQueue`]. A client that stops reading is closed with code 4008 instead
//! of letting its queue grow; a silent client is closed after the timeout.

use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::{CloseCode, CloseReason};
use turnout_actors::domain::UserId;
use turnout_actors::recommend::{ListSink, RankedList, Recommenders};

use super::RealtimeSettings;
use super::channel::Channel;
use super::hub::{ChannelHub, Subscribe, Subscribed, Unsubscribe};
use super::hubs::{Hubs, NoHub};
use super::inbound::{InboundError, Incoming};
use super::limits::{FeedPlace, FeedPlaces};
use super::me::{ME, MeFeeds, MeWatcher, StopWatching};
use super::protocol::{self, ClientFrame, Position};
use super::socket::{ChannelQueue, Frame, Overflowed, SendQueue};
use crate::auth::TokenKeys;
use crate::views::RecommendationView;

/// Close code for a client too slow to take its updates: resync.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code for a client that kept sending malformed frames.
pub const CLOSE_POLICY: u16 = 1008;
/// Close code for a connection whose `auth` token has expired: reconnect
/// and authenticate with a fresh token.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;

/// The channel name of the caller's live recommendations.
const RECS: &str = "recs";

enum Subscription {
    Hub {
        hub: Addr<ChannelHub>,
        /// Its place among the client address's filtered feeds, if it is
        /// one: held while it lasts, given back when it is dropped.
        place: Option<FeedPlace>,
    },
    /// The caller's recommendations, served by their recommender actor.
    Recs { user: UserId, to: ChannelQueue },
    /// The caller's own places.
    Me {
        watcher: Addr<MeWatcher>,
        to: ChannelQueue,
    },
}

/// Where a connection's channels are served from.
pub struct Channels {
    pub hubs: Hubs,
    pub me: MeFeeds,
    pub recommenders: Recommenders,
    /// The filtered feeds (`feed?tag=…`, `feed?near=…`) each client address
    /// holds: each distinct one is a hub of the node's `max_feed_hubs`, so
    /// one client must not take them all.
    pub filtered_feeds: Arc<FeedPlaces>,
    /// The connection's client address, as its limits count it.
    pub client: IpAddr,
}

/// Writes a user's recommendation lists to one connection: the first as the
/// snapshot (or, when the client resumes at the current revision, as a
/// `resumed`), each later one as an update.
struct RecsSink {
    queue: ChannelQueue,
    since: Option<Position>,
    started: bool,
}

impl ListSink for RecsSink {
    fn deliver(&mut self, list: &RankedList) -> bool {
        let text = if self.started {
            protocol::update(RECS, &list.epoch, list.revision, None, &recs_data(list))
        } else {
            self.started = true;
            match self.since.take() {
                Some(since) if *since.epoch == *list.epoch && since.offset == list.revision => {
                    protocol::resumed(RECS, &list.epoch, list.revision)
                }
                since => protocol::snapshot(
                    RECS,
                    &list.epoch,
                    list.revision,
                    since.map(|_| false),
                    &recs_data(list),
                ),
            }
        };
        self.queue.push(Frame::text(text, None))
    }
}

#[derive(serde::Serialize)]
struct RecsData {
    items: Vec<RecommendationView>,
}

fn recs_data(list: &RankedList) -> RecsData {
    RecsData {
        items: list.items.iter().map(RecommendationView::from).collect(),
    }
}

pub struct WsSession {
    id: u64,
    queue: SendQueue,
    hubs: Hubs,
    filtered_feeds: Arc<FeedPlaces>,
    client: IpAddr,
    me: MeFeeds,
    recommenders: Recommenders,
    tokens: Arc<TokenKeys>,
    settings: Arc<RealtimeSettings>,
    subscriptions: HashMap<String, Subscription>,
    user: Option<UserId>,
    /// When the `auth` token lapses (unix seconds), and the timer that
    /// closes the connection then.
    token_expiry: Option<(i64, SpawnHandle)>,
    last_heard: Instant,
    strikes: u32,
    /// Subscribe and unsubscribe frames left this minute; `None`: no limit.
    churn: Option<governor::DefaultDirectRateLimiter>,
}

impl WsSession {
    pub fn new(
        queue: SendQueue,
        channels: Channels,
        tokens: Arc<TokenKeys>,
        settings: Arc<RealtimeSettings>,
    ) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(1);
        let Channels {
            hubs,
            me,
            recommenders,
            filtered_feeds,
            client,
        } = channels;
        Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            queue,
            hubs,
            filtered_feeds,
            client,
            me,
            recommenders,
            tokens,
            subscriptions: HashMap::new(),
            user: None,
            token_expiry: None,
            last_heard: Instant::now(),
            strikes: 0,
            churn: std::num::NonZeroU32::new(settings.max_subscribes_per_minute)
                .map(|n| governor::RateLimiter::direct(governor::Quota::per_minute(n))),
            settings,
        }
    }

    /// Closes the connection with [`CLOSE_TOKEN_EXPIRED`] when the token it
    /// authenticated with lapses; a later `auth` replaces the deadline.
    fn close_when_token_lapses(&mut self, exp: i64, ctx: &mut Context<Self>) {
        if let Some((_, timer)) = self.token_expiry.take() {
            ctx.cancel_future(timer);
        }
        let left = (exp - chrono::Utc::now().timestamp()).max(0) as u64;
        let timer = ctx.run_later(Duration::from_secs(left), |session, ctx| {
            session.close(CLOSE_TOKEN_EXPIRED, "token expired", ctx)
        });
        self.token_expiry = Some((exp, timer));
    }

    fn token_lapsed(&self) -> bool {
        self.token_expiry
            .as_ref()
            .is_some_and(|(exp, _)| *exp <= chrono::Utc::now().timestamp())
    }

    /// Counts a subscribe or unsubscribe frame; `false` past the budget.
    fn within_churn_budget(&mut self) -> bool {
        if self
            .churn
            .as_ref()
            .is_none_or(|budget| budget.check().is_ok())
        {
            return true;
        }
        metrics::counter!("turnout_ws_churn_limited_total").increment(1);
        self.reply(protocol::error(
            "rate_limited",
            &format!(
                "at most {} subscribe and unsubscribe frames a minute",
                self.settings.max_subscribes_per_minute
            ),
        ));
        false
    }

    fn reply(&mut self, text: String) {
        self.queue.push(Frame::text(text, None));
    }

    fn close(&mut self, code: u16, reason: &str, ctx: &mut Context<Self>) {
        self.queue.close(CloseReason {
            code: CloseCode::from(code),
            description: Some(reason.to_owned()),
        });
        ctx.stop();
    }

    fn end(&self, subscription: Subscription) {
        match subscription {
            Subscription::Hub { hub, place } => hub.do_send(Unsubscribe {
                session: self.id,
                told: None,
                place,
            }),
            Subscription::Recs { user, .. } => self.recommenders.unsubscribe(user, self.id),
            Subscription::Me { watcher, .. } => watcher.do_send(StopWatching),
        }
    }

    /// Ends a `me` or `recs` subscription with its `unsubscribed`, which
    /// nothing of the channel follows: its actor may still be reading a
    /// snapshot, and lets go when it gets to the news.
    fn end_saying_so(&self, channel: &str, subscription: Subscription) {
        if let Subscription::Recs { to, .. } | Subscription::Me { to, .. } = &subscription {
            to.shut_with(Frame::text(protocol::unsubscribed(channel), None));
        }
        self.end(subscription);
    }

    fn strike(&mut self, message: &str, ctx: &mut Context<Self>) {
        self.strike_as("bad_frame", message, ctx);
    }

    /// A malformed frame, or an `auth` whose token does not verify (each a
    /// signature check: not to be had for free, over and over).
    fn strike_as(&mut self, code: &str, message: &str, ctx: &mut Context<Self>) {
        self.strikes += 1;
        if self.strikes > self.settings.max_strikes {
            return self.close(CLOSE_POLICY, "too many malformed frames", ctx);
        }
        self.reply(protocol::error(code, message));
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let frame = match protocol::parse_client_frame(text) {
            Ok(frame) => frame,
            Err(e) => {
                let said = crate::http::client_message(&e.to_string());
                return self.strike(&format!("not a valid frame: {said}"), ctx);
            }
        };
        match frame {
            ClientFrame::Ping {} => self.reply(protocol::pong()),
            ClientFrame::Auth { token } => match self.tokens.verify(token.expose_secret()) {
                Ok(claims) => {
                    let user = UserId::from(claims.sub);
                    if self.user.is_some_and(|before| before != user) {
                        self.end_user_feeds();
                    }
                    self.user = Some(user);
                    self.close_when_token_lapses(claims.exp, ctx);
                    self.reply(protocol::authenticated(&claims.sub.to_string()));
                }
                Err(e) => self.strike_as("unauthorized", &e.to_string(), ctx),
            },
            ClientFrame::Subscribe { .. } | ClientFrame::Unsubscribe { .. }
                if !self.within_churn_budget() => {}
            ClientFrame::Subscribe { .. } if self.token_lapsed() => {
                self.close(CLOSE_TOKEN_EXPIRED, "token expired", ctx)
            }
            ClientFrame::Subscribe { channel, since } => {
                let parsed = if channel == RECS || channel == ME {
                    None
                } else {
                    match Channel::parse(&channel) {
                        Ok(parsed) => Some(parsed),
                        Err(message) => return self.strike(&message, ctx),
                    }
                };
                // Frames carry the channel's canonical name (lower-case ids,
                // parameters in one order), so that is the key too: two
                // spellings of one channel are one subscription.
                let channel = parsed.as_ref().map_or(channel, Channel::to_string);
                if self.subscriptions.contains_key(&channel) {
                    return self.reply(protocol::error("already_subscribed", &channel));
                }
                if self.subscriptions.len() >= self.settings.max_subscriptions {
                    return self.reply(protocol::error(
                        "too_many_subscriptions",
                        &format!("at most {}", self.settings.max_subscriptions),
                    ));
                }
                if self.queue.is_closing() {
                    return;
                }
                let subscription = match parsed {
                    Some(parsed) => {
                        let place = match parsed.is_filtered_feed() {
                            true => match self.filtered_feeds.admit(self.client, &channel) {
                                Ok(place) => Some(place),
                                Err(cap) => {
                                    return self.reply(protocol::error(
                                        "too_many_subscriptions",
                                        &format!(
                                            "{channel}: at most {cap} filtered feeds per client address"
                                        ),
                                    ));
                                }
                            },
                            false => None,
                        };
                        match self.join_hub(channel.clone(), parsed, since, ctx) {
                            Ok(hub) => Subscription::Hub { hub, place },
                            Err(no_hub) => return self.refuse(&channel, no_hub),
                        }
                    }
                    None => {
                        let Some(user) = self.user else {
                            return self.reply(protocol::error(
                                "unauthorized",
                                &format!("send an auth frame before subscribing to {channel}"),
                            ));
                        };
                        let to = ChannelQueue::new(self.queue.clone());
                        if channel == ME {
                            let watcher = self.me.watch(user, to.clone(), since);
                            Subscription::Me { watcher, to }
                        } else {
                            let sink = RecsSink {
                                queue: to.clone(),
                                since,
                                started: false,
                            };
                            self.recommenders.subscribe(user, self.id, Box::new(sink));
                            Subscription::Recs { user, to }
                        }
                    }
                };
                self.subscriptions.insert(channel, subscription);
            }
            ClientFrame::Unsubscribe { channel } => {
                let channel = Channel::parse(&channel).map_or(channel, |c| c.to_string());
                self.unsubscribe(channel, ctx);
            }
        }
    }

    fn refuse(&mut self, channel: &str, no_hub: NoHub) {
        let (code, why) = match no_hub {
            NoHub::NotFound if channel.starts_with("venue:") => {
                ("not_found", "no venue has this id")
            }
            NoHub::NotFound => ("not_found", "no published event has this id"),
            NoHub::Full => ("busy", "the server watches too many channels; retry later"),
        };
        self.reply(protocol::error(code, &format!("{channel}: {why}")));
    }

    /// Subscribes to the channel's hub. A hub that stops for want of
    /// subscribers just as this reaches it drops the message unread; the
    /// channel then has a new hub, and the subscription goes there. A hub
    /// that finds no such event keeps no subscriber, and the client is told.
    fn join_hub(
        &mut self,
        channel: String,
        parsed: Channel,
        since: Option<Position>,
        ctx: &mut Context<Self>,
    ) -> Result<Addr<ChannelHub>, NoHub> {
        let hub = self.hubs.hub(&parsed)?;
        let subscribe = Subscribe {
            session: self.id,
            to: self.queue.clone(),
            since: since.clone(),
        };
        let sent_to = hub.clone();
        ctx.spawn(
            hub.send(subscribe)
                .into_actor(self)
                .map(move |taken, session, ctx| {
                    // Only if this is still the subscription: the client may
                    // have left and come back, to the next hub, meanwhile.
                    let still_wanted = matches!(
                        session.subscriptions.get(&channel),
                        Some(Subscription::Hub { hub, .. }) if *hub == sent_to
                    );
                    if !still_wanted {
                        return;
                    }
                    let refused = match taken {
                        Ok(Subscribed::Taken) => return,
                        Ok(Subscribed::NotFound) => NoHub::NotFound,
                        Err(_) => match session.join_hub(channel.clone(), parsed, since, ctx) {
                            Ok(hub) => {
                                // The new hub's, keeping its place.
                                if let Some(Subscription::Hub { hub: joined, .. }) =
                                    session.subscriptions.get_mut(&channel)
                                {
                                    *joined = hub;
                                }
                                return;
                            }
                            Err(no_hub) => no_hub,
                        },
                    };
                    session.subscriptions.remove(&channel);
                    session.refuse(&channel, refused);
                }),
        );
        Ok(hub)
    }

    /// Ends the `me` and `recs` subscriptions, each with an `unsubscribed`
    /// frame: they are the user's whom the connection authenticated as, and
    /// an `auth` for someone else must not leave them running on the
    /// earlier user's lapsing token.
    fn end_user_feeds(&mut self) {
        for channel in [ME, RECS] {
            if let Some(subscription) = self.subscriptions.remove(channel) {
                self.end_saying_so(channel, subscription);
            }
        }
    }

    /// A hub's channel is told `unsubscribed` by the hub, as it lets the
    /// session go: a subscribe just before may still have a snapshot
    /// coming, which must not follow the `unsubscribed`, nor anything after;
    /// and one just after, to the same hub, is answered after it.
    fn unsubscribe(&mut self, channel: String, ctx: &mut Context<Self>) {
        match self.subscriptions.remove(&channel) {
            Some(Subscription::Hub { hub, place }) => {
                // Through a fresh sender: the subscription's own may have
                // parked when its subscribe found the hub's mailbox full,
                // and a parked sender's message waits out of the mailbox
                // until its future is polled, after a subscribe right
                // behind (a fresh sender) has gone in ahead of it.
                let left = hub.clone().send(Unsubscribe {
                    session: self.id,
                    told: Some(self.queue.clone()),
                    place,
                });
                ctx.spawn(left.into_actor(self).map(move |sent, session, _| {
                    // A hub that had stopped said nothing (the place went
                    // with its message), and nothing of it can follow.
                    if sent.is_err() {
                        session.reply(protocol::unsubscribed(&channel));
                    }
                }));
            }
            Some(subscription) => self.end_saying_so(&channel, subscription),
            None => self.reply(protocol::error("not_subscribed", &channel)),
        }
    }
}

impl Actor for WsSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let heartbeat = Duration::from_secs(self.settings.heartbeat_secs);
        let timeout = Duration::from_secs(self.settings.client_timeout_secs);
        ctx.run_interval(heartbeat, move |session, ctx| {
            if session.last_heard.elapsed() > timeout {
                return session.close(u16::from(CloseCode::Normal), "heartbeat timeout", ctx);
            }
            session.queue.ping();
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for (_, subscription) in std::mem::take(&mut self.subscriptions) {
            self.end(subscription);
        }
        // Whatever ended the session, the client hears a close frame (a
        // no-op when one is already on its way).
        self.queue.close(CloseReason {
            code: CloseCode::Normal,
            description: None,
        });
    }
}

/// A session that ends without `stopped` (a handler panicked, and the task
/// running it was dropped) still closes its socket: the writer would wait
/// for a close that nobody else sends.
impl Drop for WsSession {
    fn drop(&mut self) {
        self.queue.close(CloseReason {
            code: CloseCode::Error,
            description: None,
        });
    }
}

impl Handler<Overflowed> for WsSession {
    type Result = ();

    fn handle(&mut self, _: Overflowed, ctx: &mut Self::Context) {
        if !self.queue.is_closing() {
            metrics::counter!("turnout_ws_slow_consumers_total").increment(1);
            tracing::info!(session = self.id, "closing a slow consumer");
            self.close(
                CLOSE_SLOW_CONSUMER,
                "slow consumer: resubscribe with since",
                ctx,
            );
        }
    }
}

impl StreamHandler<Result<Incoming, InboundError>> for WsSession {
    fn handle(&mut self, msg: Result<Incoming, InboundError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match msg {
            Ok(Incoming::Text(text)) => self.on_text(&text, ctx),
            Ok(Incoming::Binary) => self.strike("frames are JSON text", ctx),
            Ok(Incoming::Ping(bytes)) => self.queue.pong(bytes),
            Ok(Incoming::Pong) => {}
            Ok(Incoming::Close) => ctx.stop(),
            Err(InboundError::TooLarge) => {
                self.close(u16::from(CloseCode::Size), "frame too large", ctx)
            }
            Err(InboundError::NotUtf8) => self.close(
                u16::from(CloseCode::Invalid),
                "text frames must be UTF-8",
                ctx,
            ),
            Err(InboundError::Lost(e)) => {
                tracing::debug!(session = self.id, error = %e, "websocket connection lost");
                ctx.stop();
            }
            Err(InboundError::Protocol(e)) => {
                tracing::debug!(session = self.id, error = %e, "websocket protocol error");
                self.close(u16::from(CloseCode::Protocol), "protocol error", ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
