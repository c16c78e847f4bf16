//! Venues: where events happen.

use actix_web::{HttpResponse, web};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use turnout_actors::domain::{ValueError, VenueId, is_invisible_format};
use uuid::Uuid;

use super::accounts::GeoPoint;
use super::{ApiError, AppState};
use crate::auth::AuthUser;
use crate::store::{VenueRecord, from_micros, micros};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/venues", web::post().to(create_venue))
        .route("/venues/{id}", web::get().to(get_venue));
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVenueRequest {
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    pub address: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct VenueView {
    pub id: Uuid,
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    pub address: Option<String>,
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
            created_at: from_micros(v.created_at),
        }
    }
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
    responses((status = 201, body = VenueEnvelope), (status = 422, body = super::ErrorBody)))]
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
        created_at: micros(Utc::now()),
    };
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
