//! Sign-in passes: a device's proof that its account signed in from it
//! before. Each sign-in (and registration) hands the client a pass for that
//! account; sent back with a later login, it lets the attempt past the
//! locks of its address ([`super::LoginGuard`]): a guesser sharing an
//! office's or a carrier's address cannot lock the people behind it out of
//! their own accounts, while the guesser, holding no pass, is answered as
//! before — so the answer tells nothing of who signs in from there.
//!
//! A pass is the time it was issued and an HMAC-SHA-256 of the account's
//! normalised email and that time, under a key derived from a JWT key (every node
//! shares it) with a label of its own: nothing is stored. As tokens are,
//! passes are made under the first key of the list and accepted under any,
//! so a rotation ends a pass only once its key leaves the list. It is good
//! for [`PASS_LIFETIME_SECS`], and the guard counts a pass holder's
//! failures per pass: a copied pass gets no more guesses than an address.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::SecretString;
use sha2::Sha256;

use super::Email;
use super::digest::derived_hmac;
use super::tokens::LEEWAY_SECS;

/// What the derivation keys the passes' key with.
const LABEL: &[u8] = b"turnout sign-in passes v1";

/// How long a pass lets its device past the address locks.
const PASS_LIFETIME_SECS: i64 = 30 * 24 * 3600;

/// A pass's bytes: the issue time (seconds, big-endian), then the MAC.
const ISSUED: usize = 8;
const LEN: usize = ISSUED + 32;

/// Passes under the JWT keys: made under the first, accepted under any.
#[derive(Clone)]
pub struct SignInPasses(Vec<Hmac<Sha256>>);

impl std::fmt::Debug for SignInPasses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignInPasses(..)")
    }
}

impl SignInPasses {
    /// Keyed from the JWT keys (the first signs), at least one.
    pub fn new(jwt_keys: &[SecretString]) -> Self {
        assert!(!jwt_keys.is_empty(), "passes need a key");
        Self(
            jwt_keys
                .iter()
                .map(|key| derived_hmac(key, LABEL))
                .collect(),
        )
    }

    /// Over the email itself, not the guard's digest of it: the digest is
    /// keyed by the first JWT key alone, so a pass over it would fail on
    /// every node as soon as a rotation put a new key first. (The issue
    /// time's fixed length at the end keeps the input unambiguous.)
    fn mac(key: &Hmac<Sha256>, email: &Email, issued: [u8; ISSUED]) -> Hmac<Sha256> {
        let mut mac = key.clone();
        mac.update(email.as_str().as_bytes());
        mac.update(&issued);
        mac
    }

    /// A pass for `email`'s account, issued at `now` (Unix seconds).
    pub(crate) fn issue(&self, email: &Email, now: i64) -> String {
        let issued = now.to_be_bytes();
        let mut pass = Vec::with_capacity(LEN);
        pass.extend_from_slice(&issued);
        pass.extend_from_slice(&Self::mac(&self.0[0], email, issued).finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(pass)
    }

    /// When `pass` was issued, if it was for `email`'s account, under one
    /// of the keys, and is within its lifetime at `now`. Anything else —
    /// another account's, an old one, one under a key gone from the list,
    /// garbage — is no pass.
    pub(crate) fn issued_at(&self, pass: &str, email: &Email, now: i64) -> Option<i64> {
        let bytes = URL_SAFE_NO_PAD.decode(pass).ok()?;
        let raw = <[u8; LEN]>::try_from(bytes.as_slice()).ok()?;
        let (issued, tag) = raw.split_at(ISSUED);
        let issued: [u8; ISSUED] = issued.try_into().expect("split at ISSUED");
        let at = i64::from_be_bytes(issued);
        let age = now.saturating_sub(at);
        let genuine = |key| Self::mac(key, email, issued).verify_slice(tag).is_ok();
        // A node whose clock runs ahead may have issued it: as much leeway as
        // a token's.
        ((-LEEWAY_SECS..PASS_LIFETIME_SECS).contains(&age) && self.0.iter().any(genuine))
            .then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(raw: &str) -> SecretString {
        SecretString::from(raw.to_owned())
    }

    fn account(raw: &str) -> Email {
        Email::parse(raw).unwrap()
    }

    #[test]
    fn a_pass_admits_its_account_for_its_lifetime_only() {
        let old = key("old-signing-key-old-signing-key-o");
        let new = key("new-signing-key-new-signing-key-n");
        let passes = SignInPasses::new(std::slice::from_ref(&old));
        let (ada, bo) = (account("ada@example.com"), account("bo@example.com"));
        let now = 1_800_000_000;
        let pass = passes.issue(&ada, now);
        let admits = |passes: &SignInPasses, account, at| passes.issued_at(&pass, account, at);
        assert_eq!(admits(&passes, &ada, now), Some(now));
        assert_eq!(
            admits(&passes, &ada, now + PASS_LIFETIME_SECS - 1),
            Some(now)
        );
        assert_eq!(
            admits(&passes, &ada, now + PASS_LIFETIME_SECS),
            None,
            "run out"
        );
        assert_eq!(
            admits(&passes, &ada, now - 30),
            Some(now),
            "from a clock ahead"
        );
        assert_eq!(
            admits(&passes, &ada, now - 61),
            None,
            "issued too far ahead"
        );
        assert_eq!(admits(&passes, &bo, now), None, "another account's");

        let rotating = SignInPasses::new(&[new.clone(), old]);
        assert_eq!(
            admits(&rotating, &ada, now),
            Some(now),
            "the old key still listed"
        );
        let rotated = SignInPasses::new(&[new]);
        assert_eq!(admits(&rotated, &ada, now), None, "the old key gone");
        let made_now = rotating.issue(&ada, now);
        assert_eq!(
            rotated.issued_at(&made_now, &ada, now),
            Some(now),
            "made under the first"
        );

        let mut forged = URL_SAFE_NO_PAD.decode(&pass).unwrap();
        forged[..ISSUED].copy_from_slice(&(now + 10).to_be_bytes());
        let forged = URL_SAFE_NO_PAD.encode(&forged);
        assert_eq!(passes.issued_at(&forged, &ada, now + 20), None, "re-dated");
        for garbage in ["", "not base64!", "AAAA", &pass[..pass.len() - 2]] {
            assert_eq!(passes.issued_at(garbage, &ada, now), None, "{garbage:?}");
        }
    }
}
