//! Identity: account credentials (argon2id), bearer tokens (HS256 JWT with a
//! rotating key list), and the request extractors that turn a token into a
//! user.

mod credentials;
mod extract;
mod lockout;
mod tokens;

pub use credentials::{DisplayName, Email, Password, hash_password, verify_password};
pub use extract::{AdminUser, AuthUser, MaybeUser, VerifiedClaims, bearer_token};
pub use lockout::{Admission, LockoutSettings, LoginGuard};
pub use tokens::{Claims, TokenError, TokenKeys};
