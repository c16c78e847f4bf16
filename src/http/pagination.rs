//! Keyset pagination: `{"data": [...], "next_cursor": "..."|null}`. A cursor
//! is the last row's sort key, opaque to clients (base64url JSON), so pages
//! never skip or repeat rows when new ones arrive.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::ApiError;
use super::ErrorCode;

/// A page of results.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

/// `?cursor=&limit=` as every list takes them.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PageQuery {
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// 1 to 100; 20 when absent.
    pub limit: Option<i64>,
}

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

pub fn limit(raw: Option<i64>) -> Result<i64, ApiError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            format!("limit must be 1 to {MAX_LIMIT}"),
        )),
    }
}

pub fn encode<T: Serialize>(key: &T) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(key).expect("cursor keys serialise"))
}

pub fn decode<T: DeserializeOwned>(cursor: Option<&str>) -> Result<Option<T>, ApiError> {
    let Some(cursor) = cursor else {
        return Ok(None);
    };
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidCursor,
                "the cursor is not one this server issued",
            )
        })
}

/// Builds a page from `limit + 1` fetched rows: the extra row only says that
/// there is a next page.
/// A page of items already rendered as JSON, rendered as [`Page`] would be.
pub fn rendered(page: Page<actix_web::web::Bytes>) -> actix_web::web::Bytes {
    let items: usize = page.data.iter().map(|item| item.len() + 1).sum();
    let mut body = Vec::with_capacity(items + 64);
    body.extend_from_slice(br#"{"data":["#);
    for (i, item) in page.data.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(br#"],"next_cursor":"#);
    serde_json::to_writer(&mut body, &page.next_cursor).expect("a cursor serialises");
    body.push(b'}');
    body.into()
}

pub fn page<R, T, K: Serialize>(
    mut rows: Vec<R>,
    limit: i64,
    key: impl Fn(&R) -> K,
    view: impl Fn(R) -> T,
) -> Page<T> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|r| encode(&key(r)))
    } else {
        None
    };
    Page {
        data: rows.into_iter().map(view).collect(),
        next_cursor,
    }
}
