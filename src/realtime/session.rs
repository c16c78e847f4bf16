//! One actor per WebSocket connection: parses client frames, manages the
//! connection's subscriptions, and writes frames out through a queue bounded
//! in bytes. A client that stops reading is closed with code 4008 instead of
//! letting its queue grow; a silent client is closed after the timeout.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use bytestring::ByteString;
use dashmap::DashMap;
use tokio::sync::mpsc;
use turnout_actors::domain::UserId;
use turnout_actors::recommend::{ListSink, RankedList, Recommenders};

use super::RealtimeSettings;
use super::channel::Channel;
use super::hub::{ChannelHub, Frame, Subscribe, Unsubscribe};
use super::hubs::Hubs;
use super::protocol::{self, ClientFrame, Position};
use crate::auth::TokenKeys;
use crate::http::recommendations::RecommendationView;

/// Close code for a client too slow to take its updates: resync.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code for a client that kept sending malformed frames.
pub const CLOSE_POLICY: u16 = 1008;

/// Open connections, in total and per client address.
pub struct ConnectionLimits {
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
    max_total: usize,
    max_per_ip: usize,
}

/// A connection's place within the limits, given back on drop.
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    pub fn new(settings: &RealtimeSettings) -> Arc<Self> {
        Arc::new(Self {
            total: AtomicUsize::new(0),
            per_ip: DashMap::new(),
            max_total: settings.max_connections,
            max_per_ip: settings.max_connections_per_ip,
        })
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionPermit> {
        let mut count = self.per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            return None;
        }
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        *count += 1;
        metrics::gauge!("turnout_ws_connections").increment(1.0);
        Some(ConnectionPermit {
            limits: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
        self.limits.per_ip.remove_if_mut(&self.ip, |_, count| {
            *count -= 1;
            *count == 0
        });
        metrics::gauge!("turnout_ws_connections").decrement(1.0);
    }
}

/// A connection's outgoing queue, bounded in bytes. Hubs push into it
/// directly; one writer task drains it onto the socket in order.
#[derive(Clone)]
pub struct Outbox {
    queue: mpsc::UnboundedSender<Frame>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    session: Addr<WsSession>,
}

impl Outbox {
    /// Queues a frame. False when the connection is gone or has just gone
    /// over its budget, in which case its session is told to close it.
    pub fn push(&self, frame: Frame) -> bool {
        let len = frame.text.len();
        if self.queued_bytes.fetch_add(len, Ordering::AcqRel) + len > self.max_bytes {
            self.session.do_send(Overflowed);
            return false;
        }
        self.queue.send(frame).is_ok()
    }
}

/// The outgoing queue went over its byte budget.
#[derive(Message)]
#[rtype(result = "()")]
struct Overflowed;

/// The channel name of the caller's live recommendations.
const RECS: &str = "recs";

enum Subscription {
    Hub(Addr<ChannelHub>),
    /// The caller's recommendations, served by their recommender actor.
    Recs(UserId),
}

/// Writes a user's recommendation lists to one connection: the first as the
/// snapshot (or, when the client resumes at the current revision, as a
/// `resumed`), each later one as an update.
struct RecsSink {
    outbox: Outbox,
    since: Option<Position>,
    started: bool,
}

impl ListSink for RecsSink {
    fn deliver(&mut self, list: &RankedList) -> bool {
        let text = if self.started {
            protocol::update(RECS, &list.epoch, list.revision, &recs_data(list))
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
        self.outbox.push(Frame {
            text: ByteString::from(text),
            committed_at: None,
        })
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
    session: actix_ws::Session,
    hubs: Hubs,
    recommenders: Recommenders,
    tokens: Arc<TokenKeys>,
    settings: Arc<RealtimeSettings>,
    subscriptions: HashMap<String, Subscription>,
    user: Option<UserId>,
    last_heard: Instant,
    strikes: u32,
    outbox: Option<Outbox>,
    _permit: ConnectionPermit,
}

impl WsSession {
    pub fn new(
        session: actix_ws::Session,
        hubs: Hubs,
        recommenders: Recommenders,
        tokens: Arc<TokenKeys>,
        settings: Arc<RealtimeSettings>,
        permit: ConnectionPermit,
    ) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(1);
        Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            session,
            hubs,
            recommenders,
            tokens,
            settings,
            subscriptions: HashMap::new(),
            user: None,
            last_heard: Instant::now(),
            strikes: 0,
            outbox: None,
            _permit: permit,
        }
    }

    fn reply(&mut self, text: String) {
        if let Some(outbox) = &self.outbox {
            outbox.push(Frame {
                text: ByteString::from(text),
                committed_at: None,
            });
        }
    }

    fn close(&mut self, code: u16, reason: &str, ctx: &mut Context<Self>) {
        self.outbox = None;
        let session = self.session.clone();
        let reason = CloseReason {
            code: CloseCode::from(code),
            description: Some(reason.to_owned()),
        };
        actix_web::rt::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), session.close(Some(reason))).await;
        });
        ctx.stop();
    }

    fn end(&self, subscription: Subscription) {
        match subscription {
            Subscription::Hub(hub) => hub.do_send(Unsubscribe { session: self.id }),
            Subscription::Recs(user) => self.recommenders.unsubscribe(user, self.id),
        }
    }

    fn strike(&mut self, message: &str, ctx: &mut Context<Self>) {
        self.strikes += 1;
        if self.strikes > self.settings.max_strikes {
            return self.close(CLOSE_POLICY, "too many malformed frames", ctx);
        }
        self.reply(protocol::error("bad_frame", message));
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let frame = match protocol::parse_client_frame(text) {
            Ok(frame) => frame,
            Err(e) => return self.strike(&format!("not a valid frame: {e}"), ctx),
        };
        match frame {
            ClientFrame::Ping {} => self.reply(protocol::pong()),
            ClientFrame::Auth { token } => match self.tokens.verify(&token) {
                Ok(claims) => {
                    self.user = Some(UserId::from(claims.sub));
                    self.reply(protocol::authenticated(&claims.sub.to_string()));
                }
                Err(e) => self.reply(protocol::error("unauthorized", &e.to_string())),
            },
            ClientFrame::Subscribe { channel, since } => {
                let parsed = if channel == RECS {
                    None
                } else {
                    match Channel::parse(&channel) {
                        Ok(parsed) => Some(parsed),
                        Err(message) => return self.strike(&message, ctx),
                    }
                };
                if self.subscriptions.contains_key(&channel) {
                    return self.reply(protocol::error("already_subscribed", &channel));
                }
                if self.subscriptions.len() >= self.settings.max_subscriptions {
                    return self.reply(protocol::error(
                        "too_many_subscriptions",
                        &format!("at most {}", self.settings.max_subscriptions),
                    ));
                }
                let Some(outbox) = self.outbox.clone() else {
                    return;
                };
                let subscription = match parsed {
                    Some(parsed) => {
                        let hub = self.hubs.hub(&parsed);
                        hub.do_send(Subscribe {
                            session: self.id,
                            to: outbox,
                            since,
                        });
                        Subscription::Hub(hub)
                    }
                    None => {
                        let Some(user) = self.user else {
                            return self.reply(protocol::error(
                                "unauthorized",
                                "send an auth frame before subscribing to recs",
                            ));
                        };
                        let sink = RecsSink {
                            outbox,
                            since,
                            started: false,
                        };
                        self.recommenders.subscribe(user, self.id, Box::new(sink));
                        Subscription::Recs(user)
                    }
                };
                self.subscriptions.insert(channel, subscription);
            }
            ClientFrame::Unsubscribe { channel } => match self.subscriptions.remove(&channel) {
                Some(subscription) => {
                    self.end(subscription);
                    self.reply(protocol::unsubscribed(&channel));
                }
                None => self.reply(protocol::error("not_subscribed", &channel)),
            },
        }
    }
}

impl Actor for WsSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The writer owns the socket's send side and drains the queue in
        // order; `queued_bytes` is what it has not written yet.
        let (queue_in, mut queue) = mpsc::unbounded_channel::<Frame>();
        let queued = Arc::new(AtomicUsize::new(0));
        self.outbox = Some(Outbox {
            queue: queue_in,
            queued_bytes: Arc::clone(&queued),
            max_bytes: self.settings.max_queued_bytes,
            session: ctx.address(),
        });
        let (mut session, id) = (self.session.clone(), self.id);
        actix_web::rt::spawn(async move {
            while let Some(frame) = queue.recv().await {
                let len = frame.text.len();
                match tokio::time::timeout(Duration::from_secs(10), session.text(frame.text)).await
                {
                    Ok(Ok(())) => {}
                    _ => break,
                }
                queued.fetch_sub(len, Ordering::AcqRel);
                metrics::counter!("turnout_ws_messages_sent_total").increment(1);
                if let Some(at) = frame.committed_at {
                    let latency = (chrono::Utc::now() - at).to_std().unwrap_or_default();
                    metrics::histogram!("turnout_ws_fanout_seconds").record(latency.as_secs_f64());
                }
            }
            tracing::debug!(session = id, "writer finished");
        });

        let heartbeat = Duration::from_secs(self.settings.heartbeat_secs);
        let timeout = Duration::from_secs(self.settings.client_timeout_secs);
        ctx.run_interval(heartbeat, move |session, ctx| {
            if session.last_heard.elapsed() > timeout {
                return session.close(u16::from(CloseCode::Normal), "heartbeat timeout", ctx);
            }
            let mut socket = session.session.clone();
            actix_web::rt::spawn(async move {
                let _ = socket.ping(b"").await;
            });
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for (_, subscription) in std::mem::take(&mut self.subscriptions) {
            self.end(subscription);
        }
    }
}

impl Handler<Overflowed> for WsSession {
    type Result = ();

    fn handle(&mut self, _: Overflowed, ctx: &mut Self::Context) {
        if self.outbox.is_some() {
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

impl StreamHandler<Result<AggregatedMessage, ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<AggregatedMessage, ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match msg {
            Ok(AggregatedMessage::Text(text)) => self.on_text(&text, ctx),
            Ok(AggregatedMessage::Binary(_)) => self.strike("frames are JSON text", ctx),
            Ok(AggregatedMessage::Ping(bytes)) => {
                let mut socket = self.session.clone();
                actix_web::rt::spawn(async move {
                    let _ = socket.pong(&bytes).await;
                });
            }
            Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(_)) => ctx.stop(),
            Err(ProtocolError::Overflow) => {
                self.close(u16::from(CloseCode::Size), "frame too large", ctx)
            }
            Err(e) => {
                tracing::debug!(session = self.id, error = %e, "websocket protocol error");
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
