//! Identity: account credentials (argon2id), bearer tokens (HS256 JWT with a
//! rotating key list), and the request extractors that turn a token into a
//! user.

mod credentials;
mod extract;
mod hashing;
mod lockout;
mod tokens;

pub use credentials::{DisplayName, Email, Password};
pub use extract::{AdminUser, AuthUser, MaybeUser, VerifiedClaims, bearer_token};
pub use hashing::{Busy, Hashing, HashingSettings};
pub use lockout::{Admission, LockoutSettings, LoginGuard, account_digest};
pub use tokens::{Claims, TokenError, TokenKeys};
