//! Bearer tokens: HS256 JWTs. Keys come as a list — sign with the first,
//! accept any — so a key can be rotated without logging everyone out.
//!
//! Times are checked with a leeway of [`LEEWAY_SECS`] for clocks that
//! differ: `exp` must not have passed, `nbf` (when present) must have come,
//! `iat` must not be in the future, and `exp - iat` must not exceed the
//! longest lifetime the server accepts (`auth.max_token_lifetime_secs`), so
//! a token minted with a shared key cannot be good for a thousand years.

use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use turnout_actors::domain::UserId;
use uuid::Uuid;

/// The claims Turnout issues and accepts. Any issuer sharing a key may mint
/// tokens with these claims (an identity provider, the load tester).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub iat: i64,
    pub exp: i64,
    /// Not before: optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub iss: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's lifetime is longer than this server accepts")]
    TooLong,
    #[error("the token is invalid")]
    Invalid,
}

/// Seconds two clocks may differ by.
pub const LEEWAY_SECS: i64 = 60;

/// The longest token lifetime accepted unless configured.
pub const DEFAULT_MAX_LIFETIME_SECS: i64 = 7 * 24 * 3600;

/// The signing and verifying keys. `Debug` shows how many, never which.
pub struct TokenKeys {
    signing: EncodingKey,
    verifying: Vec<DecodingKey>,
    /// What a token must satisfy: built once, since building it allocates
    /// sets of claims and issuers and every authenticated request checks it.
    validation: Validation,
    issuer: String,
    ttl_secs: i64,
    max_lifetime_secs: i64,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("keys", &self.verifying.len())
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl TokenKeys {
    /// `keys` must not be empty; the first one signs.
    pub fn new(keys: &[SecretString], issuer: String, ttl_secs: u64) -> Self {
        assert!(!keys.is_empty(), "at least one JWT key is required");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&issuer]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "iat"]);
        validation.leeway = LEEWAY_SECS as u64;
        validation.validate_nbf = true;
        Self {
            signing: EncodingKey::from_secret(keys[0].expose_secret().as_bytes()),
            verifying: keys
                .iter()
                .map(|k| DecodingKey::from_secret(k.expose_secret().as_bytes()))
                .collect(),
            validation,
            issuer,
            ttl_secs: ttl_secs as i64,
            max_lifetime_secs: DEFAULT_MAX_LIFETIME_SECS.max(ttl_secs as i64),
        }
    }

    /// Refuses tokens whose `exp - iat` is longer than `secs` (at least the
    /// lifetime of the tokens this server issues).
    pub fn with_max_lifetime(mut self, secs: u64) -> Self {
        self.max_lifetime_secs = (secs as i64).max(self.ttl_secs);
        self
    }

    pub fn issue(&self, user: UserId, role: Option<String>) -> String {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user.as_uuid(),
            iat: now,
            exp: now + self.ttl_secs,
            nbf: None,
            iss: self.issuer.clone(),
            role,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.signing)
            .expect("HS256 signing cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let mut refusal = TokenError::Invalid;
        for key in &self.verifying {
            match decode::<Claims>(token, key, &self.validation) {
                Ok(data) => return self.check_times(data.claims),
                Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => {
                    refusal = TokenError::Expired
                }
                Err(e) if matches!(e.kind(), ErrorKind::ImmatureSignature) => {
                    refusal = TokenError::NotYetValid
                }
                Err(_) => {}
            }
        }
        Err(refusal)
    }

    /// What the library does not check: an `iat` from the future, and a
    /// lifetime longer than allowed.
    fn check_times(&self, claims: Claims) -> Result<Claims, TokenError> {
        if claims.iat > Utc::now().timestamp() + LEEWAY_SECS {
            return Err(TokenError::NotYetValid);
        }
        if claims.exp.saturating_sub(claims.iat) > self.max_lifetime_secs {
            return Err(TokenError::TooLong);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Vec<SecretString> {
        list.iter()
            .map(|k| SecretString::from(k.to_string()))
            .collect()
    }

    #[test]
    fn tokens_signed_with_an_old_key_still_verify_after_rotation() {
        let old = TokenKeys::new(
            &keys(&["old-key-old-key-old-key-old-key!"]),
            "turnout".into(),
            60,
        );
        let rotated = TokenKeys::new(
            &keys(&[
                "new-key-new-key-new-key-new-key!",
                "old-key-old-key-old-key-old-key!",
            ]),
            "turnout".into(),
            60,
        );
        let user = UserId::new();
        let token = old.issue(user, None);
        assert_eq!(rotated.verify(&token).unwrap().sub, user.as_uuid());
    }

    #[test]
    fn wrong_key_wrong_issuer_and_expiry_are_refused() {
        let a = TokenKeys::new(
            &keys(&["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]),
            "turnout".into(),
            60,
        );
        let b = TokenKeys::new(
            &keys(&["bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"]),
            "turnout".into(),
            60,
        );
        let other_issuer = TokenKeys::new(
            &keys(&["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]),
            "elsewhere".into(),
            60,
        );
        let token = a.issue(UserId::new(), None);
        assert_eq!(b.verify(&token).unwrap_err(), TokenError::Invalid);
        assert_eq!(
            other_issuer.verify(&token).unwrap_err(),
            TokenError::Invalid
        );

        let stale = TokenKeys {
            ttl_secs: -3600,
            ..TokenKeys::new(
                &keys(&["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]),
                "turnout".into(),
                60,
            )
        };
        assert_eq!(
            a.verify(&stale.issue(UserId::new(), None)).unwrap_err(),
            TokenError::Expired
        );
        assert!(!format!("{a:?}").contains("aaaa"));
    }

    /// A token minted elsewhere with the shared key and chosen times.
    fn minted(iat: i64, exp: i64, nbf: Option<i64>) -> String {
        let claims = Claims {
            sub: Uuid::new_v4(),
            iat,
            exp,
            nbf,
            iss: "turnout".into(),
            role: None,
        };
        let key = EncodingKey::from_secret(b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    #[test]
    fn times_from_the_future_and_endless_lifetimes_are_refused() {
        let keys = TokenKeys::new(
            &keys(&["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]),
            "turnout".into(),
            86400,
        )
        .with_max_lifetime(2 * 86400);
        let now = Utc::now().timestamp();
        let year = 365 * 86400;
        assert!(keys.verify(&minted(now, now + 3600, None)).is_ok());
        assert!(
            keys.verify(&minted(now - 10, now + 3600, Some(now + 30)))
                .is_ok(),
            "within the leeway"
        );
        assert_eq!(
            keys.verify(&minted(now, now + 3600, Some(now + 3600)))
                .unwrap_err(),
            TokenError::NotYetValid
        );
        assert_eq!(
            keys.verify(&minted(now + year, now + year + 3600, None))
                .unwrap_err(),
            TokenError::NotYetValid
        );
        let year_3000 = 32_503_680_000;
        assert_eq!(
            keys.verify(&minted(now, year_3000, None)).unwrap_err(),
            TokenError::TooLong
        );
        assert_eq!(
            keys.verify(&minted(now, now + 3 * 86400, None))
                .unwrap_err(),
            TokenError::TooLong
        );
    }
}
