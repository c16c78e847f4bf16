//! The event aggregate as a decider: `decide` turns a command into the facts
//! it causes (or a rejection), `evolve` folds one fact into the state. Both are
//! pure — time arrives inside the command — so every rule here is tested
//! without actors, clocks or databases.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::values::{Capacity, Description, EventId, Tag, Title, UserId, ValueError, VenueId};
use super::waitlist::{Waiter, Waitlist};

/// What an event is, apart from who is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventDetails {
    pub title: Title,
    pub description: Option<Description>,
    pub venue_id: VenueId,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
    pub tags: Vec<Tag>,
}

/// Where an event is in its life: draft → published → cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    Draft,
    Published,
    Cancelled,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Draft => "draft",
            Lifecycle::Published => "published",
            Lifecycle::Cancelled => "cancelled",
        }
    }
}

impl TryFrom<String> for Lifecycle {
    type Error = ValueError;

    fn try_from(stored: String) -> Result<Self, ValueError> {
        by_name(
            [Lifecycle::Draft, Lifecycle::Published, Lifecycle::Cancelled],
            Lifecycle::as_str,
            &stored,
            "event status",
        )
    }
}

/// Where a user stands in an event's roster, as the read model keeps it:
/// a membership that ended stays, as `left`, or as `cancelled` when the
/// event was cancelled while they were in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MemberStatus {
    Active,
    Waitlisted,
    Left,
    Cancelled,
}

impl MemberStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Active => "active",
            MemberStatus::Waitlisted => "waitlisted",
            MemberStatus::Left => "left",
            MemberStatus::Cancelled => "cancelled",
        }
    }
}

impl TryFrom<String> for MemberStatus {
    type Error = ValueError;

    fn try_from(stored: String) -> Result<Self, ValueError> {
        by_name(
            [
                MemberStatus::Active,
                MemberStatus::Waitlisted,
                MemberStatus::Left,
                MemberStatus::Cancelled,
            ],
            MemberStatus::as_str,
            &stored,
            "membership status",
        )
    }
}

/// The one of `all` whose name is `stored` (read back from the database).
fn by_name<T: Copy, const N: usize>(
    all: [T; N],
    name: fn(T) -> &'static str,
    stored: &str,
    what: &str,
) -> Result<T, ValueError> {
    all.into_iter()
        .find(|v| name(*v) == stored)
        .ok_or_else(|| ValueError::new("status", format!("no {what} {stored:?}")))
}

/// The live state of one event. `version` counts the facts folded into it, so
/// it is also the stream version used for optimistic concurrency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventState {
    pub id: EventId,
    pub owner: UserId,
    pub details: EventDetails,
    pub capacity: Capacity,
    pub lifecycle: Lifecycle,
    /// Active attendees and when they joined.
    pub active: BTreeMap<UserId, DateTime<Utc>>,
    /// Strict FIFO: the front is promoted first.
    pub waitlist: Waitlist,
    pub version: u64,
}

/// Where a user stands in an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Membership {
    Active {
        joined_at: DateTime<Utc>,
    },
    /// `position` is 1-based: 1 is promoted next.
    Waitlisted {
        position: usize,
        joined_at: DateTime<Utc>,
    },
}

impl EventState {
    pub fn membership(&self, user: UserId) -> Option<Membership> {
        if let Some(&joined_at) = self.active.get(&user) {
            return Some(Membership::Active { joined_at });
        }
        self.waitlist
            .find(user)
            .map(|(position, w)| Membership::Waitlisted {
                position,
                joined_at: w.joined_at,
            })
    }

    pub fn free_places(&self) -> usize {
        self.capacity.get().saturating_sub(self.active.len())
    }

    fn is_member(&self, user: UserId) -> bool {
        self.active.contains_key(&user) || self.waitlist.contains(user)
    }
}

/// A change to an event's details; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetailsPatch {
    pub title: Option<Title>,
    /// `Some(None)` clears the description.
    pub description: Option<Option<Description>>,
    pub venue_id: Option<VenueId>,
    pub starts_at: Option<DateTime<Utc>>,
    /// `Some(None)` clears the end time.
    pub ends_at: Option<Option<DateTime<Utc>>>,
    pub tags: Option<Vec<Tag>>,
}

impl DetailsPatch {
    fn apply_to(&self, details: &EventDetails) -> EventDetails {
        let mut next = details.clone();
        if let Some(title) = &self.title {
            next.title = title.clone();
        }
        if let Some(description) = &self.description {
            next.description = description.clone();
        }
        if let Some(venue_id) = self.venue_id {
            next.venue_id = venue_id;
        }
        if let Some(starts_at) = self.starts_at {
            next.starts_at = starts_at;
        }
        if let Some(ends_at) = self.ends_at {
            next.ends_at = ends_at;
        }
        if let Some(tags) = &self.tags {
            next.tags = tags.clone();
        }
        next
    }
}

/// What someone asks of an event. `at` is the command's time, taken once at
/// the edge so decisions are reproducible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    Create {
        id: EventId,
        owner: UserId,
        details: EventDetails,
        capacity: Capacity,
        at: DateTime<Utc>,
    },
    Publish {
        by: UserId,
        at: DateTime<Utc>,
    },
    Update {
        by: UserId,
        patch: DetailsPatch,
        capacity: Option<Capacity>,
        at: DateTime<Utc>,
    },
    Cancel {
        by: UserId,
        at: DateTime<Utc>,
    },
    Join {
        user: UserId,
        at: DateTime<Utc>,
    },
    Leave {
        user: UserId,
        at: DateTime<Utc>,
    },
}

impl Command {
    /// Who asks: the owner-to-be for a creation, else the acting user.
    pub fn actor(&self) -> Option<UserId> {
        match self {
            Command::Create { owner, .. } => Some(*owner),
            Command::Publish { by, .. }
            | Command::Update { by, .. }
            | Command::Cancel { by, .. } => Some(*by),
            Command::Join { user, .. } | Command::Leave { user, .. } => Some(*user),
        }
    }
}

/// How a join landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinedAs {
    Active,
    Waitlisted,
}

/// A fact about an event. Facts carry everything their read models need, so
/// projecting them never has to look anything up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DomainEvent {
    Created {
        id: EventId,
        owner: UserId,
        details: EventDetails,
        capacity: Capacity,
        at: DateTime<Utc>,
    },
    Published {
        at: DateTime<Utc>,
    },
    DetailsChanged {
        details: EventDetails,
        at: DateTime<Utc>,
    },
    CapacityChanged {
        capacity: Capacity,
        at: DateTime<Utc>,
    },
    Cancelled {
        at: DateTime<Utc>,
    },
    Joined {
        user: UserId,
        status: JoinedAs,
        at: DateTime<Utc>,
    },
    Left {
        user: UserId,
        joined_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// The front waiter took a free place.
    Promoted {
        user: UserId,
        joined_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
}

impl Command {
    /// The command's span name in traces.
    pub fn trace_name(&self) -> &'static str {
        match self {
            Command::Create { .. } => "event create",
            Command::Publish { .. } => "event publish",
            Command::Update { .. } => "event update",
            Command::Cancel { .. } => "event cancel",
            Command::Join { .. } => "event join",
            Command::Leave { .. } => "event leave",
        }
    }
}

impl DomainEvent {
    /// The name used in the event log, logs and the outbox.
    pub fn kind(&self) -> &'static str {
        match self {
            DomainEvent::Created { .. } => "created",
            DomainEvent::Published { .. } => "published",
            DomainEvent::DetailsChanged { .. } => "details_changed",
            DomainEvent::CapacityChanged { .. } => "capacity_changed",
            DomainEvent::Cancelled { .. } => "cancelled",
            DomainEvent::Joined { .. } => "joined",
            DomainEvent::Left { .. } => "left",
            DomainEvent::Promoted { .. } => "promoted",
        }
    }

    pub fn at(&self) -> DateTime<Utc> {
        match self {
            DomainEvent::Created { at, .. }
            | DomainEvent::Published { at }
            | DomainEvent::DetailsChanged { at, .. }
            | DomainEvent::CapacityChanged { at, .. }
            | DomainEvent::Cancelled { at }
            | DomainEvent::Joined { at, .. }
            | DomainEvent::Left { at, .. }
            | DomainEvent::Promoted { at, .. } => *at,
        }
    }
}

/// Why a command was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "rejection", rename_all = "snake_case")]
pub enum Rejection {
    #[error("event not found")]
    NotFound,
    #[error("event already exists")]
    AlreadyExists,
    #[error("only the event's owner may do this")]
    NotOwner,
    #[error("the owner cannot join their own event")]
    OwnerCannotJoin,
    #[error("the event is cancelled")]
    Cancelled,
    #[error("the event has already started")]
    Started,
    #[error("you are not a member of this event")]
    NotMember,
    #[error("capacity {requested} is below the {active} people already active")]
    CapacityBelowActive { requested: usize, active: usize },
    #[error("{problem}")]
    InvalidSchedule { problem: ScheduleProblem },
}

/// What is wrong with an event's dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleProblem {
    #[error("starts_at must be in the future")]
    StartsInThePast,
    #[error("starts_at must be within 5 years")]
    StartsTooFarAhead,
    #[error("ends_at must be after starts_at")]
    EndsBeforeItStarts,
}

/// Decides what a command does to an event that may not exist yet.
pub fn decide(
    state: Option<&EventState>,
    command: &Command,
) -> Result<Vec<DomainEvent>, Rejection> {
    let Some(state) = state else {
        return match command {
            Command::Create {
                id,
                owner,
                details,
                capacity,
                at,
            } => {
                check_schedule(details, *at)?;
                Ok(vec![DomainEvent::Created {
                    id: *id,
                    owner: *owner,
                    details: details.clone(),
                    capacity: *capacity,
                    at: *at,
                }])
            }
            _ => Err(Rejection::NotFound),
        };
    };

    // A draft exists only for its owner: to anyone else it is not found,
    // whatever they ask of it.
    if state.lifecycle == Lifecycle::Draft && command.actor() != Some(state.owner) {
        return Err(Rejection::NotFound);
    }
    match command {
        Command::Create { .. } => Err(Rejection::AlreadyExists),
        Command::Publish { by, at } => {
            require_owner(state, *by)?;
            match state.lifecycle {
                Lifecycle::Published => Ok(vec![]),
                Lifecycle::Cancelled => Err(Rejection::Cancelled),
                Lifecycle::Draft if *at >= state.details.starts_at => Err(Rejection::Started),
                Lifecycle::Draft => Ok(vec![DomainEvent::Published { at: *at }]),
            }
        }
        Command::Cancel { by, at } => {
            require_owner(state, *by)?;
            match state.lifecycle {
                Lifecycle::Cancelled => Ok(vec![]),
                _ => Ok(vec![DomainEvent::Cancelled { at: *at }]),
            }
        }
        Command::Update {
            by,
            patch,
            capacity,
            at,
        } => {
            require_owner(state, *by)?;
            if state.lifecycle == Lifecycle::Cancelled {
                return Err(Rejection::Cancelled);
            }
            let mut events = Vec::new();
            let details = patch.apply_to(&state.details);
            if details != state.details {
                if details.starts_at != state.details.starts_at
                    || details.ends_at != state.details.ends_at
                {
                    check_schedule(&details, *at)?;
                }
                events.push(DomainEvent::DetailsChanged { details, at: *at });
            }
            if let Some(capacity) = *capacity
                && capacity != state.capacity
            {
                let active = state.active.len();
                if capacity.get() < active {
                    return Err(Rejection::CapacityBelowActive {
                        requested: capacity.get(),
                        active,
                    });
                }
                events.push(DomainEvent::CapacityChanged { capacity, at: *at });
                let free = capacity.get() - active;
                events.extend(
                    state
                        .waitlist
                        .iter()
                        .take(free)
                        .map(|w| DomainEvent::Promoted {
                            user: w.user,
                            joined_at: w.joined_at,
                            at: *at,
                        }),
                );
            }
            Ok(events)
        }
        Command::Join { user, at } => {
            if *user == state.owner {
                return Err(Rejection::OwnerCannotJoin);
            }
            if state.is_member(*user) {
                return Ok(vec![]);
            }
            if state.lifecycle == Lifecycle::Cancelled {
                return Err(Rejection::Cancelled);
            }
            if *at >= state.details.starts_at {
                return Err(Rejection::Started);
            }
            let status = if state.free_places() > 0 {
                JoinedAs::Active
            } else {
                JoinedAs::Waitlisted
            };
            Ok(vec![DomainEvent::Joined {
                user: *user,
                status,
                at: *at,
            }])
        }
        Command::Leave { user, at } => {
            if state.lifecycle == Lifecycle::Cancelled {
                return Err(Rejection::Cancelled);
            }
            if *at >= state.details.starts_at {
                return Err(Rejection::Started);
            }
            if let Some(&joined_at) = state.active.get(user) {
                let mut events = vec![DomainEvent::Left {
                    user: *user,
                    joined_at,
                    at: *at,
                }];
                // A place frees up only if the event is not over capacity,
                // which it never is; the front waiter takes it in this step.
                if let Some(front) = state.waitlist.front() {
                    events.push(DomainEvent::Promoted {
                        user: front.user,
                        joined_at: front.joined_at,
                        at: *at,
                    });
                }
                return Ok(events);
            }
            match state.waitlist.find(*user) {
                Some((_, w)) => Ok(vec![DomainEvent::Left {
                    user: *user,
                    joined_at: w.joined_at,
                    at: *at,
                }]),
                None => Err(Rejection::NotMember),
            }
        }
    }
}

/// Folds one fact into the state. Facts are history: they are never refused,
/// and only `Created` may start a stream.
pub fn evolve(state: Option<EventState>, event: &DomainEvent) -> Option<EventState> {
    let Some(mut state) = state else {
        return match event {
            DomainEvent::Created {
                id,
                owner,
                details,
                capacity,
                ..
            } => Some(EventState {
                id: *id,
                owner: *owner,
                details: details.clone(),
                capacity: *capacity,
                lifecycle: Lifecycle::Draft,
                active: BTreeMap::new(),
                waitlist: Waitlist::default(),
                version: 1,
            }),
            // A stream that does not start with `Created` is not an event.
            _ => None,
        };
    };
    match event {
        DomainEvent::Created { .. } => {}
        DomainEvent::Published { .. } => state.lifecycle = Lifecycle::Published,
        DomainEvent::DetailsChanged { details, .. } => state.details = details.clone(),
        DomainEvent::CapacityChanged { capacity, .. } => state.capacity = *capacity,
        DomainEvent::Cancelled { .. } => {
            state.lifecycle = Lifecycle::Cancelled;
            state.active.clear();
            state.waitlist.clear();
        }
        DomainEvent::Joined { user, status, at } => match status {
            JoinedAs::Active => {
                state.active.insert(*user, *at);
            }
            JoinedAs::Waitlisted => state.waitlist.push_back(Waiter {
                user: *user,
                joined_at: *at,
            }),
        },
        DomainEvent::Left { user, .. } => {
            if state.active.remove(user).is_none() {
                state.waitlist.remove(*user);
            }
        }
        DomainEvent::Promoted {
            user, joined_at, ..
        } => {
            state.waitlist.remove(*user);
            state.active.insert(*user, *joined_at);
        }
    }
    state.version += 1;
    Some(state)
}

fn require_owner(state: &EventState, by: UserId) -> Result<(), Rejection> {
    if by == state.owner {
        Ok(())
    } else {
        Err(Rejection::NotOwner)
    }
}

/// How far ahead an event may be planned: listings and kiosks sort by start,
/// and a date in the year 9999 would sit there for good.
pub const MAX_LEAD: chrono::Duration = chrono::Duration::days(5 * 365);

fn check_schedule(details: &EventDetails, at: DateTime<Utc>) -> Result<(), Rejection> {
    if details.starts_at <= at {
        return Err(Rejection::InvalidSchedule {
            problem: ScheduleProblem::StartsInThePast,
        });
    }
    if details.starts_at > at + MAX_LEAD {
        return Err(Rejection::InvalidSchedule {
            problem: ScheduleProblem::StartsTooFarAhead,
        });
    }
    if let Some(ends_at) = details.ends_at
        && ends_at <= details.starts_at
    {
        return Err(Rejection::InvalidSchedule {
            problem: ScheduleProblem::EndsBeforeItStarts,
        });
    }
    Ok(())
}
