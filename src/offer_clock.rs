//! Wakes the events whose waitlist offers run out soon. Each event actor
//! keeps its own offers' deadlines (a timer, re-armed when it loads), and
//! stays in memory while one is near; but after a restart, when a shard
//! moves here, or when it left memory while its deadlines were far off,
//! nothing would load it. This sweep does: every `sweep_secs`
//! it asks the read model for events holding an offer due within the next
//! two sweeps, and sends each one this node holds the event's own clock
//! command, which loads it — a deadline already past is processed at once.

use std::sync::Arc;

use futures_util::StreamExt;
use std::time::Duration;

use turnout_actors::domain::{Command, EventId};

use crate::background::{Background, every};
use crate::cluster::forward::{Commands, Forwarded};
use crate::config::OfferSettings;
use crate::store::Store;

/// Events read from the database at a time. The events due are those of
/// the whole cluster, so a sweep reads page after page until it has seen
/// every one due within its horizon: stopping at the first page, a node
/// could find it full of other nodes' events and never wake its own.
const PAGE: i64 = 1_000;

/// How long the sweep waits for one event to wake: a command runs until
/// answered, and one whose shard is moving to an unreachable node must
/// not hold up every other event's offers until placement settles.
const WAKE_WITHIN: Duration = Duration::from_secs(10);

pub fn start(
    settings: &OfferSettings,
    store: Arc<dyn Store>,
    commands: Arc<Commands>,
    background: &mut Background,
) {
    let period = settings.sweep_period();
    let horizon =
        chrono::Duration::from_std(settings.sweep_horizon()).unwrap_or(chrono::Duration::MAX);
    background.spawn(
        "offer clock",
        every(period, background.shutdown(), move |_| {
            let (store, commands) = (store.clone(), commands.clone());
            async move {
                let by = crate::store::now() + horizon;
                let mut after = None;
                loop {
                    let page = match store.events_with_offers_due(by, after, PAGE).await {
                        Ok(page) => page,
                        Err(error) => {
                            tracing::warn!(%error, "could not look for offers running out");
                            return;
                        }
                    };
                    let held = page
                        .iter()
                        .map(|due| due.event)
                        .filter(|e| commands.holds(*e));
                    wake(&commands, held).await;
                    if (page.len() as i64) < PAGE {
                        return;
                    }
                    after = page.last().copied();
                }
            }
        }),
    );
}

/// Events woken at once: one stuck for [`WAKE_WITHIN`] (its shard on the
/// move, a slow load) must not hold up the rest, nor a sweep of thousands
/// take the request pool's connections (16 by default) from the clients.
const WAKES_AT_ONCE: usize = 8;

/// Sends each of `events` its own clock command, [`WAKES_AT_ONCE`] at a
/// time.
async fn wake(commands: &Commands, events: impl Iterator<Item = EventId>) {
    futures_util::stream::iter(events)
        .for_each_concurrent(WAKES_AT_ONCE, |event| wake_one(commands, event))
        .await;
}

async fn wake_one(commands: &Commands, event: EventId) {
    let wake = Forwarded {
        event,
        // Each event's own time: the sweep waits for each commit, and an
        // old `at` would shorten the holds of the offers it makes.
        command: Command::ExpireOffers {
            at: crate::store::now(),
        },
        idempotency: None,
        request_id: None,
    };
    if let Err(error) = commands.execute(wake, WAKE_WITHIN).await {
        tracing::warn!(%event, %error, "could not wake an event holding offers; the next sweep tries again");
    }
}
