//! An event's history for its owner: every fact from the event log, oldest
//! first — what happened, to whom, how many seats, when and why — as JSON
//! pages or, with `Accept: text/csv`, as CSV.

use actix_web::http::header::{ACCEPT, ContentType, LINK};
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Serialize;
use turnout_actors::domain::{DomainEvent, EventId, Freed, JoinedAs, Lifecycle};
use uuid::Uuid;

use super::identity::AuthUser;
use super::pagination::{self, Page, PageQuery};
use super::{ApiError, AppState, ErrorCode};

/// Routes under `/events/{id}` (see `super::event_routes`).
pub fn event_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/history", web::get().to(history));
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Happening {
    Created,
    Published,
    DetailsChanged,
    CapacityChanged,
    WaitlistChanged,
    Cancelled,
    /// Joined with places free: active.
    Joined,
    /// Joined without: on the waitlist.
    Waitlisted,
    Promoted,
    Offered,
    Accepted,
    Declined,
    Expired,
    Left,
}

/// One fact of an event's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "version": 7, "at": "2026-12-02T10:15:00Z", "what": "offered",
    "user_id": "01a2069a-d9c4-7e12-a1b3-2f4e5d6c7b80", "seats": 2,
    "why": "served from the waitlist when an offer was declined",
    "offer_expires_at": "2026-12-02T10:45:00Z", "capacity": null
}))]
pub struct HistoryEntry {
    /// The fact's place in the event's log: 1 is its creation.
    pub version: i64,
    pub at: DateTime<Utc>,
    pub what: Happening,
    /// Whom it happened to, for a membership fact.
    pub user_id: Option<Uuid>,
    /// Their party's seats.
    pub seats: Option<usize>,
    /// Why, in words.
    pub why: String,
    /// For an offer: when its hold runs out.
    pub offer_expires_at: Option<DateTime<Utc>>,
    /// For a creation or a capacity change: the capacity after it.
    pub capacity: Option<i64>,
}

impl HistoryEntry {
    pub fn new(version: i64, fact: &DomainEvent) -> Self {
        let party = fact.party();
        let entry = |what: Happening, why: String| Self {
            version,
            at: fact.at(),
            what,
            user_id: party.map(|p| p.user.as_uuid()),
            seats: party.map(|p| p.seats.get()),
            why,
            offer_expires_at: None,
            capacity: None,
        };
        let served = |because: &Option<Freed>| match because {
            Some(because) => format!("served from the waitlist when {}", because.as_str()),
            None => "served from the waitlist when places came free".to_owned(),
        };
        match fact {
            DomainEvent::Created { capacity, .. } => Self {
                capacity: Some(i64::from(*capacity)),
                ..entry(Happening::Created, "the owner created it as a draft".into())
            },
            DomainEvent::Published { .. } => {
                entry(Happening::Published, "the owner published it".into())
            }
            DomainEvent::DetailsChanged { .. } => entry(
                Happening::DetailsChanged,
                "the owner changed its details".into(),
            ),
            DomainEvent::CapacityChanged { capacity, .. } => Self {
                capacity: Some(i64::from(*capacity)),
                ..entry(
                    Happening::CapacityChanged,
                    format!("the owner set the capacity to {}", capacity.get()),
                )
            },
            DomainEvent::WaitlistChanged { policy, .. } => entry(
                Happening::WaitlistChanged,
                format!(
                    "the owner set the waitlist to mode {}, order {}, offers held {} s, \
                     parties of up to {}",
                    policy.mode.as_str(),
                    policy.fill.as_str(),
                    policy.offer_hold.get(),
                    policy.max_party.get()
                ),
            ),
            DomainEvent::Cancelled { .. } => entry(
                Happening::Cancelled,
                "the owner cancelled it; every membership ended".into(),
            ),
            DomainEvent::Joined {
                status: JoinedAs::Active,
                ..
            } => entry(Happening::Joined, "places were free".into()),
            DomainEvent::Joined {
                status: JoinedAs::Waitlisted,
                ..
            } => entry(
                Happening::Waitlisted,
                "not enough places free, or parties waiting ahead".into(),
            ),
            DomainEvent::Promoted { because, .. } => entry(Happening::Promoted, served(because)),
            DomainEvent::Offered {
                because,
                expires_at,
                ..
            } => Self {
                offer_expires_at: Some(*expires_at),
                ..entry(Happening::Offered, served(because))
            },
            DomainEvent::OfferAccepted { .. } => {
                entry(Happening::Accepted, "the party accepted the offer".into())
            }
            DomainEvent::OfferDeclined { .. } => {
                entry(Happening::Declined, "the party declined the offer".into())
            }
            DomainEvent::OfferExpired { .. } => entry(
                Happening::Expired,
                "the offer's hold ran out before the party accepted".into(),
            ),
            DomainEvent::Left { .. } => entry(Happening::Left, "the party left".into()),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct HistoryPage {
    pub data: Vec<HistoryEntry>,
    pub next_cursor: Option<String>,
}

/// The event's history, oldest first (owner only). `Accept: text/csv` gives
/// the same rows as CSV with a header line; the next page is in the `Link`
/// header (and, for JSON, in `next_cursor`).
#[utoipa::path(get, path = "/v1/events/{id}/history", tag = "events", security(("bearer" = [])),
    params(("id" = Uuid, Path), PageQuery),
    responses((status = 200, body = HistoryPage, content_type = "application/json",
            headers(("Link" = String, description = "`<…?cursor=…>; rel=\"next\"` while more rows follow"))),
        (status = 200, description = "the same rows as CSV, with `Accept: text/csv`", body = String, content_type = "text/csv",
            headers(("Link" = String, description = "`<…?cursor=…>; rel=\"next\"` while more rows follow"))),
        (status = 403, description = "not the event's owner", body = super::ErrorBody),
        (status = 404, description = "no such event (a draft is found only by its owner)", body = super::ErrorBody)))]
pub async fn history(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<Uuid>,
    query: web::Query<PageQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let event = EventId::from(id.into_inner());
    let limit = pagination::limit(query.limit)?;
    let after = pagination::decode::<i64>(query.cursor.as_deref())?.unwrap_or(0);
    let record = state
        .store
        .event(event)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    if record.owner_id != user.id.as_uuid() {
        return Err(match record.status {
            Lifecycle::Draft => ApiError::NotFound("event"),
            _ => ApiError::forbidden(
                ErrorCode::NotOwner,
                "only the event's owner may read its history",
            ),
        });
    }
    let rows = state.store.history(event, after, limit + 1).await?;
    let mut entries = Vec::with_capacity(rows.len());
    for (version, stored) in rows {
        let fact = stored.decode().map_err(|error| {
            tracing::error!(%event, version, %error, "a stored fact does not decode");
            ApiError::Internal
        })?;
        entries.push(HistoryEntry::new(version, &fact));
    }
    let page: Page<HistoryEntry> = pagination::page(entries, limit, |e| e.version, |e| e);
    let mut response = HttpResponse::Ok();
    if let Some(cursor) = &page.next_cursor {
        response.insert_header((
            LINK,
            format!("</v1/events/{event}/history?cursor={cursor}&limit={limit}>; rel=\"next\""),
        ));
    }
    if wants_csv(&req) {
        return Ok(response
            .content_type("text/csv; charset=utf-8")
            .body(csv(&page.data)?));
    }
    Ok(response
        .content_type(ContentType::json())
        .json(HistoryPage {
            data: page.data,
            next_cursor: page.next_cursor,
        }))
}

fn wants_csv(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with("text/csv")))
}

/// The CSV columns: the entry's fields, in order.
const COLUMNS: [&str; 8] = [
    "version",
    "at",
    "what",
    "user_id",
    "seats",
    "why",
    "offer_expires_at",
    "capacity",
];

fn csv(entries: &[HistoryEntry]) -> Result<Vec<u8>, ApiError> {
    // The header is written even for an empty page.
    let mut out = ::csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    out.write_record(COLUMNS).map_err(|_| ApiError::Internal)?;
    for entry in entries {
        out.serialize(entry).map_err(|error| {
            tracing::error!(%error, "a history row does not write as CSV");
            ApiError::Internal
        })?;
    }
    out.into_inner().map_err(|_| ApiError::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use turnout_actors::domain::{Seats, UserId};

    #[test]
    fn an_offer_says_whom_how_many_until_when_and_why() {
        let at = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
        let user = UserId::new();
        let fact = DomainEvent::Offered {
            user,
            joined_at: at,
            seats: Seats::parse(2).unwrap(),
            expires_at: at + chrono::Duration::minutes(30),
            because: Some(Freed::OfferDeclined),
            at,
        };
        let entry = HistoryEntry::new(7, &fact);
        assert_eq!(entry.what, Happening::Offered);
        assert_eq!(entry.user_id, Some(user.as_uuid()));
        assert_eq!(entry.seats, Some(2));
        assert_eq!(
            entry.why,
            "served from the waitlist when an offer was declined"
        );
        assert_eq!(
            entry.offer_expires_at,
            Some(at + chrono::Duration::minutes(30))
        );

        let empty = String::from_utf8(csv(&[]).unwrap()).unwrap();
        assert_eq!(
            empty.trim_end(),
            COLUMNS.join(","),
            "an empty page has its header"
        );
        let text = String::from_utf8(csv(&[entry]).unwrap()).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(COLUMNS.join(",").as_str()));
        assert_eq!(
            lines.next(),
            Some(
                format!(
                    "7,2030-03-17T17:46:40Z,offered,{user},2,served from the waitlist when an offer was declined,2030-03-17T18:16:40Z,"
                )
                .as_str()
            )
        );
    }
}
