//! `mixed`: reads, joins and WebSocket subscribers together, as an evening
//! in the city looks. Joins and reads each arrive at a fixed rate (open
//! model: latency runs from each request's intended send time), while
//! subscribers watch the events' channels and, optionally, some joiners
//! their own places (`me`). Afterwards the tool checks that the joins kept
//! every event's invariants, that no read ever showed an overbooked event,
//! that every subscriber saw its channel's updates without a gap or a
//! repeat and ended at the event's final counts, and that every watcher of
//! `me` was told its place (status and position).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::me_watch;
use super::spread_join::{check_events, intended_offset};
use super::ws_fanout::{ChannelFrame, connect_all, connect_from, server_addrs, subscribe};
use crate::Common;
use crate::api::Api;
use crate::burst::{Answers, JoinResult, failure_kind, paced};
use crate::process::{CpuMeter, RssTrack};
use crate::report::{Check, Percentiles, Report, answered_2xx, latency_histogram};

#[derive(Args)]
pub struct Mixed {
    #[command(flatten)]
    pub common: Common,
    /// Events the load is spread over.
    #[arg(long, default_value_t = 20)]
    pub events: usize,
    /// Each event's capacity.
    #[arg(long, default_value_t = 100)]
    pub capacity: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Joins per second, each by a new user, round robin over the events.
    #[arg(long, default_value_t = 500.0)]
    pub join_rate: f64,
    /// Reads per second: an event's details, and one in `--list-every` the
    /// listing.
    #[arg(long, default_value_t = 2000.0)]
    pub read_rate: f64,
    /// One read in this many is the listing; 0: details only.
    #[arg(long, default_value_t = 4)]
    pub list_every: usize,
    /// WebSocket clients, each subscribed to one event's channel.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// People who watch their own places (`me`) from before the load:
    /// this many of the joins, spread over the run, are theirs.
    #[arg(long, default_value_t = 0)]
    pub me_watchers: usize,
    /// Spread subscribers over 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, default_value_t = 4)]
    pub source_addresses: u8,
    /// The most requests in flight at once.
    #[arg(long, default_value_t = 500)]
    pub concurrency: usize,
}

/// One step of the load.
enum Step {
    Join {
        user: Uuid,
        token: String,
        event: usize,
    },
    ReadEvent(usize),
    ListEvents,
}

/// How one step ended.
enum Done {
    Join {
        user: Uuid,
        event: usize,
        answer: JoinResult,
    },
    Read {
        kind: String,
        /// Events the answer showed with more active attendees than places.
        overbooked: usize,
    },
}

/// The steps of a run, each with its intended offset from the start: joins
/// and reads interleaved, each kind at its own rate.
fn schedule(args: &Mixed, token: impl Fn(Uuid) -> String) -> Vec<(Duration, Step)> {
    let joins = (args.join_rate * args.duration) as usize;
    let reads = (args.read_rate * args.duration) as usize;
    let mut steps = Vec::with_capacity(joins + reads);
    for i in 0..joins {
        let user = Uuid::now_v7();
        steps.push((
            intended_offset(i, args.join_rate),
            Step::Join {
                user,
                token: token(user),
                event: i % args.events,
            },
        ));
    }
    for i in 0..reads {
        let step = if args.list_every > 0 && i % args.list_every == args.list_every - 1 {
            Step::ListEvents
        } else {
            Step::ReadEvent(i % args.events)
        };
        steps.push((intended_offset(i, args.read_rate), step));
    }
    steps.sort_by_key(|(at, _)| *at);
    steps
}

/// Which of `joins` joins (join `i` is of event `i % events`) are by
/// people watching `me`: `count` of them, round robin over the events and
/// spread over each event's joins, in order.
fn watched_joins(joins: usize, events: usize, count: usize) -> Vec<usize> {
    let count = count.min(joins);
    let mut chosen: Vec<usize> = (0..count)
        .map(|k| {
            let (event, nth) = (k % events, k / events);
            let of_event = (joins - event).div_ceil(events);
            let watched_of_event = (count - event).div_ceil(events);
            event + nth * of_event / watched_of_event * events
        })
        .collect();
    chosen.sort_unstable();
    chosen
}

/// How many events in a read's answer show more active attendees than
/// places: one is an overbooking a reader could see.
fn overbooked(body: &Value) -> usize {
    let over = |e: &Value| {
        e["capacity"]
            .as_u64()
            .zip(e["active_count"].as_u64())
            .is_some_and(|(capacity, active)| active > capacity)
    };
    match &body["data"] {
        Value::Array(events) => events.iter().filter(|e| over(e)).count(),
        event => usize::from(over(event)),
    }
}

/// What one subscriber has seen of its event's channel.
struct Seen {
    offset: u64,
    updates: u64,
    /// Updates whose offset was not the one after the last.
    out_of_order: u64,
    /// Snapshots after the first: the server made the client resync.
    resyncs: u64,
    active: u64,
    waitlist: u64,
    closed: bool,
    /// From each update's commit (`committed_at`) to its arrival here.
    from_commit: Histogram<u64>,
}

impl Seen {
    fn new() -> Self {
        Self {
            offset: 0,
            updates: 0,
            out_of_order: 0,
            resyncs: 0,
            active: 0,
            waitlist: 0,
            closed: false,
            from_commit: latency_histogram(),
        }
    }

    /// Takes a frame that arrived at `arrived`.
    fn take(&mut self, frame: &ChannelFrame, arrived: chrono::DateTime<chrono::Utc>) {
        match frame.kind.as_str() {
            "update" => {
                self.updates += 1;
                if frame.offset != Some(self.offset + 1) {
                    self.out_of_order += 1;
                }
                if let Some(since) = frame.committed_at.and_then(|c| (arrived - c).to_std().ok()) {
                    self.from_commit.saturating_record(since.as_micros() as u64);
                }
            }
            "snapshot" => self.resyncs += 1,
            _ => return,
        }
        self.follow(frame);
    }

    /// Where the subscriber starts: its first snapshot, not a resync.
    fn from_snapshot(snapshot: &ChannelFrame) -> Self {
        let mut seen = Self::new();
        seen.follow(snapshot);
        seen
    }

    /// The channel's position and the event's counts as of `frame`.
    fn follow(&mut self, frame: &ChannelFrame) {
        self.offset = frame.offset.unwrap_or(self.offset);
        if let Some(event) = frame.data.as_ref().and_then(|d| d.event.as_ref()) {
            self.active = event.active_count;
            self.waitlist = event.waitlist_count;
        }
    }
}

/// Subscribes to one event's channel and keeps what it sees up to date
/// until the connection ends.
async fn subscriber(
    server: SocketAddr,
    source: Ipv4Addr,
    event: usize,
    channel: String,
) -> anyhow::Result<(usize, Arc<Mutex<Seen>>)> {
    let mut ws = connect_from(server, source).await?;
    let snapshot = subscribe(&mut ws, &channel).await?;
    let seen = Arc::new(Mutex::new(Seen::from_snapshot(&snapshot)));
    let watching = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message
                && let Ok(frame) = serde_json::from_str::<ChannelFrame>(&text)
            {
                let arrived = chrono::Utc::now();
                watching.lock().expect("not poisoned").take(&frame, arrived);
            }
        }
        watching.lock().expect("not poisoned").closed = true;
    });
    Ok((event, seen))
}

/// "p50 … p99 … max …" of a histogram in milliseconds.
pub(super) fn summary(h: &Histogram<u64>, what: &str) -> String {
    let p = Percentiles::of(h);
    format!(
        "{} {what}, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        p.count, p.p50_ms, p.p99_ms, p.max_ms
    )
}

pub async fn run(args: Mixed) -> anyhow::Result<Report> {
    anyhow::ensure!(args.events > 0, "--events must be positive");
    anyhow::ensure!(
        args.duration > 0.0 && args.join_rate > 0.0 && args.read_rate > 0.0,
        "--duration, --join-rate and --read-rate must be positive"
    );
    let servers = server_addrs(&args.common.targets)?;
    let api = Api::new(&args.common.targets, args.concurrency)?;
    let minter = args.common.minter()?;
    let owner = minter.token(Uuid::now_v7());
    let events = api
        .published_events(&owner, args.capacity, args.events)
        .await?;

    eprintln!("mixed: connecting {} subscribers", args.subscribers);
    let channels: Vec<String> = events.iter().map(|e| format!("event:{e}")).collect();
    let (subscribers, connect_failures) =
        connect_all(args.subscribers, args.source_addresses, |i, source| {
            let event = i % args.events;
            subscriber(
                servers[i % servers.len()],
                source,
                event,
                channels[event].clone(),
            )
        })
        .await?;

    let steps = schedule(&args, |user| minter.token(user));
    let join_count = steps
        .iter()
        .filter(|(_, step)| matches!(step, Step::Join { .. }))
        .count();
    let chosen = watched_joins(join_count, args.events, args.me_watchers);
    // Joins are scheduled in their order: the `i`th join step is join `i`.
    let watched: Arc<[(Uuid, String, usize)]> = steps
        .iter()
        .filter_map(|(_, step)| match step {
            Step::Join { user, token, event } => Some((user, token, event)),
            _ => None,
        })
        .enumerate()
        .filter(|(i, _)| chosen.binary_search(i).is_ok())
        .map(|(_, (user, token, event))| (*user, token.clone(), *event))
        .collect();
    let (watchers, watch_failures) =
        connect_all(watched.len(), args.source_addresses, |i, source| {
            let (user, token, event) = watched[i].clone();
            me_watch::watch(servers[i % servers.len()], source, user, token, event)
        })
        .await?;
    eprintln!(
        "mixed: {:.0} joins/s and {:.0} reads/s for {} s over {} events, {} subscribers watching",
        args.join_rate,
        args.read_rate,
        args.duration,
        args.events,
        subscribers.len()
    );
    if !watched.is_empty() {
        eprintln!(
            "mixed: {} of the joiners watch their places",
            watchers.len()
        );
    }
    let sent: Vec<Duration> = steps.iter().map(|(offset, _)| *offset).collect();
    let items: Vec<(Option<Duration>, Step)> = steps
        .into_iter()
        .map(|(offset, step)| (Some(offset), step))
        .collect();
    let event_ids: Arc<[Uuid]> = events.clone().into();
    let cpu = CpuMeter::start(&args.common);
    let rss = RssTrack::start(args.common.server_pid, Duration::from_secs(5));
    let send = {
        let api = api.clone();
        move |step: Step| {
            let (api, event_ids) = (api.clone(), Arc::clone(&event_ids));
            async move {
                match step {
                    Step::Join { user, token, event } => {
                        let key = Uuid::new_v4().to_string();
                        Done::Join {
                            user,
                            event,
                            answer: JoinResult::of(api.join(&token, event_ids[event], &key).await),
                        }
                    }
                    Step::ReadEvent(event) => {
                        read(&api, &format!("/v1/events/{}", event_ids[event])).await
                    }
                    Step::ListEvents => read(&api, "/v1/events?limit=20").await,
                }
            }
        }
    };
    let (answered, elapsed) = paced(items, args.concurrency, "requests", send).await?;

    let mut latency = latency_histogram();
    let (mut join_latency, mut read_latency) = (latency_histogram(), latency_histogram());
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut answers = Answers::new(args.events);
    let mut overbooked_reads = 0;
    // `paced` answers in the order the steps were given.
    let slowest = Check::slowest_seconds(sent.into_iter().zip(answered.iter().map(|(_, t)| *t)));
    for (done, took) in answered {
        let micros = took.as_micros() as u64;
        latency.saturating_record(micros);
        let kind = match done {
            Done::Join {
                user,
                event,
                answer,
            } => {
                join_latency.saturating_record(micros);
                answers.record(event, user, answer)
            }
            Done::Read { kind, overbooked } => {
                read_latency.saturating_record(micros);
                overbooked_reads += overbooked;
                kind
            }
        };
        *outcomes.entry(kind).or_default() += 1;
    }
    let cpu = cpu.checks(answered_2xx(&outcomes), "request");
    let members: usize = answers.0.iter().map(|a| a.acknowledged.len()).sum();
    let memory = rss.check(args.common.server_pid, members);

    let mut checks = check_events(&api, &owner, &events, args.capacity, &answers).await?;
    checks.push(Check::new(
        "no read showed an overbooked event",
        overbooked_reads == 0,
        format!(
            "{overbooked_reads} overbooked in {} reads",
            read_latency.len()
        ),
    ));
    checks.extend(check_subscribers(&api, &events, &subscribers).await?);
    checks.push(Check::new(
        "every subscriber connected",
        subscribers.len() == args.subscribers,
        format!(
            "{}/{} connected; {connect_failures:?}",
            subscribers.len(),
            args.subscribers
        ),
    ));
    if args.me_watchers > 0 {
        // Joins only: nobody leaves, so each place stays as its join's
        // answer told it (FIFO).
        let as_answered = |w: &me_watch::Watcher| {
            let told = answers.0[w.event()].acknowledged.get(&w.user())?;
            Some((events[w.event()], told.clone()))
        };
        checks.extend(
            me_watch::check(
                (&watchers, watched.len(), &watch_failures),
                "as its join was answered",
                "joins not acknowledged",
                as_answered,
            )
            .await,
        );
    }
    let intended_rate = args.join_rate + args.read_rate;
    checks.push(Check::new(
        "latency by kind (info)",
        true,
        format!(
            "joins: {}; reads: {}",
            summary(&join_latency, "requests"),
            summary(&read_latency, "requests")
        ),
    ));
    checks.push(slowest);
    checks.push(Check::rate(
        latency.len() as f64 / elapsed.as_secs_f64(),
        Some(intended_rate),
    ));
    checks.extend(cpu);
    checks.extend(memory);
    Ok(Report::new(
        "mixed",
        &args.common.target_label(),
        &latency,
        elapsed,
        outcomes,
        checks,
    )
    .by_target(api.outcomes_by_target()))
}

async fn read(api: &Api, path: &str) -> Done {
    match api.get(path).await {
        Ok((status, body)) => Done::Read {
            kind: status.as_u16().to_string(),
            overbooked: overbooked(&body),
        },
        Err(e) => Done::Read {
            kind: failure_kind(&e).into(),
            overbooked: 0,
        },
    }
}

/// Every subscriber must end where its event ended, having seen each update
/// once and in order. Updates are still in flight when the load stops, so
/// the subscribers get a few seconds to catch up.
async fn check_subscribers(
    api: &Api,
    events: &[Uuid],
    subscribers: &[(usize, Arc<Mutex<Seen>>)],
) -> anyhow::Result<Vec<Check>> {
    let mut finals = Vec::with_capacity(events.len());
    for event in events {
        let counts = api.event(*event).await?;
        finals.push((
            counts["active_count"].as_u64().unwrap_or(0),
            counts["waitlist_count"].as_u64().unwrap_or(0),
        ));
    }
    let behind = || {
        subscribers
            .iter()
            .filter(|(event, seen)| {
                let seen = seen.lock().expect("not poisoned");
                (seen.active, seen.waitlist) != finals[*event]
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while behind() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lagging = behind();
    let (mut updates, mut out_of_order, mut resyncs, mut closed) = (0, 0, 0, 0);
    let mut from_commit = latency_histogram();
    for (_, seen) in subscribers {
        let seen = seen.lock().expect("not poisoned");
        updates += seen.updates;
        out_of_order += seen.out_of_order;
        resyncs += seen.resyncs;
        closed += usize::from(seen.closed);
        from_commit.add(&seen.from_commit).expect("same bounds");
    }
    Ok(vec![
        Check::new(
            "every subscriber saw each update once, in order",
            out_of_order == 0 && resyncs == 0 && closed == 0,
            // The count leads the detail: tests/scenarios.rs reads it there.
            format!(
                "{updates} updates; {out_of_order} out of order, {resyncs} resyncs, {closed} closed"
            ),
        ),
        Check::new(
            "every subscriber ended at its event's counts",
            lagging == 0,
            format!("{lagging}/{} behind after the load", subscribers.len()),
        ),
        Check::new(
            "updates from commit to subscriber (info)",
            true,
            summary(&from_commit, "updates"),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn watched_joins_are_spread_over_the_events_and_the_run() {
        let chosen = watched_joins(120, 3, 20);
        assert_eq!(chosen.len(), 20);
        assert!(
            chosen.windows(2).all(|w| w[0] < w[1]),
            "distinct: {chosen:?}"
        );
        for event in 0..3 {
            assert!(chosen.iter().filter(|&&i| i % 3 == event).count() >= 6);
        }
        assert!(chosen.iter().any(|&i| i < 10) && chosen.iter().any(|&i| i >= 100));
        assert_eq!(watched_joins(7, 3, 9), (0..7).collect::<Vec<_>>());
        assert_eq!(watched_joins(100, 4, 0), Vec::<usize>::new());
    }

    fn args(join_rate: f64, read_rate: f64, duration: f64) -> Mixed {
        Mixed {
            common: Common::for_target("http://127.0.0.1:1", None),
            events: 3,
            capacity: 10,
            duration,
            join_rate,
            read_rate,
            list_every: 4,
            me_watchers: 0,
            subscribers: 0,
            source_addresses: 1,
            concurrency: 1,
        }
    }

    #[test]
    fn the_schedule_interleaves_joins_and_reads_at_their_rates() {
        let steps = schedule(&args(2.0, 4.0, 2.0), |_| "token".into());
        let joins: Vec<(Duration, usize)> = steps
            .iter()
            .filter_map(|(at, s)| match s {
                Step::Join { event, .. } => Some((*at, *event)),
                _ => None,
            })
            .collect();
        assert_eq!(
            joins,
            vec![
                (Duration::ZERO, 0),
                (Duration::from_millis(500), 1),
                (Duration::from_secs(1), 2),
                (Duration::from_millis(1500), 0),
            ]
        );
        let lists = steps
            .iter()
            .filter(|(_, s)| matches!(s, Step::ListEvents))
            .count();
        assert_eq!(steps.len() - joins.len(), 8, "4/s for 2 s");
        assert_eq!(lists, 2, "one read in four lists events");
        assert!(steps.windows(2).all(|w| w[0].0 <= w[1].0), "in time order");
    }

    #[test]
    fn a_read_is_overbooked_when_active_exceeds_capacity() {
        let event = |active: u64| json!({ "capacity": 10, "active_count": active });
        assert_eq!(overbooked(&json!({ "data": event(10) })), 0);
        assert_eq!(overbooked(&json!({ "data": event(11) })), 1);
        assert_eq!(
            overbooked(&json!({ "data": [event(3), event(12), event(13)] })),
            2
        );
        assert_eq!(overbooked(&json!({ "error": {} })), 0);
    }

    #[test]
    fn a_subscriber_notices_gaps_repeats_and_resyncs() {
        let frame = |kind: &str, offset: u64, active: u64| -> ChannelFrame {
            serde_json::from_value(json!({
                "type": kind, "offset": offset, "channel": "event:x",
                "committed_at": "2026-11-29T12:00:00.000000Z",
                "data": { "event": { "active_count": active, "waitlist_count": 0, "title": "t" },
                          "kinds": ["joined"] }
            }))
            .unwrap()
        };
        let mut seen = Seen::new();
        let now: chrono::DateTime<chrono::Utc> = "2026-11-29T12:00:00.005Z".parse().unwrap();
        seen.take(&frame("update", 1, 1), now);
        seen.take(&frame("update", 2, 2), now);
        assert_eq!((seen.out_of_order, seen.active, seen.offset), (0, 2, 2));
        seen.take(&frame("update", 2, 2), now);
        seen.take(&frame("update", 4, 4), now);
        assert_eq!(seen.out_of_order, 2, "a repeat and a gap");
        seen.take(&frame("snapshot", 9, 9), now);
        assert_eq!((seen.resyncs, seen.active, seen.offset), (1, 9, 9));
        assert_eq!(
            seen.from_commit.len(),
            4,
            "each update's time from its commit"
        );
        assert!(
            seen.from_commit.equivalent(seen.from_commit.max(), 5000),
            "5 ms, in µs"
        );
    }
}
