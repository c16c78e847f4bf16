//! The pure domain: typed values, the event decider, and the stored form of
//! its facts. No actors, no I/O, no clocks.

mod event;
mod geo;
mod stored;
mod values;
mod waitlist;

pub use event::{
    Command, DetailsPatch, DomainEvent, EventDetails, EventState, JoinedAs, Lifecycle, MAX_LEAD,
    MemberStatus, Membership, Rejection, ScheduleProblem, decide, evolve,
};
pub use geo::{GeoPoint, haversine_km};
pub use stored::{DecodeError, StoredEvent, current_schema_version};
pub use values::{
    Capacity, Description, EventId, Tag, Title, UserId, ValueError, VenueId, is_invisible_format,
};
pub use waitlist::{Waiter, Waitlist};
