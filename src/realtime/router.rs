//! Where a committed change goes in this process — whether it was committed
//! here or arrived from another node: to the event cache (reads), the
//! channel hubs (live updates), the `me` watchers and the recommenders
//! (live lists).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    reloads: Arc<Reloads>,
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
            reloads: Arc::new(Reloads::new(RELOADS_EVERY)),
        }
    }

    pub fn route(&self, change: Arc<EventChange>) {
        self.events.changed(&change.summary);
        self.recommenders.apply(EventUpdate::from(&*change));
        self.me.route(&change);
        self.hubs.route(change);
    }

    /// Changes may have been missed (the cross-node feed was down): the
    /// event cache forgets what it held at once; hubs reload their state,
    /// `me` feeds read theirs again and the recommendation catalog is
    /// rebuilt, at most once a second (see [`Reloads`]).
    pub fn resync_all(&self) {
        self.events.forget_all();
        match self.reloads.ask(Instant::now()) {
            Reload::Now => self.reload_all(),
            Reload::After(wait) => {
                let router = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    router.reloads.ran(Instant::now());
                    router.reload_all();
                });
            }
            Reload::AlreadyDue => {}
        }
    }

    fn reload_all(&self) {
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

/// How often the state served live is reloaded at most.
const RELOADS_EVERY: Duration = Duration::from_secs(1);

/// Spaces the reloads after missed changes. A stalled Redis can skip
/// numbers batch after batch, and a reload per gap would read every hub's
/// state, every `me` feed and the whole catalog many times a second. A gap
/// within the interval after a reload gets one more when it is up: a
/// reload begun before the gap may not have seen what it missed.
struct Reloads {
    every: Duration,
    state: Mutex<ReloadState>,
}

#[derive(Default)]
struct ReloadState {
    last: Option<Instant>,
    due: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Reload {
    Now,
    After(Duration),
    /// A reload is due already, and starts after this gap.
    AlreadyDue,
}

impl Reloads {
    fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::default(),
        }
    }

    /// Changes were missed at `now`: when to reload.
    fn ask(&self, now: Instant) -> Reload {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.due {
            return Reload::AlreadyDue;
        }
        let next = state.last.map(|last| last + self.every);
        match next.filter(|next| *next > now) {
            Some(next) => {
                state.due = true;
                Reload::After(next - now)
            }
            None => {
                state.last = Some(now);
                Reload::Now
            }
        }
    }

    /// The reload due ran at `now`.
    fn ran(&self, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.due = false;
        state.last = Some(now);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_gaps_reloads_once_at_once_and_once_after() {
        let reloads = Reloads::new(Duration::from_secs(1));
        let t = Instant::now();
        let at = |ms| t + Duration::from_millis(ms);
        assert_eq!(reloads.ask(t), Reload::Now);
        assert_eq!(
            reloads.ask(at(100)),
            Reload::After(Duration::from_millis(900)),
            "a gap after the reload began gets one more"
        );
        for ms in [200, 500, 999] {
            assert_eq!(reloads.ask(at(ms)), Reload::AlreadyDue);
        }
        reloads.ran(at(1_000));
        assert_eq!(
            reloads.ask(at(1_500)),
            Reload::After(Duration::from_millis(500))
        );
        reloads.ran(at(2_000));
        assert_eq!(reloads.ask(at(3_000)), Reload::Now, "a quiet second later");
    }
}
