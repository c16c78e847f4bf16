//! Joining and leaving events, the owner's attendee list, and the caller's
//! own joins.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use turnout_actors::domain::{Command, EventId, Lifecycle, MemberStatus, Membership, Seats};
use turnout_actors::{Answer, IdempotencyKey, Reply};
use uuid::Uuid;

use super::ErrorCode;
use super::identity::AuthUser;
use super::pagination::{self, PageQuery};
use super::{ApiError, AppState};
use crate::store::{MembershipRecord, from_micros};
use crate::views::EventView;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/me/joins", web::get().to(my_joins));
}

/// Routes under `/events/{id}` (see `super::event_routes`).
pub fn event_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/join")
            .route(web::post().to(join_event))
            .route(web::delete().to(leave_event)),
    )
    .route("/offer/accept", web::post().to(accept_offer))
    .route("/offer/decline", web::post().to(decline_offer))
    .route("/attendees", web::get().to(attendees));
}

/// Where the caller stands in an event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JoinView {
    pub event_id: Uuid,
    pub status: MemberStatus,
    /// Seats of the caller's party; null once it is out.
    pub seats: Option<usize>,
    /// 1-based waitlist position, counting parties; null unless waitlisted.
    pub position: Option<usize>,
    /// When an offer's hold runs out; null unless offered.
    pub offer_expires_at: Option<DateTime<Utc>>,
    pub joined_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({ "data": {
    "event_id": "01a2069a-da0a-7681-9539-12485e50749c", "status": "waitlisted",
    "seats": 2, "position": 3, "offer_expires_at": null, "joined_at": "2026-12-02T10:15:00Z"
}}))]
pub struct JoinEnvelope {
    pub data: JoinView,
}

impl JoinView {
    /// `out` is the status shown when the caller holds no membership.
    fn new(event: EventId, membership: Option<Membership>, out: MemberStatus) -> Self {
        let view = Self {
            event_id: event.as_uuid(),
            status: out,
            seats: membership.map(|m| m.seats().get()),
            position: None,
            offer_expires_at: None,
            joined_at: None,
        };
        match membership {
            Some(Membership::Active { joined_at, .. }) => Self {
                status: MemberStatus::Active,
                joined_at: Some(joined_at),
                ..view
            },
            Some(Membership::Offered {
                joined_at,
                expires_at,
                ..
            }) => Self {
                status: MemberStatus::Offered,
                offer_expires_at: Some(expires_at),
                joined_at: Some(joined_at),
                ..view
            },
            Some(Membership::Waitlisted {
                position,
                joined_at,
                ..
            }) => Self {
                status: MemberStatus::Waitlisted,
                position: Some(position),
                joined_at: Some(joined_at),
                ..view
            },
            None => view,
        }
    }
}

/// The optional body of a join.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "seats": 2 }))]
pub struct JoinRequest {
    /// Places for the caller's party, together: 1 (the default) to the
    /// event's `max_party`.
    pub seats: Option<i64>,
}

/// A join's answer, the first time and on a replay: 201 when it changed
/// something, 200 when the caller was a member already.
fn join_response(event: EventId, answer: Answer, replayed: bool) -> HttpResponse {
    let mut response = if answer.changed {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    if replayed {
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    response.json(JoinEnvelope {
        data: JoinView::new(event, answer.membership, MemberStatus::Left),
    })
}

fn idempotency_key(req: &HttpRequest) -> Result<String, ApiError> {
    let key = req.headers().get("Idempotency-Key").ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::MissingIdempotencyKey,
            "the Idempotency-Key header is required",
        )
    })?;
    key.to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_owned)
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidIdempotencyKey,
                "the Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
        })
}

/// Join an event, alone or as a party (`{"seats": n}`): active if the
/// places are free and nobody waits ahead, else waitlisted.
#[utoipa::path(post, path = "/v1/events/{id}/join", tag = "joins", security(("bearer" = [])),
    params(("id" = Uuid, Path), ("Idempotency-Key" = String, Header, description = "required; a replay returns the first answer")),
    request_body(content = Option<JoinRequest>, description = "optional; without it, one seat"),
    responses((status = 201, description = "joined (active or waitlisted)", body = JoinEnvelope),
        (status = 200, description = "already a member: the current status", body = JoinEnvelope),
        (status = 400, description = "`missing_idempotency_key`: the header is required; `malformed_json`: a body that does not parse as JSON", body = super::ErrorBody),
        (status = 403, description = "the owner cannot join", body = super::ErrorBody),
        (status = 404, description = "no such event (a draft is found only by its owner)", body = super::ErrorBody),
        (status = 409, description = "`event_cancelled`, `event_started`; `idempotency_key_in_use`: the key's request on another event is still in progress (retry)", body = super::ErrorBody),
        (status = 422, description = "`party_too_large`: more seats than the event takes in one party; `idempotency_key_reused`: the key was used for another request; `validation_failed`: a field of the body is wrong", body = super::ErrorBody),
        (status = 503, description = "busy; retry after Retry-After", body = super::ErrorBody)))]
pub async fn join_event(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<Uuid>,
    req: HttpRequest,
    body: super::Body,
) -> Result<HttpResponse, ApiError> {
    let event = EventId::from(id.into_inner());
    let key = idempotency_key(&req)?;
    let seats = match super::optional_json::<JoinRequest>(&req, &body.0)?.and_then(|b| b.seats) {
        Some(seats) => Seats::parse(seats)?,
        None => Seats::default(),
    };
    // The same key with another party size is another request.
    let fingerprint = match seats.get() {
        1 => format!("POST /v1/events/{event}/join"),
        n => format!("POST /v1/events/{event}/join seats={n}"),
    };
    let command = Command::Join {
        user: user.id,
        seats,
        at: crate::store::now(),
    };
    let idempotency = IdempotencyKey {
        user: user.id,
        key,
        fingerprint,
    };
    // No lookup here: the actor answers duplicates it has seen, and the
    // journal checks every key of a batch against the stored ones at once.
    let (answer, replayed) = match state
        .execute_keyed(event, command, Some(idempotency))
        .await?
    {
        Reply::Done(outcome) => (outcome.answer(), false),
        Reply::Replayed(answer) => (answer, true),
    };
    let outcome = match (replayed, answer.changed, &answer.membership) {
        (true, ..) => "replayed",
        (_, false, _) => "already_member",
        (_, true, Some(Membership::Active { .. })) => "active",
        _ => "waitlisted",
    };
    metrics::counter!("turnout_joins_total", "outcome" => outcome).increment(1);
    Ok(join_response(event, answer, replayed))
}

/// Leave an event (or give up an offer, or a place on the waitlist); the
/// places freed go to the waitlist in the same commit.
#[utoipa::path(delete, path = "/v1/events/{id}/join", tag = "joins", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = JoinEnvelope), (status = 404, description = "not a member", body = super::ErrorBody),
        (status = 409, description = "`event_started`, `event_cancelled`: the membership stands as it is", body = super::ErrorBody)))]
pub async fn leave_event(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let event = EventId::from(id.into_inner());
    let outcome = state
        .execute(
            event,
            Command::Leave {
                user: user.id,
                at: crate::store::now(),
            },
        )
        .await?;
    metrics::counter!("turnout_leaves_total").increment(1);
    Ok(HttpResponse::Ok().json(JoinEnvelope {
        data: JoinView::new(event, outcome.membership, MemberStatus::Left),
    }))
}

/// Accept the places offered to you: your party becomes active.
#[utoipa::path(post, path = "/v1/events/{id}/offer/accept", tag = "joins", security(("bearer" = [])),
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header, description = "optional; a replay returns the first answer")),
    responses((status = 200, description = "active (also when accepted before)", body = JoinEnvelope),
        (status = 404, description = "no such event", body = super::ErrorBody),
        (status = 409, description = "`no_offer`: you hold no offer (never made, answered, or run out); `event_started`, `event_cancelled`; `idempotency_key_in_use`: the key's request on another event is still in progress (retry)", body = super::ErrorBody),
        (status = 422, description = "Idempotency-Key reused for another request", body = super::ErrorBody)))]
pub async fn accept_offer(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<Uuid>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let event = EventId::from(id.into_inner());
    let command = Command::AcceptOffer {
        user: user.id,
        at: crate::store::now(),
    };
    answer_offer(&state, event, command, "accept", &req, MemberStatus::Active).await
}

/// Decline the places offered to you: they pass to the next party at once,
/// and your party is out.
#[utoipa::path(post, path = "/v1/events/{id}/offer/decline", tag = "joins", security(("bearer" = [])),
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header, description = "optional; a replay returns the first answer")),
    responses((status = 200, description = "declined", body = JoinEnvelope),
        (status = 404, description = "no such event", body = super::ErrorBody),
        (status = 409, description = "`no_offer`: you hold no offer; `event_started`, `event_cancelled`; `idempotency_key_in_use`: the key's request on another event is still in progress (retry)", body = super::ErrorBody),
        (status = 422, description = "Idempotency-Key reused for another request", body = super::ErrorBody)))]
pub async fn decline_offer(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<Uuid>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let event = EventId::from(id.into_inner());
    let command = Command::DeclineOffer {
        user: user.id,
        at: crate::store::now(),
    };
    answer_offer(
        &state,
        event,
        command,
        "decline",
        &req,
        MemberStatus::Declined,
    )
    .await
}

/// Accepts or declines, under the caller's idempotency key if they sent one.
async fn answer_offer(
    state: &AppState,
    event: EventId,
    command: Command,
    answer: &'static str,
    req: &HttpRequest,
    out: MemberStatus,
) -> Result<HttpResponse, ApiError> {
    let idempotency = match req.headers().contains_key("Idempotency-Key") {
        true => Some(IdempotencyKey {
            user: command.actor().expect("an offer is answered by a user"),
            key: idempotency_key(req)?,
            fingerprint: format!("POST /v1/events/{event}/offer/{answer}"),
        }),
        false => None,
    };
    let (given, replayed) = match state.execute_keyed(event, command, idempotency).await? {
        Reply::Done(outcome) => (outcome.answer(), false),
        Reply::Replayed(given) => (given, true),
    };
    let mut response = HttpResponse::Ok();
    if replayed {
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(response.json(JoinEnvelope {
        data: JoinView::new(event, given.membership, out),
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AttendeeView {
    pub user_id: Uuid,
    pub status: MemberStatus,
    pub seats: i64,
    pub position: Option<i64>,
    pub offer_expires_at: Option<DateTime<Utc>>,
    pub joined_at: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AttendeePage {
    pub data: Vec<AttendeeView>,
    pub next_cursor: Option<String>,
}

/// The attendee list (owner only): active parties, then those holding an
/// offer, then the waitlist in order.
#[utoipa::path(get, path = "/v1/events/{id}/attendees", tag = "joins", security(("bearer" = [])),
    params(("id" = Uuid, Path), PageQuery),
    responses((status = 200, body = AttendeePage), (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody)))]
pub async fn attendees(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<Uuid>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let event = EventId::from(id.into_inner());
    let limit = pagination::limit(query.limit)?;
    let after = pagination::decode::<(i64, i64)>(query.cursor.as_deref())?;
    let record = state
        .store
        .event(event)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    let owner = record.owner_id == user.id.as_uuid();
    if !owner && record.status == Lifecycle::Draft {
        return Err(ApiError::NotFound("event"));
    }
    if !owner {
        return Err(ApiError::forbidden(
            ErrorCode::NotOwner,
            "only the event's owner may list its attendees",
        ));
    }
    let rows = state.store.attendees(event, after, limit + 1).await?;
    let page = pagination::page(
        rows,
        limit,
        |m: &MembershipRecord| {
            let group = match m.status {
                MemberStatus::Active => 0,
                MemberStatus::Offered => 1,
                _ => 2,
            };
            (group, m.order_key)
        },
        |m| AttendeeView {
            user_id: m.user_id,
            status: m.status,
            seats: m.seats,
            position: m.position,
            offer_expires_at: m.offer_expires_at.map(from_micros),
            joined_at: from_micros(m.joined_at),
        },
    );
    Ok(HttpResponse::Ok().json(page))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MyJoinView {
    pub event_id: Uuid,
    /// `active`, `offered`, `waitlisted`, `expired` (an offer not taken in
    /// time) or `cancelled` (the event was cancelled).
    pub status: MemberStatus,
    pub seats: i64,
    pub position: Option<i64>,
    pub offer_expires_at: Option<DateTime<Utc>>,
    pub joined_at: DateTime<Utc>,
    pub event: EventView,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MyJoinPage {
    pub data: Vec<MyJoinView>,
    pub next_cursor: Option<String>,
}

/// The caller's joins, newest first, each with its event card.
#[utoipa::path(get, path = "/v1/me/joins", tag = "joins", security(("bearer" = [])), params(PageQuery),
    responses((status = 200, body = MyJoinPage)))]
pub async fn my_joins(
    state: web::Data<AppState>,
    user: AuthUser,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let before = pagination::decode::<(i64, Uuid)>(query.cursor.as_deref())?;
    let rows = state.store.joins_of(user.id, before, limit + 1).await?;
    let page = pagination::page(
        rows,
        limit,
        |(m, _)| (m.joined_at, m.event_id),
        |(m, e)| MyJoinView {
            event_id: m.event_id,
            status: m.status,
            seats: m.seats,
            position: m.position,
            offer_expires_at: m.offer_expires_at.map(from_micros),
            joined_at: from_micros(m.joined_at),
            event: e.into(),
        },
    );
    Ok(HttpResponse::Ok().json(page))
}
