//! Accounts: register, log in, read and update the caller's profile.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use turnout_actors::domain::{Tag, UserId, ValueError};
use uuid::Uuid;

use super::ErrorCode;
use super::identity::AuthUser;
use super::rate_limit::RateLimits;
use super::{ApiError, AppState};
use crate::auth::{Admission, DisplayName, Email, Hashing, LoginGuard, Password, Role, TokenKeys};
use crate::store::{UserRecord, from_micros, micros};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/auth/register", web::post().to(register))
        .route("/auth/login", web::post().to(login))
        .service(
            super::resource("/me")
                .route(web::get().to(me))
                .route(web::patch().to(update_me)),
        );
}

/// A point on the map.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
}

impl GeoPoint {
    pub fn check(self, field: &'static str) -> Result<(f64, f64), ValueError> {
        if !(-90.0..=90.0).contains(&self.lat) || !(-180.0..=180.0).contains(&self.lon) {
            return Err(ValueError::new(
                field,
                "lat must be -90..90 and lon -180..180",
            ));
        }
        Ok((self.lat, self.lon))
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "email": "ada@example.org", "password": "correct horse battery",
    "display_name": "Ada", "interests": ["jazz", "open-air"],
    "home": { "lat": 52.37, "lon": 4.89 }
}))]
pub struct RegisterRequest {
    pub email: String,
    /// 8 to 128 characters.
    pub password: String,
    pub display_name: String,
    /// Tags you like, e.g. `["jazz", "open-air"]`.
    pub interests: Option<Vec<String>>,
    pub home: Option<GeoPoint>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "email": "ada@example.org", "password": "correct horse battery" }))]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
    /// A `sign_in_pass` this device was given for this account (at a
    /// sign-in or its registration) within 30 days: it lets the login past
    /// the locks that failed logins from its address may have set.
    pub sign_in_pass: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeRequest {
    pub interests: Option<Vec<String>>,
    /// `null` forgets the home location.
    #[serde(default, deserialize_with = "super::events::present")]
    #[schema(value_type = Option<GeoPoint>)]
    pub home: Option<Option<GeoPoint>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub interests: Vec<String>,
    pub home: Option<GeoPoint>,
    pub role: Role,
    pub created_at: chrono::DateTime<Utc>,
}

impl From<UserRecord> for UserView {
    fn from(u: UserRecord) -> Self {
        Self {
            id: u.id,
            email: u.email,
            display_name: u.display_name,
            interests: u.interests.0,
            home: u
                .home_lat
                .zip(u.home_lon)
                .map(|(lat, lon)| GeoPoint { lat, lon }),
            role: u.role,
            created_at: from_micros(u.created_at),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Session {
    pub user: UserView,
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    /// Keep it on this device and send it with the next login to this
    /// account: someone guessing passwords from the same address (an
    /// office's, a carrier's) cannot then lock you out. Good for 30 days;
    /// each sign-in gives a new one.
    pub sign_in_pass: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionEnvelope {
    pub data: Session,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserEnvelope {
    pub data: UserView,
}

fn interests(raw: Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
    let tags = Tag::parse_list(&raw.unwrap_or_default())
        .map_err(|e| ValueError::new("interests", e.reason))?;
    Ok(tags.into_iter().map(String::from).collect())
}

/// Create an account and get a token.
#[utoipa::path(post, path = "/v1/auth/register", tag = "accounts", request_body = RegisterRequest,
    responses((status = 201, body = SessionEnvelope), (status = 409, description = "email taken", body = super::ErrorBody),
        (status = 422, description = "invalid field", body = super::ErrorBody),
        (status = 503, description = "too many passwords being hashed at once; see Retry-After", body = super::ErrorBody)))]
pub async fn register(
    state: web::Data<AppState>,
    tokens: web::Data<TokenKeys>,
    hashing: web::Data<Hashing>,
    guard: web::Data<LoginGuard>,
    body: web::Json<RegisterRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let email = Email::parse(&body.email)?;
    let password = Password::parse(body.password)?;
    let display_name = DisplayName::parse(&body.display_name)?;
    let interests = interests(body.interests)?;
    let home = body.home.map(|h| h.check("home")).transpose()?;

    let password_hash = hashing.hash(password).await?;
    let user = UserRecord {
        id: UserId::new().as_uuid(),
        email: email.as_str().to_owned(),
        password_hash,
        display_name: display_name.into_inner(),
        interests: Json(interests),
        home_lat: home.map(|h| h.0),
        home_lon: home.map(|h| h.1),
        role: Role::Attendee,
        created_at: micros(Utc::now()),
    };
    let created = state
        .within_deadline(async { Ok(state.store.create_user(&user).await?) })
        .await?;
    if !created {
        return Err(ApiError::conflict(
            ErrorCode::EmailTaken,
            "an account with this email already exists",
        ));
    }
    tracing::info!(target: "turnout::audit", user_id = %user.id, "account registered");
    let pass = guard.pass_for(&email);
    Ok(session_response(StatusCode::CREATED, user, &tokens, pass))
}

/// `{user, token, sign_in_pass}` for a signed-in user. Never cached.
fn session_response(
    status: StatusCode,
    user: UserRecord,
    tokens: &TokenKeys,
    sign_in_pass: String,
) -> HttpResponse {
    let token = tokens.issue(UserId::from(user.id), Some(user.role.as_str().to_owned()));
    HttpResponse::build(status)
        .insert_header(("Cache-Control", "no-store"))
        .json(SessionEnvelope {
            data: Session {
                user: user.into(),
                token,
                sign_in_pass,
            },
        })
}

/// Exchange email and password for a token.
#[utoipa::path(post, path = "/v1/auth/login", tag = "accounts", request_body = LoginRequest,
    responses((status = 200, body = SessionEnvelope), (status = 401, description = "wrong email or password", body = super::ErrorBody),
        (status = 429, description = "too many failed logins: locked for a while", body = super::ErrorBody),
        (status = 503, description = "too many passwords being checked at once; see Retry-After", body = super::ErrorBody)))]
pub async fn login(
    state: web::Data<AppState>,
    tokens: web::Data<TokenKeys>,
    hashing: web::Data<Hashing>,
    guard: web::Data<LoginGuard>,
    limits: web::Data<RateLimits>,
    req: HttpRequest,
    body: web::Json<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    // No account has a malformed email: refused at once, and nothing of it
    // is kept (the guard counts only well-formed ones).
    let Ok(email) = Email::parse(&body.email) else {
        return Err(ApiError::Unauthorized("wrong email or password"));
    };
    let ip = limits.client_ip(req.peer_addr(), req.headers());
    let attempt = match guard.admit(&email, ip, body.sign_in_pass.as_deref()) {
        Admission::Locked(wait) => {
            let account = guard.digests().logged(&email);
            tracing::info!(target: "turnout::audit", %account, %ip, "login refused: locked out");
            return Err(ApiError::TooManyRequests(wait.as_secs() + 1));
        }
        Admission::Proceed(attempt, pause) => {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            attempt
        }
    };
    let user = state.store.user_by_email(email.as_str()).await?;
    // Verify against a real hash even for unknown emails, so timing does not
    // tell which accounts exist.
    static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    let hash = match &user {
        Some(u) => u.password_hash.clone(),
        None => DUMMY
            .get_or_try_init(|| {
                hashing.hash(Password::parse("not-a-real-password".into()).expect("valid"))
            })
            .await?
            .clone(),
    };
    let matches = hashing.verify(body.password, hash).await?;
    match user {
        Some(user) if matches => {
            attempt.succeeded();
            tracing::info!(target: "turnout::audit", user_id = %user.id, "login");
            let pass = guard.pass_for(&email);
            Ok(session_response(StatusCode::OK, user, &tokens, pass))
        }
        _ => {
            attempt.failed();
            let account = guard.digests().logged(&email);
            tracing::info!(target: "turnout::audit", %account, %ip, "failed login");
            Err(ApiError::Unauthorized("wrong email or password"))
        }
    }
}

/// The caller's profile.
#[utoipa::path(get, path = "/v1/me", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = UserEnvelope), (status = 404, description = "token without a local account", body = super::ErrorBody)))]
pub async fn me(state: web::Data<AppState>, user: AuthUser) -> Result<HttpResponse, ApiError> {
    let record = state
        .store
        .user(user.id)
        .await?
        .ok_or(ApiError::NotFound("account"))?;
    Ok(HttpResponse::Ok().json(UserEnvelope {
        data: record.into(),
    }))
}

/// Update interests or home location.
#[utoipa::path(patch, path = "/v1/me", tag = "accounts", security(("bearer" = [])), request_body = UpdateMeRequest,
    responses((status = 200, body = UserEnvelope), (status = 404, description = "token without a local account", body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
pub async fn update_me(
    state: web::Data<AppState>,
    user: AuthUser,
    body: web::Json<UpdateMeRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let current = state
        .store
        .user(user.id)
        .await?
        .ok_or(ApiError::NotFound("account"))?;
    let interests = match body.interests {
        Some(raw) => self::interests(Some(raw))?,
        None => current.interests.0.clone(),
    };
    let home = match body.home {
        Some(Some(point)) => Some(point.check("home")?),
        Some(None) => None,
        None => current.home_lat.zip(current.home_lon),
    };
    state
        .within_deadline(async {
            Ok(state
                .store
                .update_profile(user.id, &interests, home)
                .await?)
        })
        .await?;
    state.recommenders.profile_changed(user.id);
    let record = state
        .store
        .user(user.id)
        .await?
        .ok_or(ApiError::NotFound("account"))?;
    Ok(HttpResponse::Ok().json(UserEnvelope {
        data: record.into(),
    }))
}
