//! `GET /v1/me/recommendations`: the caller's best upcoming events, each with
//! its score and the reasons in words. The same items travel on the `recs`
//! WebSocket channel.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::ErrorCode;
use super::identity::AuthUser;
use super::{ApiError, AppState};
use crate::views::RecommendationView;

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

#[derive(Serialize, utoipa::ToSchema)]
pub struct RecommendationList {
    pub data: Vec<RecommendationView>,
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
                ErrorCode::InvalidQuery,
                format!("limit must be 1 to {MAX_LIMIT}"),
            ));
        }
    };
    let ranked = state.recommenders.rank_for(user.id, limit).await?;
    Ok(HttpResponse::Ok().json(RecommendationList {
        data: ranked.iter().map(RecommendationView::from).collect(),
    }))
}
