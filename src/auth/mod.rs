//! Identity: account credentials (argon2id), bearer tokens (HS256 JWT with a
//! rotating key list), hashing's concurrency gate, login lockout and the
//! sign-in passes that let a known device past it. The
//! request extractors that turn a token into a user are the HTTP layer's
//! (`http::identity`).

mod credentials;
mod digest;
mod hashing;
mod lockout;
mod passes;
mod role;
mod tokens;

pub use credentials::{DisplayName, Email, Password};
pub use digest::AccountDigests;
pub use hashing::{Busy, Hashing, HashingSettings};
pub use lockout::{Admission, LockoutSettings, LoginGuard};
pub use passes::SignInPasses;
pub use role::Role;
pub use tokens::{Claims, TokenError, TokenKeys};
