//! Where a committed change goes in this process — whether it was committed
//! here or arrived from another node: to the event cache (reads), the
//! channel hubs (live updates), the `me` watchers and the recommenders
//! (live lists).

use std::sync::Arc;

use turnout_actors::changes::{ChangeSink, EventChange};
use turnout_actors::recommend::{EventUpdate, Recommenders};

use super::hubs::Hubs;
use super::me::MeFeeds;
use crate::event_cache::EventCache;
use crate::recommendations::load_catalog;
use crate::store::Store;

#[derive(Clone)]
pub struct Router {
    pub hubs: Hubs,
    pub recommenders: Recommenders,
    pub me: MeFeeds,
    events: EventCache,
    store: Arc<dyn Store>,
}

impl Router {
    pub fn new(
        hubs: Hubs,
        recommenders: Recommenders,
        me: MeFeeds,
        events: EventCache,
        store: Arc<dyn Store>,
    ) -> Self {
        Self {
            hubs,
            recommenders,
            me,
            events,
            store,
        }
    }

    pub fn route(&self, change: Arc<EventChange>) {
        self.events.changed(&change.summary);
        self.recommenders.apply(EventUpdate::from(&*change));
        self.me.route(&change);
        self.hubs.route(change);
    }

    /// Changes may have been missed (the cross-node feed was down): the
    /// event cache forgets what it held, hubs reload their state and the
    /// recommendation catalog is rebuilt.
    pub fn resync_all(&self) {
        self.events.forget_all();
        self.hubs.resync_all();
        self.me.resync_all();
        let (store, settings) = (
            Arc::clone(&self.store),
            self.recommenders.settings().clone(),
        );
        self.recommenders
            .reload_from(async move { load_catalog(store.as_ref(), &settings).await });
    }
}

/// Routes this process's committed changes straight to its own hubs and
/// recommenders.
pub struct LocalFanout(pub Router);

impl ChangeSink for LocalFanout {
    fn committed(&self, change: Arc<EventChange>) {
        self.0.route(change);
    }
}
