//! What the decider's tests share: a clock in minutes, numbered users, and
//! commands by name, so each test reads as given / when / then.
#![allow(dead_code)] // each test file uses its own share

use chrono::{DateTime, Duration, TimeZone, Utc};
use turnout_actors::domain::*;

pub fn t(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap() + Duration::minutes(minutes)
}

pub fn user(n: u128) -> UserId {
    UserId::from(uuid::Uuid::from_u128(n + 1))
}

pub const OWNER: u128 = 1000;
pub const START: i64 = 10_000;

pub fn details() -> EventDetails {
    EventDetails {
        title: Title::parse("Late jazz").unwrap(),
        description: None,
        venue_id: VenueId::from(uuid::Uuid::from_u128(7)),
        starts_at: t(START),
        ends_at: None,
        tags: vec![Tag::parse("jazz").unwrap()],
    }
}

pub fn create(capacity: i64) -> Command {
    Command::Create {
        id: EventId::from(uuid::Uuid::from_u128(42)),
        owner: user(OWNER),
        details: details(),
        capacity: Capacity::parse(capacity).unwrap(),
        policy: WaitlistPolicy::default(),
        at: t(0),
    }
}

/// Runs commands from nothing, returning the state and every fact emitted.
pub fn given(commands: &[Command]) -> (Option<EventState>, Vec<DomainEvent>) {
    let mut state = None;
    let mut all = Vec::new();
    for c in commands {
        if let Ok(events) = decide(state.as_ref(), c) {
            state = events.iter().fold(state, evolve);
            all.extend(events);
        }
    }
    (state, all)
}

pub fn published(capacity: i64) -> Vec<Command> {
    vec![
        create(capacity),
        Command::Publish {
            by: user(OWNER),
            at: t(1),
        },
    ]
}

pub fn join(n: u128, at: i64) -> Command {
    Command::Join {
        user: user(n),
        seats: Seats::default(),
        at: t(at),
    }
}

pub fn leave(n: u128, at: i64) -> Command {
    Command::Leave {
        user: user(n),
        at: t(at),
    }
}

/// An event published at minute 1 that serves its waitlist by `policy`.
pub fn published_with(capacity: i64, policy: WaitlistPolicy) -> Vec<Command> {
    let mut commands = published(capacity);
    if let Command::Create { policy: p, .. } = &mut commands[0] {
        *p = policy;
    }
    commands
}

/// Offer mode with a hold of `hold_minutes`, parties of up to 20.
pub fn offers(hold_minutes: i64, fill: WaitlistFill) -> WaitlistPolicy {
    WaitlistPolicy {
        mode: WaitlistMode::Offer,
        offer_hold: OfferHold::parse(hold_minutes * 60).unwrap(),
        max_party: Seats::parse(20).unwrap(),
        fill,
    }
}

/// Auto mode, parties of up to 20.
pub fn parties(fill: WaitlistFill) -> WaitlistPolicy {
    WaitlistPolicy {
        max_party: Seats::parse(20).unwrap(),
        fill,
        ..WaitlistPolicy::default()
    }
}

pub fn join_party(n: u128, seats: i64, at: i64) -> Command {
    Command::Join {
        user: user(n),
        seats: Seats::parse(seats).unwrap(),
        at: t(at),
    }
}

pub fn accept(n: u128, at: i64) -> Command {
    Command::AcceptOffer {
        user: user(n),
        at: t(at),
    }
}

pub fn decline(n: u128, at: i64) -> Command {
    Command::DeclineOffer {
        user: user(n),
        at: t(at),
    }
}

pub fn expire(at: i64) -> Command {
    Command::ExpireOffers { at: t(at) }
}

pub fn set_capacity(capacity: i64, at: i64) -> Command {
    Command::Update {
        by: user(OWNER),
        patch: DetailsPatch::default(),
        capacity: Some(Capacity::parse(capacity).unwrap()),
        policy: PolicyPatch::default(),
        at: t(at),
    }
}

pub fn set_policy(policy: PolicyPatch, at: i64) -> Command {
    Command::Update {
        by: user(OWNER),
        patch: DetailsPatch::default(),
        capacity: None,
        policy,
        at: t(at),
    }
}

/// The users the facts hand places to (promoted or offered), in order.
pub fn served(facts: &[DomainEvent]) -> Vec<UserId> {
    facts
        .iter()
        .filter_map(|e| match e {
            DomainEvent::Promoted { user, .. } | DomainEvent::Offered { user, .. } => Some(*user),
            _ => None,
        })
        .collect()
}
