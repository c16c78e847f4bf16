//! Sign-in passes: a device's proof that its account signed in from it
//! before. Each sign-in (and registration) hands the client a pass for that
//! account; sent back with a later login, it lets the attempt past the
//! locks of its address ([`super::LoginGuard`]): a guesser sharing an
//! office's or a carrier's address cannot lock the people behind it out of
//! their own accounts, while the guesser, holding no pass, is answered as
//! before — so the answer tells nothing of who signs in from there.
//!
//! A pass is the time it was issued and an HMAC-SHA-256 of the account
//! and that time, under a key derived from the signing JWT key (every node
//! shares it) with a label of its own: nothing is stored, and rotating the
//! signing key ends every pass (the next sign-in brings a new one). It is
//! good for [`PASS_LIFETIME`].

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use super::digest::Account;

/// What the derivation keys the passes' key with.
const LABEL: &[u8] = b"turnout sign-in passes v1";

/// How long a pass lets its device past the address locks.
pub const PASS_LIFETIME_SECS: i64 = 30 * 24 * 3600;

/// A pass's bytes: the issue time (seconds, big-endian), then the MAC.
const ISSUED: usize = 8;
const LEN: usize = ISSUED + 32;

/// Passes under one key.
#[derive(Clone)]
pub struct SignInPasses(Hmac<Sha256>);

impl std::fmt::Debug for SignInPasses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignInPasses(..)")
    }
}

impl SignInPasses {
    /// Keyed from the signing JWT key.
    pub fn new(signing_key: &SecretString) -> Self {
        let mut derive = Hmac::<Sha256>::new_from_slice(signing_key.expose_secret().as_bytes())
            .expect("HMAC takes a key of any length");
        derive.update(LABEL);
        let key = derive.finalize().into_bytes();
        Self(Hmac::new_from_slice(&key).expect("HMAC takes a key of any length"))
    }

    fn mac(&self, account: &Account, issued: [u8; ISSUED]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(account.as_bytes());
        mac.update(&issued);
        mac
    }

    /// A pass for `account`, issued at `now` (Unix seconds).
    pub(crate) fn issue(&self, account: &Account, now: i64) -> String {
        let issued = now.to_be_bytes();
        let mut pass = Vec::with_capacity(LEN);
        pass.extend_from_slice(&issued);
        pass.extend_from_slice(&self.mac(account, issued).finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(pass)
    }

    /// Whether `pass` was issued for `account` within its lifetime before
    /// `now`. Anything else — another account's, an old one, one under
    /// another key, garbage — is no pass.
    pub(crate) fn admits(&self, pass: &str, account: &Account, now: i64) -> bool {
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(pass) else {
            return false;
        };
        let Ok(raw) = <[u8; LEN]>::try_from(bytes.as_slice()) else {
            return false;
        };
        let (issued, tag) = raw.split_at(ISSUED);
        let issued: [u8; ISSUED] = issued.try_into().expect("split at ISSUED");
        let age = now.saturating_sub(i64::from_be_bytes(issued));
        (0..PASS_LIFETIME_SECS).contains(&age)
            && self.mac(account, issued).verify_slice(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AccountDigests, Email};

    fn key(raw: &str) -> SecretString {
        SecretString::from(raw.to_owned())
    }

    fn account(raw: &str) -> Account {
        AccountDigests::new(&key("digest-key-digest-key-digest-key"))
            .account(&Email::parse(raw).unwrap())
    }

    #[test]
    fn a_pass_admits_its_account_for_its_lifetime_only() {
        let passes = SignInPasses::new(&key("signing-key-signing-key-signing-k"));
        let (ada, bo) = (account("ada@example.com"), account("bo@example.com"));
        let now = 1_800_000_000;
        let pass = passes.issue(&ada, now);
        assert!(passes.admits(&pass, &ada, now));
        assert!(passes.admits(&pass, &ada, now + PASS_LIFETIME_SECS - 1));
        assert!(
            !passes.admits(&pass, &ada, now + PASS_LIFETIME_SECS),
            "run out"
        );
        assert!(!passes.admits(&pass, &ada, now - 1), "issued in the future");
        assert!(!passes.admits(&pass, &bo, now), "another account's");

        let rotated = SignInPasses::new(&key("another-signing-key-another-key"));
        assert!(!rotated.admits(&pass, &ada, now), "under another key");

        let mut forged = URL_SAFE_NO_PAD.decode(&pass).unwrap();
        forged[..ISSUED].copy_from_slice(&(now + 10).to_be_bytes());
        assert!(
            !passes.admits(&URL_SAFE_NO_PAD.encode(&forged), &ada, now + 20),
            "re-dated"
        );
        for garbage in ["", "not base64!", "AAAA", &pass[..pass.len() - 2]] {
            assert!(!passes.admits(garbage, &ada, now), "{garbage:?}");
        }
    }
}
