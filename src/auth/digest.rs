//! How logs and the login guard name an account: a keyed digest of its
//! normalised email (HMAC-SHA-256). A log line links attempts on one
//! account without holding the address; and, keyed, it cannot be reversed
//! by hashing a list of addresses, as a plain SHA-256 of the email could by
//! anyone who read the logs.
//!
//! The key is derived from the signing JWT key (every node of a cluster
//! shares it), under a label of its own, so a digest says nothing about a
//! token. Rotating the signing key changes the digests from then on: lines
//! logged before name the same account differently.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use super::Email;

/// What the derivation keys the digests' key with.
const LABEL: &[u8] = b"turnout account digests v1";

/// An HMAC-SHA-256 under a key derived from `jwt_key` for one use, named
/// by `label`: what it makes says nothing of a token, nor of another use's.
pub(super) fn derived_hmac(jwt_key: &SecretString, label: &[u8]) -> Hmac<Sha256> {
    let mut derive = Hmac::<Sha256>::new_from_slice(jwt_key.expose_secret().as_bytes())
        .expect("HMAC takes a key of any length");
    derive.update(label);
    let key = derive.finalize().into_bytes();
    Hmac::new_from_slice(&key).expect("HMAC takes a key of any length")
}

/// An account as the guard counts it and the logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Account([u8; 32]);

impl Account {
    /// The name logs give it: the digest's first 8 bytes, in hex.
    pub fn logged(&self) -> String {
        self.0[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Digests of emails under one key.
#[derive(Clone)]
pub struct AccountDigests(Hmac<Sha256>);

impl std::fmt::Debug for AccountDigests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccountDigests(..)")
    }
}

impl AccountDigests {
    /// Keyed from the signing JWT key.
    pub fn new(signing_key: &SecretString) -> Self {
        Self(derived_hmac(signing_key, LABEL))
    }

    pub(crate) fn account(&self, email: &Email) -> Account {
        let mut mac = self.0.clone();
        mac.update(email.as_str().as_bytes());
        Account(mac.finalize().into_bytes().into())
    }

    /// The account as logs name it.
    pub fn logged(&self, email: &Email) -> String {
        self.account(email).logged()
    }
}

#[cfg(test)]
mod tests {
    use sha2::Digest;

    use super::*;

    fn email(raw: &str) -> Email {
        Email::parse(raw).unwrap()
    }

    fn digests(key: &str) -> AccountDigests {
        AccountDigests::new(&SecretString::from(key.to_owned()))
    }

    #[test]
    fn logs_name_an_account_by_a_keyed_digest() {
        let (a, b) = (
            digests("key-a-key-a-key-a-key-a-key-a-key-a"),
            digests("key-b"),
        );
        let logged = a.logged(&email("a@x.org"));
        assert_eq!(logged.len(), 16);
        assert_eq!(logged, a.logged(&email("A@X.org")), "the normalised email");
        assert_ne!(logged, a.logged(&email("b@x.org")));
        assert_ne!(logged, b.logged(&email("a@x.org")), "another key");
        let unkeyed: String = sha2::Sha256::digest(b"a@x.org")[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(logged, unkeyed, "not a plain hash anyone can compute");
    }

    #[test]
    fn the_key_stays_out_of_debug_output() {
        let shown = format!("{:?}", digests("secret-secret-secret-secret-secret"));
        assert!(!shown.contains("secret"), "{shown}");
    }
}
