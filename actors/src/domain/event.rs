//! The event aggregate as a decider: `decide` turns a command into the facts
//! it causes (or a rejection), `evolve` folds one fact into the state. Both are
//! pure — time arrives inside the command — so every rule here is tested
//! without actors, clocks or databases.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::places::{Attendee, Holders, Offer};
use super::values::{Capacity, Description, EventId, Seats, Tag, Title, UserId, VenueId};
use super::waitlist::{PolicyPatch, Waiter, Waitlist, WaitlistFill, WaitlistMode, WaitlistPolicy};

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

named!(Lifecycle, "event status",
    Lifecycle::Draft => "draft",
    Lifecycle::Published => "published",
    Lifecycle::Cancelled => "cancelled");

/// Where a user stands in an event's roster, as the read model keeps it:
/// a membership that ended stays, as `left`, `declined` or `expired` (an
/// offer turned down or not taken in time), or as `cancelled` when the
/// event was cancelled while they were in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MemberStatus {
    Active,
    Waitlisted,
    Offered,
    Left,
    Declined,
    Expired,
    Cancelled,
}

named!(MemberStatus, "membership status",
    MemberStatus::Active => "active",
    MemberStatus::Waitlisted => "waitlisted",
    MemberStatus::Offered => "offered",
    MemberStatus::Left => "left",
    MemberStatus::Declined => "declined",
    MemberStatus::Expired => "expired",
    MemberStatus::Cancelled => "cancelled");

/// The live state of one event. `version` counts the facts folded into it, so
/// it is also the stream version used for optimistic concurrency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventState {
    pub id: EventId,
    pub owner: UserId,
    pub details: EventDetails,
    pub capacity: Capacity,
    /// Absent from snapshots taken before offers: the default policy.
    #[serde(default)]
    pub policy: WaitlistPolicy,
    pub lifecycle: Lifecycle,
    /// Active parties.
    pub active: Holders<Attendee>,
    /// Places held for parties until they accept, decline or run out.
    #[serde(default)]
    pub offers: Holders<Offer>,
    /// First come, first served (see [`WaitlistFill`]).
    pub waitlist: Waitlist,
    pub version: u64,
}

/// Where a user stands in an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Membership {
    Active {
        joined_at: DateTime<Utc>,
        /// Absent from answers stored before parties: one.
        #[serde(default)]
        seats: Seats,
    },
    /// Places held for the party until `expires_at`.
    Offered {
        joined_at: DateTime<Utc>,
        seats: Seats,
        expires_at: DateTime<Utc>,
    },
    /// `position` is 1-based, counting parties: 1 is served next.
    Waitlisted {
        position: usize,
        joined_at: DateTime<Utc>,
        #[serde(default)]
        seats: Seats,
    },
}

impl Membership {
    pub fn seats(&self) -> Seats {
        match *self {
            Membership::Active { seats, .. }
            | Membership::Offered { seats, .. }
            | Membership::Waitlisted { seats, .. } => seats,
        }
    }
}

impl EventState {
    pub fn membership(&self, user: UserId) -> Option<Membership> {
        if let Some(a) = self.active.get(&user) {
            return Some(Membership::Active {
                joined_at: a.joined_at,
                seats: a.seats,
            });
        }
        if let Some(o) = self.offers.get(&user) {
            return Some(Membership::Offered {
                joined_at: o.joined_at,
                seats: o.seats,
                expires_at: o.expires_at,
            });
        }
        self.waitlist
            .find(user)
            .map(|(position, w)| Membership::Waitlisted {
                position,
                joined_at: w.joined_at,
                seats: w.seats,
            })
    }

    /// Seats held: active, and on offer.
    pub fn taken_places(&self) -> usize {
        self.active.seats() + self.offers.seats()
    }

    pub fn free_places(&self) -> usize {
        self.capacity.get().saturating_sub(self.taken_places())
    }

    /// Members of every kind: active, offered and waiting parties.
    pub fn parties(&self) -> usize {
        self.active.len() + self.offers.len() + self.waitlist.len()
    }

    /// When the first offer runs out, if one is held.
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        self.offers.next_deadline()
    }

    fn is_member(&self, user: UserId) -> bool {
        self.active.contains_key(&user)
            || self.offers.contains_key(&user)
            || self.waitlist.contains(user)
    }

    /// The facts that hand `free` places to waiting parties under `policy`,
    /// leaving out `gone` (a waiting party leaving in the same step). Nobody
    /// is served once the event has started: membership changes only before
    /// (an offer could not be accepted, and a promotion would seat a party
    /// when nobody may join or leave); places freed after the start, by an
    /// offer running out or a capacity raised, stay free.
    fn serve(
        &self,
        policy: WaitlistPolicy,
        free: usize,
        gone: Option<UserId>,
        because: Freed,
        at: DateTime<Utc>,
    ) -> Vec<DomainEvent> {
        if self.lifecycle == Lifecycle::Cancelled || at >= self.details.starts_at {
            return Vec::new();
        }
        let served = self.waitlist.served(free, policy.fill, gone);
        served
            .into_iter()
            .map(|w| match policy.mode {
                WaitlistMode::Auto => DomainEvent::Promoted {
                    user: w.user,
                    joined_at: w.joined_at,
                    seats: w.seats,
                    because: Some(because),
                    at,
                },
                WaitlistMode::Offer => DomainEvent::Offered {
                    user: w.user,
                    joined_at: w.joined_at,
                    seats: w.seats,
                    expires_at: at + policy.offer_hold.duration(),
                    because: Some(because),
                    at,
                },
            })
            .collect()
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
        /// Absent from commands forwarded by a node from before offers.
        #[serde(default)]
        policy: WaitlistPolicy,
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
        #[serde(default)]
        policy: PolicyPatch,
        at: DateTime<Utc>,
    },
    Cancel {
        by: UserId,
        at: DateTime<Utc>,
    },
    Join {
        user: UserId,
        #[serde(default)]
        seats: Seats,
        at: DateTime<Utc>,
    },
    Leave {
        user: UserId,
        at: DateTime<Utc>,
    },
    AcceptOffer {
        user: UserId,
        at: DateTime<Utc>,
    },
    DeclineOffer {
        user: UserId,
        at: DateTime<Utc>,
    },
    /// The event's own clock: offers whose hold ran out by `at` pass on.
    ExpireOffers {
        at: DateTime<Utc>,
    },
}

/// `body` with `at` bound to the command's time, whichever command it is
/// (by reference, or by mutable reference for `&mut`).
macro_rules! command_at {
    ($command:expr, $at:ident => $body:expr) => {
        match $command {
            Command::Create { $at, .. }
            | Command::Publish { $at, .. }
            | Command::Update { $at, .. }
            | Command::Cancel { $at, .. }
            | Command::Join { $at, .. }
            | Command::Leave { $at, .. }
            | Command::AcceptOffer { $at, .. }
            | Command::DeclineOffer { $at, .. }
            | Command::ExpireOffers { $at } => $body,
        }
    };
}

impl Command {
    /// Who asks: the owner-to-be for a creation, else the acting user;
    /// nobody for the event's own clock.
    pub fn actor(&self) -> Option<UserId> {
        match self {
            Command::Create { owner, .. } => Some(*owner),
            Command::Publish { by, .. }
            | Command::Update { by, .. }
            | Command::Cancel { by, .. } => Some(*by),
            Command::Join { user, .. }
            | Command::Leave { user, .. }
            | Command::AcceptOffer { user, .. }
            | Command::DeclineOffer { user, .. } => Some(*user),
            Command::ExpireOffers { .. } => None,
        }
    }

    /// The command timed at `now`: a command decided on a node other than
    /// the one that took the request is judged by the deciding node's
    /// clock, the event's one authority. A lagging clock elsewhere cannot
    /// stretch an offer's hold or join an event that has started, and a
    /// clock running ahead cannot run offers out before their deadline.
    pub fn timed_at(mut self, now: DateTime<Utc>) -> Self {
        command_at!(&mut self, at => *at = now);
        self
    }

    /// When the command happens.
    pub fn at(&self) -> DateTime<Utc> {
        command_at!(self, at => *at)
    }

    /// The member whose place the command is about: their membership is
    /// part of its answer.
    pub fn member(&self) -> Option<UserId> {
        match self {
            Command::Join { user, .. }
            | Command::Leave { user, .. }
            | Command::AcceptOffer { user, .. }
            | Command::DeclineOffer { user, .. } => Some(*user),
            _ => None,
        }
    }

    /// The command's span name in traces.
    pub fn trace_name(&self) -> &'static str {
        match self {
            Command::Create { .. } => "event create",
            Command::Publish { .. } => "event publish",
            Command::Update { .. } => "event update",
            Command::Cancel { .. } => "event cancel",
            Command::Join { .. } => "event join",
            Command::Leave { .. } => "event leave",
            Command::AcceptOffer { .. } => "event accept offer",
            Command::DeclineOffer { .. } => "event decline offer",
            Command::ExpireOffers { .. } => "event expire offers",
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
        policy: WaitlistPolicy,
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
    WaitlistChanged {
        policy: WaitlistPolicy,
        at: DateTime<Utc>,
    },
    Cancelled {
        at: DateTime<Utc>,
    },
    Joined {
        user: UserId,
        status: JoinedAs,
        seats: Seats,
        at: DateTime<Utc>,
    },
    /// A member left: from the active list, an offer or the waitlist.
    Left {
        user: UserId,
        joined_at: DateTime<Utc>,
        seats: Seats,
        at: DateTime<Utc>,
    },
    /// A waiting party took free places (auto mode).
    Promoted {
        user: UserId,
        joined_at: DateTime<Utc>,
        seats: Seats,
        /// Absent from facts written before it was recorded.
        #[serde(default)]
        because: Option<Freed>,
        at: DateTime<Utc>,
    },
    /// Free places are held for a waiting party until `expires_at`.
    Offered {
        user: UserId,
        joined_at: DateTime<Utc>,
        seats: Seats,
        expires_at: DateTime<Utc>,
        because: Option<Freed>,
        at: DateTime<Utc>,
    },
    OfferAccepted {
        user: UserId,
        joined_at: DateTime<Utc>,
        seats: Seats,
        at: DateTime<Utc>,
    },
    OfferDeclined {
        user: UserId,
        joined_at: DateTime<Utc>,
        seats: Seats,
        at: DateTime<Utc>,
    },
    /// The hold ran out before the party answered: it is out.
    OfferExpired {
        user: UserId,
        joined_at: DateTime<Utc>,
        seats: Seats,
        at: DateTime<Utc>,
    },
}

impl DomainEvent {
    /// Whether this fact changes only who holds and who waits for places,
    /// not the event itself (its details, capacity, lifecycle or waitlist
    /// policy): the read model then needs its counts written, nothing more.
    pub fn moves_members_only(&self) -> bool {
        match self {
            DomainEvent::Created { .. }
            | DomainEvent::Published { .. }
            | DomainEvent::DetailsChanged { .. }
            | DomainEvent::CapacityChanged { .. }
            | DomainEvent::WaitlistChanged { .. }
            | DomainEvent::Cancelled { .. } => false,
            DomainEvent::Joined { .. }
            | DomainEvent::Left { .. }
            | DomainEvent::Promoted { .. }
            | DomainEvent::Offered { .. }
            | DomainEvent::OfferAccepted { .. }
            | DomainEvent::OfferDeclined { .. }
            | DomainEvent::OfferExpired { .. } => true,
        }
    }

    /// The name used in the event log, logs and the outbox.
    pub fn kind(&self) -> &'static str {
        match self {
            DomainEvent::Created { .. } => "created",
            DomainEvent::Published { .. } => "published",
            DomainEvent::DetailsChanged { .. } => "details_changed",
            DomainEvent::CapacityChanged { .. } => "capacity_changed",
            DomainEvent::WaitlistChanged { .. } => "waitlist_changed",
            DomainEvent::Cancelled { .. } => "cancelled",
            DomainEvent::Joined { .. } => "joined",
            DomainEvent::Left { .. } => "left",
            DomainEvent::Promoted { .. } => "promoted",
            DomainEvent::Offered { .. } => "offered",
            DomainEvent::OfferAccepted { .. } => "offer_accepted",
            DomainEvent::OfferDeclined { .. } => "offer_declined",
            DomainEvent::OfferExpired { .. } => "offer_expired",
        }
    }

    pub fn at(&self) -> DateTime<Utc> {
        match self {
            DomainEvent::Created { at, .. }
            | DomainEvent::Published { at }
            | DomainEvent::DetailsChanged { at, .. }
            | DomainEvent::CapacityChanged { at, .. }
            | DomainEvent::WaitlistChanged { at, .. }
            | DomainEvent::Cancelled { at }
            | DomainEvent::Joined { at, .. }
            | DomainEvent::Left { at, .. }
            | DomainEvent::Promoted { at, .. }
            | DomainEvent::Offered { at, .. }
            | DomainEvent::OfferAccepted { at, .. }
            | DomainEvent::OfferDeclined { at, .. }
            | DomainEvent::OfferExpired { at, .. } => *at,
        }
    }

    /// What happened, in one word, as logs, history and the `me` channel say
    /// it: a join is `joined` or `waitlisted`, an answered offer `accepted`
    /// or `declined`, one run out `expired`; other facts by their kind.
    pub fn what(&self) -> &'static str {
        match self {
            DomainEvent::Joined {
                status: JoinedAs::Waitlisted,
                ..
            } => "waitlisted",
            DomainEvent::OfferAccepted { .. } => "accepted",
            DomainEvent::OfferDeclined { .. } => "declined",
            DomainEvent::OfferExpired { .. } => "expired",
            other => other.kind(),
        }
    }

    /// The party a fact is about: who, how many seats, since when.
    pub fn party(&self) -> Option<Party> {
        let (user, seats, joined_at) = match *self {
            DomainEvent::Joined {
                user, seats, at, ..
            } => (user, seats, at),
            DomainEvent::Left {
                user,
                seats,
                joined_at,
                ..
            }
            | DomainEvent::Promoted {
                user,
                seats,
                joined_at,
                ..
            }
            | DomainEvent::Offered {
                user,
                seats,
                joined_at,
                ..
            }
            | DomainEvent::OfferAccepted {
                user,
                seats,
                joined_at,
                ..
            }
            | DomainEvent::OfferDeclined {
                user,
                seats,
                joined_at,
                ..
            }
            | DomainEvent::OfferExpired {
                user,
                seats,
                joined_at,
                ..
            } => (user, seats, joined_at),
            _ => return None,
        };
        Some(Party {
            user,
            seats,
            joined_at,
        })
    }

    /// Where the fact leaves its member, as the roster read model keeps it.
    pub fn member_status(&self) -> Option<MemberStatus> {
        Some(match self {
            DomainEvent::Joined {
                status: JoinedAs::Active,
                ..
            }
            | DomainEvent::Promoted { .. }
            | DomainEvent::OfferAccepted { .. } => MemberStatus::Active,
            DomainEvent::Joined {
                status: JoinedAs::Waitlisted,
                ..
            } => MemberStatus::Waitlisted,
            DomainEvent::Offered { .. } => MemberStatus::Offered,
            DomainEvent::Left { .. } => MemberStatus::Left,
            DomainEvent::OfferDeclined { .. } => MemberStatus::Declined,
            DomainEvent::OfferExpired { .. } => MemberStatus::Expired,
            _ => return None,
        })
    }
}

/// Why places came free for the waiting parties they were handed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Freed {
    /// A member left (or gave up an offer by leaving).
    Left,
    /// A party waiting ahead left the waitlist.
    WaitlistLeft,
    OfferDeclined,
    OfferExpired,
    CapacityRaised,
    /// The owner changed how the waitlist is served.
    FillChanged,
}

impl Freed {
    pub fn as_str(self) -> &'static str {
        match self {
            Freed::Left => "a member left",
            Freed::WaitlistLeft => "a party waiting ahead left the waitlist",
            Freed::OfferDeclined => "an offer was declined",
            Freed::OfferExpired => "an offer ran out",
            Freed::CapacityRaised => "the capacity was raised",
            Freed::FillChanged => "the waitlist's order changed to first fit",
        }
    }
}

/// How a decision moves the waitlist, for those watching their place in
/// it: a party entering it, or leaving it (served, or gone), each at its
/// 1-based position as it stood when that fact applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "move", rename_all = "snake_case")]
pub enum WaitlistMove {
    Entered { user: UserId, position: u32 },
    Vacated { user: UserId, position: u32 },
}

impl WaitlistMove {
    /// Where a party waiting at `position` stands after this move (`None`:
    /// it is the party that left).
    pub fn shift(self, position: u32) -> Option<u32> {
        match self {
            WaitlistMove::Entered { .. } => Some(position),
            WaitlistMove::Vacated { position: gone, .. } if gone < position => Some(position - 1),
            WaitlistMove::Vacated { position: gone, .. } if gone == position => None,
            WaitlistMove::Vacated { .. } => Some(position),
        }
    }
}

/// The waitlist moves `facts`, decided on `state`, make. (A cancellation
/// ends every place at once and moves nobody.)
pub fn waitlist_moves(state: &EventState, facts: &[DomainEvent]) -> Vec<WaitlistMove> {
    // Positions in the list as it was, of the parties gone so far.
    let mut gone: Vec<usize> = Vec::new();
    let mut moves = Vec::new();
    for fact in facts {
        let Some(party) = fact.party() else { continue };
        match fact {
            DomainEvent::Joined {
                status: JoinedAs::Waitlisted,
                ..
            } => {
                let waiting = state.waitlist.len() - gone.len();
                moves.push(WaitlistMove::Entered {
                    user: party.user,
                    position: (waiting + 1) as u32,
                });
            }
            DomainEvent::Left { .. }
            | DomainEvent::Promoted { .. }
            | DomainEvent::Offered { .. } => {
                let Some(was) = state.waitlist.position_of(party.user) else {
                    continue;
                };
                let ahead_gone = gone.iter().filter(|g| **g < was).count();
                gone.push(was);
                moves.push(WaitlistMove::Vacated {
                    user: party.user,
                    position: (was - ahead_gone) as u32,
                });
            }
            _ => {}
        }
    }
    moves
}

/// Who a membership fact is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Party {
    pub user: UserId,
    pub seats: Seats,
    /// When the party first asked.
    pub joined_at: DateTime<Utc>,
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
    #[error("capacity {requested} is below the {active} places already taken or on offer")]
    CapacityBelowActive { requested: usize, active: usize },
    #[error(
        "capacity {requested} is below a waiting party of {seats}, which could never be served"
    )]
    CapacityBelowParty { requested: usize, seats: usize },
    #[error("{problem}")]
    InvalidSchedule { problem: ScheduleProblem },
    #[error("this event takes parties of at most {max} (you asked for {seats})")]
    PartyTooLarge { seats: usize, max: usize },
    #[error("you hold no offer for this event")]
    NoOffer,
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
                policy,
                at,
            } => {
                check_schedule(details, *at)?;
                Ok(vec![DomainEvent::Created {
                    id: *id,
                    owner: *owner,
                    details: details.clone(),
                    capacity: *capacity,
                    policy: *policy,
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
            policy,
            at,
        } => decide_update(state, *by, patch, *capacity, policy, *at),
        Command::Join { user, seats, at } => decide_join(state, *user, *seats, *at),
        Command::Leave { user, at } => {
            require_open(state, *at)?;
            let (joined_at, seats, freed, gone, because) = if let Some(a) = state.active.get(user) {
                (a.joined_at, a.seats, a.seats.get(), None, Freed::Left)
            } else if let Some(o) = state.offers.get(user) {
                (o.joined_at, o.seats, o.seats.get(), None, Freed::Left)
            } else if let Some((_, w)) = state.waitlist.find(*user) {
                // A waiting party frees nothing, but it may have stood in
                // the way of smaller parties behind it.
                (w.joined_at, w.seats, 0, Some(*user), Freed::WaitlistLeft)
            } else {
                return Err(Rejection::NotMember);
            };
            let mut facts = vec![DomainEvent::Left {
                user: *user,
                joined_at,
                seats,
                at: *at,
            }];
            facts.extend(state.serve(
                state.policy,
                state.free_places() + freed,
                gone,
                because,
                *at,
            ));
            Ok(facts)
        }
        Command::AcceptOffer { user, at } => {
            require_open(state, *at)?;
            if state.active.contains_key(user) {
                // Accepted before: in effect already.
                return Ok(vec![]);
            }
            match state.offers.get(user) {
                Some(o) if *at < o.expires_at => Ok(vec![DomainEvent::OfferAccepted {
                    user: *user,
                    joined_at: o.joined_at,
                    seats: o.seats,
                    at: *at,
                }]),
                _ => Err(Rejection::NoOffer),
            }
        }
        Command::DeclineOffer { user, at } => {
            require_open(state, *at)?;
            let Some(o) = state.offers.get(user) else {
                return Err(Rejection::NoOffer);
            };
            let mut facts = vec![DomainEvent::OfferDeclined {
                user: *user,
                joined_at: o.joined_at,
                seats: o.seats,
                at: *at,
            }];
            facts.extend(state.serve(
                state.policy,
                state.free_places() + o.seats.get(),
                None,
                Freed::OfferDeclined,
                *at,
            ));
            Ok(facts)
        }
        Command::ExpireOffers { at } => {
            let due = state.offers.due(*at);
            let freed: usize = due.iter().map(|(_, o)| o.seats.get()).sum();
            let mut facts: Vec<DomainEvent> = due
                .into_iter()
                .map(|(user, o)| DomainEvent::OfferExpired {
                    user,
                    joined_at: o.joined_at,
                    seats: o.seats,
                    at: *at,
                })
                .collect();
            if freed > 0 {
                facts.extend(state.serve(
                    state.policy,
                    state.free_places() + freed,
                    None,
                    Freed::OfferExpired,
                    *at,
                ));
            }
            Ok(facts)
        }
    }
}

fn decide_update(
    state: &EventState,
    by: UserId,
    patch: &DetailsPatch,
    capacity: Option<Capacity>,
    policy: &PolicyPatch,
    at: DateTime<Utc>,
) -> Result<Vec<DomainEvent>, Rejection> {
    require_owner(state, by)?;
    if state.lifecycle == Lifecycle::Cancelled {
        return Err(Rejection::Cancelled);
    }
    let mut events = Vec::new();
    let details = patch.apply_to(&state.details);
    if details != state.details {
        if details.starts_at != state.details.starts_at && state.details.starts_at <= at {
            // Moved into the future, a started event would take joins again
            // while the offers and promotions it stopped at its start were
            // never made: newcomers would pass the people waiting.
            return Err(Rejection::Started);
        }
        if details.starts_at != state.details.starts_at {
            check_schedule(&details, at)?;
        } else if details.ends_at != state.details.ends_at {
            // A started event's end may still move (it runs late); only
            // the start is held to the future.
            check_ends_after_start(&details)?;
        }
        events.push(DomainEvent::DetailsChanged { details, at });
    }
    let capacity = capacity.unwrap_or(state.capacity);
    if capacity != state.capacity {
        let taken = state.taken_places();
        if capacity.get() < taken {
            return Err(Rejection::CapacityBelowActive {
                requested: capacity.get(),
                active: taken,
            });
        }
        // Nobody waits for places that can never exist; in strict order,
        // nor would anyone behind them be served.
        if let Some(largest) = state.waitlist.iter().map(|w| w.seats.get()).max()
            && capacity.get() < largest
        {
            return Err(Rejection::CapacityBelowParty {
                requested: capacity.get(),
                seats: largest,
            });
        }
        events.push(DomainEvent::CapacityChanged { capacity, at });
    }
    let next_policy = policy.apply_to(state.policy);
    if next_policy != state.policy {
        events.push(DomainEvent::WaitlistChanged {
            policy: next_policy,
            at,
        });
    }
    if capacity != state.capacity || next_policy.fill != state.policy.fill {
        let free = capacity.get() - state.taken_places();
        let because = match capacity > state.capacity {
            true => Freed::CapacityRaised,
            false => Freed::FillChanged,
        };
        events.extend(state.serve(next_policy, free, None, because, at));
    }
    Ok(events)
}

fn decide_join(
    state: &EventState,
    user: UserId,
    seats: Seats,
    at: DateTime<Utc>,
) -> Result<Vec<DomainEvent>, Rejection> {
    if user == state.owner {
        return Err(Rejection::OwnerCannotJoin);
    }
    if state.is_member(user) {
        return Ok(vec![]);
    }
    require_open(state, at)?;
    // A party larger than the whole event would wait for ever, and in
    // strict order everyone behind it with it.
    let max = state.policy.max_party.get().min(state.capacity.get());
    if seats.get() > max {
        return Err(Rejection::PartyTooLarge {
            seats: seats.get(),
            max,
        });
    }
    // A newcomer comes after everyone waiting: in strict order it takes
    // free places only if nobody waits; in first-fit order the places free
    // are those no waiting party fits.
    let fits = seats.get() <= state.free_places();
    let ahead = state.policy.fill == WaitlistFill::Strict && !state.waitlist.is_empty();
    let status = if fits && !ahead {
        JoinedAs::Active
    } else {
        JoinedAs::Waitlisted
    };
    Ok(vec![DomainEvent::Joined {
        user,
        status,
        seats,
        at,
    }])
}

/// Membership changes only while the event is on and has not started.
fn require_open(state: &EventState, at: DateTime<Utc>) -> Result<(), Rejection> {
    if state.lifecycle == Lifecycle::Cancelled {
        return Err(Rejection::Cancelled);
    }
    if at >= state.details.starts_at {
        return Err(Rejection::Started);
    }
    Ok(())
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
                policy,
                ..
            } => Some(EventState {
                id: *id,
                owner: *owner,
                details: details.clone(),
                capacity: *capacity,
                policy: *policy,
                lifecycle: Lifecycle::Draft,
                active: Holders::default(),
                offers: Holders::default(),
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
        DomainEvent::WaitlistChanged { policy, .. } => state.policy = *policy,
        DomainEvent::Cancelled { .. } => {
            state.lifecycle = Lifecycle::Cancelled;
            state.active.clear();
            state.offers.clear();
            state.waitlist.clear();
        }
        DomainEvent::Joined {
            user,
            status,
            seats,
            at,
        } => match status {
            JoinedAs::Active => state.active.insert(
                *user,
                Attendee {
                    joined_at: *at,
                    seats: *seats,
                },
            ),
            JoinedAs::Waitlisted => state.waitlist.push_back(Waiter {
                user: *user,
                joined_at: *at,
                seats: *seats,
            }),
        },
        DomainEvent::Left { user, .. } => {
            if state.active.remove(user).is_none() && state.offers.remove(user).is_none() {
                state.waitlist.remove(*user);
            }
        }
        DomainEvent::Promoted {
            user,
            joined_at,
            seats,
            ..
        } => {
            state.waitlist.remove(*user);
            state.active.insert(
                *user,
                Attendee {
                    joined_at: *joined_at,
                    seats: *seats,
                },
            );
        }
        DomainEvent::Offered {
            user,
            joined_at,
            seats,
            expires_at,
            ..
        } => {
            state.waitlist.remove(*user);
            state.offers.insert(
                *user,
                Offer {
                    joined_at: *joined_at,
                    seats: *seats,
                    expires_at: *expires_at,
                },
            );
        }
        DomainEvent::OfferAccepted {
            user,
            joined_at,
            seats,
            ..
        } => {
            state.offers.remove(user);
            state.active.insert(
                *user,
                Attendee {
                    joined_at: *joined_at,
                    seats: *seats,
                },
            );
        }
        DomainEvent::OfferDeclined { user, .. } | DomainEvent::OfferExpired { user, .. } => {
            state.offers.remove(user);
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
    check_ends_after_start(details)
}

fn check_ends_after_start(details: &EventDetails) -> Result<(), Rejection> {
    if let Some(ends_at) = details.ends_at
        && ends_at <= details.starts_at
    {
        return Err(Rejection::InvalidSchedule {
            problem: ScheduleProblem::EndsBeforeItStarts,
        });
    }
    Ok(())
}
