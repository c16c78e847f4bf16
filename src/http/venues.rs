//! Venues: where events happen, and who may put events on them.
//!
//! A venue belongs to the user who registered it. Its owner may name
//! organisers; the owner, the organisers and admins may create events on the
//! venue or move events to it. Nobody else may, so nobody's event appears on
//! someone else's kiosk.

use actix_web::{HttpResponse, web};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use turnout_actors::domain::{ValueError, VenueId, is_invisible_format};
use uuid::Uuid;

use super::ErrorCode;
use super::accounts::GeoPoint;
use super::identity::AuthUser;
use super::{ApiError, AppState};
use crate::store::{VenueRecord, from_micros, micros};
use turnout_actors::domain::UserId;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/venues", web::post().to(create_venue)).service(
        web::scope("/venues/{id}")
            .service(
                super::resource("")
                    .route(web::get().to(get_venue))
                    .route(web::patch().to(update_venue)),
            )
            .service(
                super::resource("/organizers")
                    .route(web::get().to(list_organizers))
                    .route(web::post().to(add_organizer)),
            )
            .route("/organizers/{user_id}", web::delete().to(remove_organizer)),
    );
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVenueRequest {
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    pub address: Option<String>,
    /// An IANA time zone name, e.g. `Europe/Amsterdam`: the kiosk shows
    /// times and its clock in it (else in the screen's own).
    pub time_zone: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateVenueRequest {
    /// An IANA time zone name; `null` clears it; left out, it stays.
    #[serde(default, deserialize_with = "super::events::present")]
    #[schema(value_type = Option<String>)]
    pub time_zone: Option<Option<String>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct VenueView {
    pub id: Uuid,
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    pub address: Option<String>,
    pub time_zone: Option<String>,
    pub created_at: chrono::DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct VenueEnvelope {
    pub data: VenueView,
}

impl From<VenueRecord> for VenueView {
    fn from(v: VenueRecord) -> Self {
        Self {
            id: v.id,
            name: v.name,
            lat: v.lat,
            lon: v.lon,
            address: v.address,
            time_zone: v.time_zone,
            created_at: from_micros(v.created_at),
        }
    }
}

/// An IANA time zone name the tz database knows, as it spells it.
fn time_zone(raw: &str) -> Result<String, ValueError> {
    raw.trim()
        .parse::<chrono_tz::Tz>()
        .map(|zone| zone.name().to_owned())
        .map_err(|_| {
            ValueError::new(
                "time_zone",
                "must be an IANA time zone name, e.g. Europe/Amsterdam",
            )
        })
}

fn bounded(field: &'static str, raw: &str, max: usize) -> Result<String, ValueError> {
    let text = raw.trim();
    if text.is_empty()
        || text.chars().count() > max
        || text
            .chars()
            .any(|c| c.is_control() || is_invisible_format(c))
    {
        return Err(ValueError::new(
            field,
            format!("must be 1 to {max} visible characters"),
        ));
    }
    Ok(text.to_owned())
}

/// Register a venue.
#[utoipa::path(post, path = "/v1/venues", tag = "venues", security(("bearer" = [])), request_body = CreateVenueRequest,
    responses((status = 201, body = VenueEnvelope),
        (status = 409, description = "`quota_reached`: the caller owns as many venues as an account may", body = super::ErrorBody),
        (status = 422, body = super::ErrorBody)))]
pub async fn create_venue(
    state: web::Data<AppState>,
    user: AuthUser,
    body: web::Json<CreateVenueRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let (lat, lon) = GeoPoint {
        lat: body.lat,
        lon: body.lon,
    }
    .check("lat/lon")?;
    // The whole body is checked before the quota's turn and count: a bad
    // one is told what is wrong with it, at no cost to the database.
    let venue = VenueRecord {
        id: VenueId::new().as_uuid(),
        owner_id: user.id.as_uuid(),
        name: bounded("name", &body.name, 200)?,
        lat,
        lon,
        address: body
            .address
            .as_deref()
            .map(|a| bounded("address", a, 500))
            .transpose()?,
        time_zone: body.time_zone.as_deref().map(time_zone).transpose()?,
        created_at: micros(Utc::now()),
    };
    let quota = state.quotas.settings.venues_per_owner;
    // Held until the venue is written, so the next create counts it.
    let _turn = state
        .quotas
        .turn(quota, user.id.as_uuid(), state.write_timeout)
        .await?;
    if quota > 0 && state.store.venues_owned(user.id).await? >= quota {
        return Err(ApiError::conflict(
            ErrorCode::QuotaReached,
            format!("an account may own {quota} venues"),
        ));
    }
    state
        .within_deadline(async { Ok(state.store.create_venue(&venue).await?) })
        .await?;
    Ok(HttpResponse::Created().json(VenueEnvelope { data: venue.into() }))
}

/// A venue.
#[utoipa::path(get, path = "/v1/venues/{id}", tag = "venues", params(("id" = Uuid, Path)),
    responses((status = 200, body = VenueEnvelope), (status = 404, body = super::ErrorBody)))]
pub async fn get_venue(
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let venue = state
        .store
        .venue(VenueId::from(id.into_inner()))
        .await?
        .ok_or(ApiError::NotFound("venue"))?;
    Ok(HttpResponse::Ok().json(VenueEnvelope { data: venue.into() }))
}

/// Set or clear a venue's time zone (its owner or an admin).
#[utoipa::path(patch, path = "/v1/venues/{id}", tag = "venues", security(("bearer" = [])), params(("id" = Uuid, Path)),
    request_body = UpdateVenueRequest,
    responses((status = 200, body = VenueEnvelope), (status = 401, body = super::ErrorBody),
        (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody),
        (status = 422, body = super::ErrorBody)))]
pub async fn update_venue(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<Uuid>,
    body: web::Json<UpdateVenueRequest>,
) -> Result<HttpResponse, ApiError> {
    let zone = match &body.time_zone {
        Some(zone) => Some(zone.as_deref().map(time_zone).transpose()?),
        None => None,
    };
    let venue = managed_venue(&state, id.into_inner(), &user).await?;
    if let Some(zone) = zone {
        state
            .within_deadline(async {
                Ok(state
                    .store
                    .set_venue_time_zone(venue, zone.as_deref())
                    .await?)
            })
            .await?;
    }
    let updated = state
        .store
        .venue(venue)
        .await?
        .ok_or(ApiError::NotFound("venue"))?;
    Ok(HttpResponse::Ok().json(VenueEnvelope {
        data: updated.into(),
    }))
}

/// Who may act on a venue: the rule behind every check below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Owner,
    Organizer,
    Admin,
    Stranger,
}

impl Standing {
    fn may_place_events(self) -> bool {
        self != Standing::Stranger
    }

    fn may_manage_organizers(self) -> bool {
        matches!(self, Standing::Owner | Standing::Admin)
    }
}

async fn standing(
    state: &AppState,
    venue: &VenueRecord,
    user: &AuthUser,
) -> Result<Standing, ApiError> {
    Ok(if venue.owner_id == user.id.as_uuid() {
        Standing::Owner
    } else if super::identity::still_admin(state, user).await? {
        Standing::Admin
    } else if state
        .store
        .is_organizer(VenueId::from(venue.id), user.id)
        .await?
    {
        Standing::Organizer
    } else {
        Standing::Stranger
    })
}

/// The venue an event is to be put on, if `user` may put events there:
/// 422 `unknown_venue` if it does not exist, 403 `not_venue_organizer` if
/// the user is not its owner, one of its organisers or an admin.
pub async fn may_place_events(
    state: &AppState,
    id: Uuid,
    user: &AuthUser,
) -> Result<VenueId, ApiError> {
    let Some(venue) = state.store.venue(VenueId::from(id)).await? else {
        return Err(ApiError::unprocessable(
            ErrorCode::UnknownVenue,
            "venue_id does not name a venue",
        ));
    };
    if standing(state, &venue, user).await?.may_place_events() {
        Ok(VenueId::from(id))
    } else {
        Err(ApiError::forbidden(
            ErrorCode::NotVenueOrganizer,
            "only the venue's owner, the organisers it names, or an admin may put events on this venue",
        ))
    }
}

/// The venue, if `user` may manage its organisers (404 if there is none).
async fn managed_venue(state: &AppState, id: Uuid, user: &AuthUser) -> Result<VenueId, ApiError> {
    let venue = state
        .store
        .venue(VenueId::from(id))
        .await?
        .ok_or(ApiError::NotFound("venue"))?;
    if standing(state, &venue, user).await?.may_manage_organizers() {
        Ok(VenueId::from(id))
    } else {
        Err(ApiError::forbidden(
            ErrorCode::NotVenueOwner,
            "only the venue's owner or an admin may change the venue or its organisers",
        ))
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddOrganizerRequest {
    /// The user who may put events on the venue from now on: the `sub` of
    /// their tokens. Any id is taken, as users of an identity provider
    /// exist only in their tokens.
    pub user_id: Uuid,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OrganizerView {
    pub user_id: Uuid,
    pub added_at: chrono::DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OrganizerEnvelope {
    pub data: OrganizerView,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OrganizersEnvelope {
    /// Oldest first.
    pub data: Vec<OrganizerView>,
}

/// The venue's organisers (owner or admin).
#[utoipa::path(get, path = "/v1/venues/{id}/organizers", tag = "venues", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = OrganizersEnvelope),
        (status = 403, description = "`not_venue_owner`", body = super::ErrorBody),
        (status = 404, body = super::ErrorBody)))]
pub async fn list_organizers(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let venue = managed_venue(&state, id.into_inner(), &user).await?;
    let data = state
        .store
        .organizers(venue)
        .await?
        .into_iter()
        .map(|(user_id, added_at)| OrganizerView {
            user_id,
            added_at: from_micros(added_at),
        })
        .collect();
    Ok(HttpResponse::Ok().json(OrganizersEnvelope { data }))
}

/// Let another account put events on the venue (owner or admin).
/// 201 when added, 200 (with when they were added) when they already were
/// an organiser.
#[utoipa::path(post, path = "/v1/venues/{id}/organizers", tag = "venues", security(("bearer" = [])), params(("id" = Uuid, Path)),
    request_body = AddOrganizerRequest,
    responses((status = 201, body = OrganizerEnvelope), (status = 200, body = OrganizerEnvelope),
        (status = 403, description = "`not_venue_owner`", body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
        (status = 409, description = "`quota_reached`: the venue has as many organisers as one may", body = super::ErrorBody)))]
pub async fn add_organizer(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<Uuid>,
    body: web::Json<AddOrganizerRequest>,
) -> Result<HttpResponse, ApiError> {
    let venue = managed_venue(&state, id.into_inner(), &user).await?;
    let organizer = UserId::from(body.user_id);
    let quota = state.quotas.settings.organizers_per_venue;
    // Held until the organiser is written, so the next one counts them.
    let _turn = state
        .quotas
        .turn(quota, venue.as_uuid(), state.write_timeout)
        .await?;
    if quota > 0 {
        let named = state.store.organizers(venue).await?;
        let new = !named.iter().any(|(u, _)| *u == body.user_id);
        if new && named.len() as i64 >= quota {
            return Err(ApiError::conflict(
                ErrorCode::QuotaReached,
                format!("a venue may have {quota} organisers"),
            ));
        }
    }
    let (added_at, new) = state
        .store
        .add_organizer(venue, organizer, micros(Utc::now()))
        .await?;
    let named = OrganizerEnvelope {
        data: OrganizerView {
            user_id: body.user_id,
            added_at: from_micros(added_at),
        },
    };
    Ok(match new {
        true => HttpResponse::Created().json(named),
        false => HttpResponse::Ok().json(named),
    })
}

/// Take back an organiser's right to put new events on the venue (owner or
/// admin). Their events already there stay.
#[utoipa::path(delete, path = "/v1/venues/{id}/organizers/{user_id}", tag = "venues", security(("bearer" = [])),
    params(("id" = Uuid, Path), ("user_id" = Uuid, Path)),
    responses((status = 204), (status = 403, description = "`not_venue_owner`", body = super::ErrorBody),
        (status = 404, description = "no such venue, or the user is not its organiser", body = super::ErrorBody)))]
pub async fn remove_organizer(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (id, organizer) = path.into_inner();
    let venue = managed_venue(&state, id, &user).await?;
    if state
        .store
        .remove_organizer(venue, UserId::from(organizer))
        .await?
    {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotFound("organizer"))
    }
}
