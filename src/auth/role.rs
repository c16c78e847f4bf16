//! What an account may do beyond its own joins and events. An account starts
//! as an attendee; `turnout set-role` makes an organizer or an admin (only
//! `admin` opens routes of its own: `/v1/admin/…`).

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Attendee,
    Organizer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Attendee => "attendee",
            Role::Organizer => "organizer",
            Role::Admin => "admin",
        }
    }

    /// The role a stored or signed name stands for; `None` for any other.
    pub fn parse(name: &str) -> Option<Self> {
        [Role::Attendee, Role::Organizer, Role::Admin]
            .into_iter()
            .find(|role| role.as_str() == name)
    }
}

/// As the read model stores it.
impl TryFrom<String> for Role {
    type Error = String;

    fn try_from(stored: String) -> Result<Self, String> {
        Role::parse(&stored).ok_or_else(|| format!("unknown role {stored:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_reads_back_as_it_was_written() {
        for role in [Role::Attendee, Role::Organizer, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Role::parse("Admin"), None, "names are exact");
    }
}
