//! `GET /v1/me/recommendations`: the caller's best upcoming events, each with
//! its score and the reasons in words. The same items travel on the `recs`
//! WebSocket channel.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use turnout_actors::domain::Lifecycle;
use turnout_actors::recommend::{EventCard, Recommendation};
use uuid::Uuid;

use super::{ApiError, AppState};
use crate::auth::AuthUser;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/me/recommendations", web::get().to(recommendations));
}

const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RecommendationsQuery {
    /// 1 to 100; 10 when absent.
    pub limit: Option<i64>,
}

/// A recommended event with its live counts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecommendedEvent {
    pub id: Uuid,
    pub title: String,
    pub venue_id: Uuid,
    pub starts_at: DateTime<Utc>,
    pub tags: Vec<String>,
    pub status: String,
    pub capacity: u32,
    pub active_count: u32,
    pub waitlist_count: u32,
    pub places_left: u32,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecommendationView {
    pub event: RecommendedEvent,
    /// Higher is better; comparable within one list.
    pub score: f64,
    /// Why, strongest first: "matches your interest: jazz", "2.1 km from home", …
    pub reasons: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RecommendationList {
    pub data: Vec<RecommendationView>,
}

impl From<&(Recommendation, EventCard)> for RecommendationView {
    fn from((r, card): &(Recommendation, EventCard)) -> Self {
        Self {
            event: RecommendedEvent {
                id: card.id.as_uuid(),
                title: card.title.to_string(),
                venue_id: card.venue.as_uuid(),
                starts_at: card.starts_at,
                tags: card.tags.iter().map(|t| t.as_str().to_owned()).collect(),
                status: match card.lifecycle {
                    Lifecycle::Draft => "draft",
                    Lifecycle::Published => "published",
                    Lifecycle::Cancelled => "cancelled",
                }
                .to_owned(),
                capacity: card.capacity,
                active_count: card.active,
                waitlist_count: card.waitlist,
                places_left: card.places_left(),
            },
            score: (r.score * 1000.0).round() / 1000.0,
            reasons: r.reasons.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Published, upcoming, joinable events ranked for the caller, with reasons.
/// A token-only identity (no local account) is ranked without interests or
/// home: on its joins, popularity and freshness.
#[utoipa::path(get, path = "/v1/me/recommendations", tag = "recommendations", params(RecommendationsQuery),
    security(("bearer" = [])),
    responses((status = 200, body = RecommendationList), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::ErrorBody)))]
pub async fn recommendations(
    state: web::Data<AppState>,
    user: AuthUser,
    query: web::Query<RecommendationsQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = match query.limit {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_LIMIT as i64).contains(&n) => n as usize,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("limit must be 1 to {MAX_LIMIT}"),
            ));
        }
    };
    let ranked = state.recommenders.rank_for(user.id, limit).await?;
    Ok(HttpResponse::Ok().json(RecommendationList {
        data: ranked.iter().map(RecommendationView::from).collect(),
    }))
}
