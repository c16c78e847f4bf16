//! `GET /kiosk/{venue_id}`: a self-contained page for a venue's screen —
//! upcoming events, start times and places left, live over the venue channel,
//! reconnecting with resume. Nothing to build: the page is compiled in.

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, web};
use turnout_actors::domain::VenueId;
use uuid::Uuid;

use super::{ApiError, AppState};

const PAGE: &str = include_str!("kiosk/kiosk.html");

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/kiosk/{venue_id}", web::get().to(kiosk));
}

async fn kiosk(
    state: web::Data<AppState>,
    venue: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let venue = venue.into_inner();
    state
        .store
        .venue(VenueId::from(venue))
        .await?
        .ok_or(ApiError::NotFound("venue"))?;
    Ok(HttpResponse::Ok()
        .content_type(ContentType::html())
        .insert_header(("Cache-Control", "no-cache"))
        .body(PAGE.replace("__VENUE_ID__", &venue.to_string())))
}
