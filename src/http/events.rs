//! Events: create, publish, change, cancel, read and list. Every change is a
//! command to the event's actor; reads come from the read model.

use std::sync::Arc;

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use turnout_actors::domain::{
    Capacity, Command, Description, DetailsPatch, EventDetails, EventId, OfferHold, PolicyPatch,
    Seats, Tag, Title, VenueId, WaitlistFill, WaitlistMode, WaitlistPolicy,
};
use turnout_actors::store::EventSummary;
use uuid::Uuid;

use super::identity::{AuthUser, MaybeUser};
use super::pagination::{self, Page};
use super::{ApiError, AppState, ErrorCode, venues};
use crate::event_cache::CachedEvent;
use crate::store::{EventFilter, micros};
use crate::views::EventView;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/events")
            .route(web::post().to(create_event))
            .route(web::get().to(list_events)),
    );
}

/// Routes under `/events/{id}` (see `super::event_routes`).
pub fn event_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("")
            .route(web::get().to(get_event))
            .route(web::patch().to(update_event)),
    )
    .route("/publish", web::post().to(publish_event))
    .route("/cancel", web::post().to(cancel_event));
}

/// Tells a field sent as `null` (`Some(None)`) from one left out (`None`).
pub fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "title": "Late jazz", "description": "A trio from Leiden.",
    "venue_id": "01a2069a-d9f0-7c41-8b2e-6f3c1d4e5a70",
    "starts_at": "2026-12-12T20:00:00Z", "ends_at": "2026-12-12T23:00:00Z",
    "capacity": 120, "tags": ["jazz", "live"],
    "waitlist_mode": "offer", "offer_hold_secs": 1800, "max_party": 4
}))]
pub struct CreateEventRequest {
    pub title: String,
    pub description: Option<String>,
    pub venue_id: Uuid,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
    /// 1 to 1,000,000 seats.
    pub capacity: i64,
    pub tags: Option<Vec<String>>,
    /// `auto` (default): a freed place makes the next party active at once.
    /// `offer`: it is held for the party, which accepts or declines it.
    pub waitlist_mode: Option<WaitlistMode>,
    /// `strict` (default: first come, first served, always) or `first_fit`
    /// (a smaller party behind may take places the first cannot use).
    pub waitlist_fill: Option<WaitlistFill>,
    /// How long an offer is held: 60 to 604,800 seconds (default 1,800).
    pub offer_hold_secs: Option<i64>,
    /// The most seats one join may ask for: 1 to 20 (default 1).
    pub max_party: Option<i64>,
}

/// The waitlist settings a request sets; those left out stay as they are.
fn policy_patch(
    mode: Option<WaitlistMode>,
    fill: Option<WaitlistFill>,
    offer_hold_secs: Option<i64>,
    max_party: Option<i64>,
) -> Result<PolicyPatch, ApiError> {
    Ok(PolicyPatch {
        mode,
        fill,
        offer_hold: offer_hold_secs.map(OfferHold::parse).transpose()?,
        max_party: max_party.map(Seats::parse).transpose()?,
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEventRequest {
    pub title: Option<String>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    pub venue_id: Option<Uuid>,
    pub starts_at: Option<DateTime<Utc>>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub ends_at: Option<Option<DateTime<Utc>>>,
    /// A raise serves waiting parties in order; a cut below the seats
    /// active and on offer is 409.
    pub capacity: Option<i64>,
    pub tags: Option<Vec<String>>,
    /// `auto` (default): a freed place makes the next party active at once.
    /// `offer`: it is held for the party, which accepts or declines it.
    pub waitlist_mode: Option<WaitlistMode>,
    /// `strict` (default: first come, first served, always) or `first_fit`
    /// (a smaller party behind may take places the first cannot use).
    pub waitlist_fill: Option<WaitlistFill>,
    /// How long an offer is held: 60 to 604,800 seconds (default 1,800).
    pub offer_hold_secs: Option<i64>,
    /// The most seats one join may ask for: 1 to 20 (default 1).
    pub max_party: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({ "data": {
    "id": "01a2069a-da0a-7681-9539-12485e50749c", "owner_id": "01a2069a-d9c4-7e12-a1b3-2f4e5d6c7b80",
    "venue_id": "01a2069a-d9f0-7c41-8b2e-6f3c1d4e5a70", "title": "Late jazz",
    "description": "A trio from Leiden.", "starts_at": "2026-12-12T20:00:00Z",
    "ends_at": "2026-12-12T23:00:00Z", "tags": ["jazz", "live"], "status": "published",
    "capacity": 120, "active_count": 116, "offered_seats": 2, "waitlist_count": 5,
    "places_left": 2, "waitlist_mode": "offer", "waitlist_fill": "strict",
    "offer_hold_secs": 1800, "max_party": 4
}}))]
pub struct EventEnvelope {
    pub data: EventView,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EventPage {
    pub data: Vec<EventView>,
    pub next_cursor: Option<String>,
}

/// Runs an owner's command on an existing event and answers with the event.
async fn change(state: &AppState, id: Uuid, command: Command) -> Result<HttpResponse, ApiError> {
    let outcome = state.execute(EventId::from(id), command).await?;
    Ok(summary_response(
        actix_web::http::StatusCode::OK,
        &outcome.summary,
    ))
}

fn summary_response(status: actix_web::http::StatusCode, summary: &EventSummary) -> HttpResponse {
    HttpResponse::build(status).json(EventEnvelope {
        data: summary.into(),
    })
}

/// Create an event (as a draft); the caller owns it.
#[utoipa::path(post, path = "/v1/events", tag = "events", security(("bearer" = [])), request_body = CreateEventRequest,
    responses((status = 201, body = EventEnvelope),
        (status = 403, description = "`not_venue_organizer`: only the venue's owner, its organisers or an admin may put events on it", body = super::ErrorBody),
        (status = 409, description = "`quota_reached`: the caller owns as many upcoming events as an account may", body = super::ErrorBody),
        (status = 422, body = super::ErrorBody)))]
pub async fn create_event(
    state: web::Data<AppState>,
    user: AuthUser,
    body: web::Json<CreateEventRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let details = EventDetails {
        title: Title::parse(&body.title)?,
        description: body
            .description
            .as_deref()
            .map(Description::parse)
            .transpose()?,
        venue_id: VenueId::from(body.venue_id),
        starts_at: body.starts_at,
        ends_at: body.ends_at,
        tags: Tag::parse_list(&body.tags.unwrap_or_default())?,
    };
    let capacity = Capacity::parse(body.capacity)?;
    let policy = policy_patch(
        body.waitlist_mode,
        body.waitlist_fill,
        body.offer_hold_secs,
        body.max_party,
    )?
    .apply_to(WaitlistPolicy::default());
    venues::may_place_events(&state, body.venue_id, &user).await?;
    let quota = state.quotas.settings.upcoming_events_per_owner;
    // Held until the event is committed, so the next create counts it.
    let _turn = state
        .quotas
        .turn(quota, user.id.as_uuid(), state.write_timeout)
        .await?;
    if quota > 0
        && state
            .store
            .upcoming_events_owned(user.id, micros(crate::store::now()))
            .await?
            >= quota
    {
        return Err(ApiError::conflict(
            ErrorCode::QuotaReached,
            format!("an account may own {quota} upcoming events (not started, not cancelled)"),
        ));
    }
    let id = EventId::new();
    let command = Command::Create {
        id,
        owner: user.id,
        details,
        capacity,
        policy,
        at: crate::store::now(),
    };
    let outcome = state.execute(id, command).await?;
    Ok(summary_response(
        actix_web::http::StatusCode::CREATED,
        &outcome.summary,
    ))
}

/// Change details, capacity or waitlist settings (owner only).
#[utoipa::path(patch, path = "/v1/events/{id}", tag = "events", security(("bearer" = [])), params(("id" = Uuid, Path)),
    request_body = UpdateEventRequest,
    responses((status = 200, body = EventEnvelope),
        (status = 403, description = "not the event's owner, or (`not_venue_organizer`) a move to a venue the caller may not put events on", body = super::ErrorBody),
        (status = 404, description = "no such event (a draft is found only by its owner)", body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
pub async fn update_event(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<Uuid>,
    body: web::Json<UpdateEventRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let patch = DetailsPatch {
        title: body.title.as_deref().map(Title::parse).transpose()?,
        description: body
            .description
            .map(|d| d.as_deref().map(Description::parse).transpose())
            .transpose()?,
        venue_id: match body.venue_id {
            Some(venue) => Some(venues::may_place_events(&state, venue, &user).await?),
            None => None,
        },
        starts_at: body.starts_at,
        ends_at: body.ends_at,
        tags: body.tags.as_deref().map(Tag::parse_list).transpose()?,
    };
    let capacity = body.capacity.map(Capacity::parse).transpose()?;
    let command = Command::Update {
        by: user.id,
        patch,
        capacity,
        policy: policy_patch(
            body.waitlist_mode,
            body.waitlist_fill,
            body.offer_hold_secs,
            body.max_party,
        )?,
        at: crate::store::now(),
    };
    change(&state, id.into_inner(), command).await
}

/// Publish a draft (owner only): it becomes listed and joinable.
#[utoipa::path(post, path = "/v1/events/{id}/publish", tag = "events", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = EventEnvelope), (status = 403, body = super::ErrorBody),
        (status = 404, description = "no such event (a draft is found only by its owner)", body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
pub async fn publish_event(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let command = Command::Publish {
        by: user.id,
        at: crate::store::now(),
    };
    change(&state, id.into_inner(), command).await
}

/// Cancel (owner only): every membership ends.
#[utoipa::path(post, path = "/v1/events/{id}/cancel", tag = "events", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = EventEnvelope), (status = 403, body = super::ErrorBody),
        (status = 404, description = "no such event (a draft is found only by its owner)", body = super::ErrorBody)))]
pub async fn cancel_event(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let command = Command::Cancel {
        by: user.id,
        at: crate::store::now(),
    };
    change(&state, id.into_inner(), command).await
}

/// An event with live counts. Drafts are visible to their owner only.
#[utoipa::path(get, path = "/v1/events/{id}", tag = "events", params(("id" = Uuid, Path)),
    responses((status = 200, body = EventEnvelope), (status = 404, body = super::ErrorBody)))]
pub async fn get_event(
    state: web::Data<AppState>,
    user: MaybeUser,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = EventId::from(id.into_inner());
    let event = match state.events.get(id) {
        Some(held) => {
            metrics::counter!("turnout_event_reads_total", "read" => "details", "source" => "memory")
                .increment(1);
            held
        }
        None => {
            metrics::counter!("turnout_event_reads_total", "read" => "details", "source" => "database")
                .increment(1);
            let began = state.events.generation();
            let read = Arc::new(CachedEvent::from(
                state
                    .store
                    .event(id)
                    .await?
                    .ok_or(ApiError::NotFound("event"))?,
            ));
            state.events.loaded(began, read.clone());
            read
        }
    };
    if !event.visible_to(user.0.as_ref().map(|u| u.id)) {
        return Err(ApiError::NotFound("event"));
    }
    Ok(HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(event.body()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventListQuery {
    pub venue_id: Option<Uuid>,
    pub tag: Option<String>,
    /// Start of the window (inclusive); defaults to now.
    pub from: Option<DateTime<Utc>>,
    /// End of the window (exclusive).
    pub to: Option<DateTime<Utc>>,
    pub cursor: Option<String>,
    /// 1 to 100; 20 when absent.
    pub limit: Option<i64>,
}

/// Published events, soonest first.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventListQuery),
    responses((status = 200, body = EventPage), (status = 400, body = super::ErrorBody),
        (status = 422, description = "`validation_failed`: a `tag` that is no tag", body = super::ErrorBody)))]
pub async fn list_events(
    state: web::Data<AppState>,
    query: web::Query<EventListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let limit = pagination::limit(query.limit)?;
    let tag = query.tag.as_deref().map(Tag::parse).transpose()?;
    let filter = EventFilter {
        venue_id: query.venue_id.map(VenueId::from),
        tag: tag.map(String::from),
        from: Some(query.from.unwrap_or_else(Utc::now)),
        to: query.to,
        after: pagination::decode(query.cursor.as_deref())?,
        limit: limit + 1,
        within: None,
    };
    if let Some(held) = state.events.page(&filter, filter.limit as usize) {
        metrics::counter!("turnout_event_reads_total", "read" => "listing", "source" => "memory")
            .increment(1);
        let page = pagination::page(held, limit, |e| e.listing_key(), |e| e.view_json());
        return Ok(HttpResponse::Ok()
            .content_type(ContentType::json())
            .body(pagination::rendered(page)));
    }
    metrics::counter!("turnout_event_reads_total", "read" => "listing", "source" => "database")
        .increment(1);
    let rows = state.store.list_events(&filter).await?;
    let page: Page<EventView> =
        pagination::page(rows, limit, |e| (e.starts_at, e.id), EventView::from);
    Ok(HttpResponse::Ok().json(page))
}
