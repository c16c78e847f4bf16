//! The pure domain: typed values, the event decider, and the stored form of
//! its facts. No actors, no I/O, no clocks.

/// Names a fieldless enum's variants for the wire and the database, and
/// reads them back (`TryFrom<String>`, for values stored as text).
macro_rules! named {
    ($ty:ty, $what:literal, $($variant:path => $name:literal),+ $(,)?) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($variant => $name),+
                }
            }
        }

        impl TryFrom<String> for $ty {
            type Error = $crate::domain::ValueError;

            fn try_from(stored: String) -> Result<Self, Self::Error> {
                match stored.as_str() {
                    $($name => Ok($variant),)+
                    other => Err($crate::domain::ValueError::new(
                        "status",
                        format!("no {} {other:?}", $what),
                    )),
                }
            }
        }
    };
}

mod event;
mod geo;
mod places;
mod stored;
mod values;
mod waitlist;

pub use event::{
    Command, DetailsPatch, DomainEvent, EventDetails, EventState, Freed, JoinedAs, Lifecycle,
    MAX_LEAD, MemberStatus, Membership, Party, Rejection, ScheduleProblem, WaitlistMove, decide,
    evolve, waitlist_moves,
};
pub use geo::{GeoBox, GeoPoint, haversine_km};
pub use places::{Attendee, Holders, Offer};
pub use stored::{DecodeError, StoredEvent, current_schema_version};
pub use values::{
    Capacity, Description, EventId, OfferHold, Seats, Tag, Title, UserId, ValueError, VenueId,
    is_invisible_format,
};
pub use waitlist::{PolicyPatch, Waiter, Waitlist, WaitlistFill, WaitlistMode, WaitlistPolicy};
