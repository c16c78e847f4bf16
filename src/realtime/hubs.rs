//! Finds or starts the hub of a channel, and routes each committed change to
//! the hubs it may concern: its event's, its venue's, and the feeds.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use dashmap::DashMap;
use turnout_actors::changes::{ChangeSink, Committed};

use super::RealtimeSettings;
use super::channel::Channel;
use super::hub::{Apply, ChannelHub, EventChange, Resync};
use super::router::Router;
use crate::http::EventView;
use crate::store::Store;

#[derive(Clone)]
pub struct Hubs(Arc<Inner>);

struct Inner {
    /// Event and venue hubs, found by the change's ids.
    direct: DashMap<Channel, Addr<ChannelHub>>,
    /// Feed hubs: few, and every change is offered to each.
    feeds: DashMap<Channel, Addr<ChannelHub>>,
    store: Arc<dyn Store>,
    history: usize,
    idle: Duration,
    /// The thread all hubs run on.
    thread: ArbiterHandle,
}

impl Hubs {
    pub fn new(store: Arc<dyn Store>, settings: &RealtimeSettings, thread: ArbiterHandle) -> Self {
        Self(Arc::new(Inner {
            direct: DashMap::new(),
            feeds: DashMap::new(),
            store,
            history: settings.history,
            idle: Duration::from_secs(settings.hub_idle_secs),
            thread,
        }))
    }

    fn map(&self, channel: &Channel) -> &DashMap<Channel, Addr<ChannelHub>> {
        match channel {
            Channel::Feed { .. } => &self.0.feeds,
            _ => &self.0.direct,
        }
    }

    /// The channel's hub, started if it is not running.
    pub fn hub(&self, channel: &Channel) -> Addr<ChannelHub> {
        let mut entry = self
            .map(channel)
            .entry(channel.clone())
            .or_insert_with(|| self.start(channel));
        if !entry.connected() {
            *entry = self.start(channel);
        }
        entry.clone()
    }

    fn start(&self, channel: &Channel) -> Addr<ChannelHub> {
        let (channel, store, hubs) = (channel.clone(), Arc::clone(&self.0.store), self.clone());
        let (history, idle) = (self.0.history, self.0.idle);
        ChannelHub::start_in_arbiter(&self.0.thread, move |_| {
            ChannelHub::new(channel, store, hubs, history, idle)
        })
    }

    pub(super) fn forget(&self, channel: &Channel, addr: &Addr<ChannelHub>) {
        self.map(channel)
            .remove_if(channel, |_, current| current == addr);
    }

    /// Tells every running hub to reload: changes may have been missed.
    pub fn resync_all(&self) {
        for hub in self.0.direct.iter().chain(self.0.feeds.iter()) {
            hub.do_send(Resync);
        }
    }

    /// Offers a change to every running hub it may concern.
    pub fn route(&self, change: Arc<EventChange>) {
        let view = &change.view;
        for channel in [
            Channel::Event(view.id.into()),
            Channel::Venue(view.venue_id.into()),
        ] {
            if let Some(hub) = self.0.direct.get(&channel) {
                hub.do_send(Apply(Arc::clone(&change)));
            }
        }
        if change.kinds.iter().any(|k| k == "details_changed") {
            // The event may have moved: the venue it left must hear of it,
            // and a change does not say where it was. Details change rarely,
            // so every other venue hub is asked; those that never listed the
            // event ignore it.
            let here = Channel::Venue(view.venue_id.into());
            for hub in self.0.direct.iter() {
                if matches!(hub.key(), Channel::Venue(_)) && *hub.key() != here {
                    hub.do_send(Apply(Arc::clone(&change)));
                }
            }
        }
        for hub in self.0.feeds.iter() {
            hub.do_send(Apply(Arc::clone(&change)));
        }
    }
}

/// Routes this process's committed changes straight to its own hubs and
/// recommenders.
pub struct LocalFanout(pub Router);

impl From<Committed> for EventChange {
    fn from(c: Committed) -> Self {
        Self {
            view: EventView::from(&c.summary),
            version: c.summary.version as i64,
            kinds: c.kinds.iter().map(|k| (*k).to_owned()).collect(),
            joined: c.joined.iter().map(|u| u.as_uuid()).collect(),
            left: c.left.iter().map(|u| u.as_uuid()).collect(),
            committed_at: c.committed_at,
        }
    }
}

impl ChangeSink for LocalFanout {
    fn committed(&self, change: Committed) {
        self.0.route(Arc::new(change.into()));
    }
}
