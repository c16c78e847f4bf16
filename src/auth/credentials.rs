//! Account credentials as typed values, and password hashing.

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use secrecy::{ExposeSecret, SecretString};
use turnout_actors::domain::ValueError;

/// A normalised email address: trimmed, in Unicode's compatibility form
/// (NFKC) and lowercased, so that addresses that look the same (`ａｄａ@…`
/// and `ada@…`, a composed and a decomposed `é`) are one account. Invisible
/// characters are refused: an address that differs only by one would look
/// the same in every log and admin tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        use unicode_normalization::UnicodeNormalization;
        let email = raw.trim().nfkc().collect::<String>().to_lowercase();
        let bad = || ValueError::new("email", "must be a valid email address");
        if email.len() > 254
            || email.chars().any(|c| {
                c.is_whitespace()
                    || c.is_control()
                    || turnout_actors::domain::is_invisible_format(c)
            })
        {
            return Err(bad());
        }
        let (local, domain) = email.split_once('@').ok_or_else(bad)?;
        if local.is_empty()
            || domain.contains('@')
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
        {
            return Err(bad());
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password as typed: 8 to 128 characters, and never printed.
pub struct Password(SecretString);

impl Password {
    pub fn parse(raw: String) -> Result<Self, ValueError> {
        let chars = raw.chars().count();
        if !(8..=128).contains(&chars) {
            return Err(ValueError::new("password", "must be 8 to 128 characters"));
        }
        Ok(Self(SecretString::from(raw)))
    }
}

/// A name to show other people.
#[derive(Debug, Clone)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        let name = raw.trim();
        if name.is_empty()
            || name.chars().count() > 80
            || name
                .chars()
                .any(|c| c.is_control() || turnout_actors::domain::is_invisible_format(c))
        {
            return Err(ValueError::new(
                "display_name",
                "must be 1 to 80 characters",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// Hashes with argon2id and a fresh salt. CPU- and memory-heavy: called
/// only through [`super::Hashing`].
pub(super) fn hash_password(password: &Password) -> String {
    let hash: PasswordHash = Argon2::default()
        .hash_password(password.0.expose_secret().as_bytes())
        .expect("argon2 with default parameters always hashes");
    hash.to_string()
}

/// Checks a password against a stored hash. Heavy, like hashing.
pub(super) fn verify_password(password: &str, stored_hash: &str) -> bool {
    PasswordVerifier::<str>::verify_password(&Argon2::default(), password.as_bytes(), stored_hash)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            Email::parse(" Ada@Example.COM ").unwrap().as_str(),
            "ada@example.com"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "a@b@c.com",
            "ada\u{200B}@example.com",
            "ada@exam\u{202E}ple.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails_that_look_the_same_are_one_account() {
        let ada = Email::parse("ada@example.com").unwrap();
        assert_eq!(Email::parse("ＡＤＡ@example.com").unwrap(), ada);
        assert_eq!(Email::parse("ada＠example.com").unwrap(), ada);
        assert_eq!(
            Email::parse("ame\u{0301}lie@example.com").unwrap(),
            Email::parse("am\u{00E9}lie@example.com").unwrap(),
            "a decomposed é is the composed one"
        );
    }

    #[test]
    fn a_password_hash_verifies_only_its_password() {
        let password = Password::parse("correct horse".into()).unwrap();
        let hash = hash_password(&password);
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong horse", &hash));
    }

    #[test]
    fn short_passwords_are_refused() {
        assert!(Password::parse("short".into()).is_err());
    }
}
