//! Bearer tokens: HS256 JWTs. Keys come as a list — sign with the first,
//! accept any — so a key can be rotated without logging everyone out.

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
    pub iss: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is invalid")]
    Invalid,
}

/// The signing and verifying keys. `Debug` shows how many, never which.
pub struct TokenKeys {
    signing: EncodingKey,
    verifying: Vec<DecodingKey>,
    /// What a token must satisfy: built once, since building it allocates
    /// sets of claims and issuers and every authenticated request checks it.
    validation: Validation,
    issuer: String,
    ttl_secs: i64,
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
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        Self {
            signing: EncodingKey::from_secret(keys[0].expose_secret().as_bytes()),
            verifying: keys
                .iter()
                .map(|k| DecodingKey::from_secret(k.expose_secret().as_bytes()))
                .collect(),
            validation,
            issuer,
            ttl_secs: ttl_secs as i64,
        }
    }

    pub fn issue(&self, user: UserId, role: Option<String>) -> String {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user.as_uuid(),
            iat: now,
            exp: now + self.ttl_secs,
            iss: self.issuer.clone(),
            role,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.signing)
            .expect("HS256 signing cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut expired = false;
        for key in &self.verifying {
            match decode::<Claims>(token, key, &self.validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                    expired = true
                }
                Err(_) => {}
            }
        }
        Err(if expired {
            TokenError::Expired
        } else {
            TokenError::Invalid
        })
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
}
