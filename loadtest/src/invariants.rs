//! The checks that make this a correctness tool, not just a load generator:
//! given what each user was told and what the server now lists, did it keep
//! its promises? Pure functions, unit-tested below.

use std::collections::{HashMap, HashSet};

use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::report::Check;

/// One roster row as the attendees endpoint lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub user: Uuid,
    pub status: String,
    pub position: Option<u64>,
}

/// An answer as the checks compare it: the HTTP status and what the body
/// says of the caller's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub code: u16,
    pub status: String,
    pub seats: Option<u64>,
    pub position: Option<u64>,
    /// Whether `offer_expires_at` is set.
    pub offer_expires: bool,
}

impl Answer {
    /// What `body`, answered with `code`, says of the caller's membership.
    pub fn of(code: StatusCode, body: &Value) -> Self {
        let data = &body["data"];
        Self {
            code: code.as_u16(),
            status: data["status"].as_str().unwrap_or_default().to_owned(),
            seats: data["seats"].as_u64(),
            position: data["position"].as_u64(),
            offer_expires: !data["offer_expires_at"].is_null(),
        }
    }

    /// The answer expected where nothing is offered (`offer_expires_at`
    /// unset): no answer to a join, a leave or an offer's answer is one.
    pub fn expected(
        code: StatusCode,
        status: &str,
        seats: Option<usize>,
        position: Option<usize>,
    ) -> Self {
        Self {
            code: code.as_u16(),
            status: status.to_owned(),
            seats: seats.map(|n| n as u64),
            position: position.map(|n| n as u64),
            offer_expires: false,
        }
    }
}

/// What a user was told of their place: by a join's 2xx answer, or by
/// their `me` channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Told {
    pub status: String,
    /// The waitlist place, when waitlisted. With joins only (no leaves, no
    /// offers), a place a join was told is the place listed at the end:
    /// FIFO.
    pub position: Option<u64>,
}

impl From<Answer> for Told {
    fn from(answer: Answer) -> Self {
        Self {
            status: answer.status,
            position: answer.position,
        }
    }
}

/// What the load told and what the server now holds, for one event.
pub struct HotJoinOutcome<'a> {
    pub capacity: u64,
    /// Users answered 2xx, with what they were told.
    pub acknowledged: &'a HashMap<Uuid, Told>,
    /// Users answered with a definite non-2xx status (not timeouts).
    pub refused: &'a HashSet<Uuid>,
    /// Users whose join got no answer (a timeout, a lost connection): it
    /// may or may not have taken effect.
    pub unanswered: &'a HashSet<Uuid>,
    pub roster: &'a [Member],
    pub active_count: u64,
    pub waitlist_count: u64,
}

pub fn check_hot_join(o: &HotJoinOutcome) -> Vec<Check> {
    let mut checks = Vec::new();
    let active: Vec<&Member> = o.roster.iter().filter(|m| m.status == "active").collect();
    let waiting: Vec<&Member> = o
        .roster
        .iter()
        .filter(|m| m.status == "waitlisted")
        .collect();

    let expected_active = (o.acknowledged.len() as u64).min(o.capacity);
    checks.push(Check::new(
        "active == min(acknowledged, capacity)",
        active.len() as u64 == expected_active && active.len() as u64 <= o.capacity,
        format!(
            "{} active, expected {expected_active} (capacity {})",
            active.len(),
            o.capacity
        ),
    ));

    let positions: Vec<u64> = waiting.iter().filter_map(|m| m.position).collect();
    let gapless =
        positions.len() == waiting.len() && positions.iter().copied().eq(1..=waiting.len() as u64);
    checks.push(Check::new(
        "waitlist positions are 1..n without gap or repeat",
        gapless,
        format!("{} waiting", waiting.len()),
    ));

    let listed: HashMap<Uuid, &Member> = o.roster.iter().map(|m| (m.user, m)).collect();
    checks.push(Check::new(
        "each member is listed once",
        listed.len() == o.roster.len(),
        format!("{} rows for {} users", o.roster.len(), listed.len()),
    ));

    let lost = o
        .acknowledged
        .iter()
        .filter(|(user, told)| {
            listed.get(*user).is_none_or(|m| {
                m.status != told.status || told.position.is_some_and(|p| m.position != Some(p))
            })
        })
        .count();
    checks.push(Check::new(
        "every 2xx join is present with the status and waitlist place it was told",
        lost == 0,
        format!(
            "{} acknowledged, {lost} missing, changed or moved",
            o.acknowledged.len()
        ),
    ));

    let phantom = o.refused.iter().filter(|u| listed.contains_key(*u)).count();
    checks.push(Check::new(
        "no refused join is present",
        phantom == 0,
        format!("{} refused, {phantom} present anyway", o.refused.len()),
    ));

    let unsent = o
        .roster
        .iter()
        .filter(|m| {
            !o.acknowledged.contains_key(&m.user)
                && !o.refused.contains(&m.user)
                && !o.unanswered.contains(&m.user)
        })
        .count();
    checks.push(Check::new(
        "nobody is listed whom the load did not send",
        unsent == 0,
        format!(
            "{unsent} listed without a join sent ({} unanswered, which may be either)",
            o.unanswered.len()
        ),
    ));

    checks.push(Check::new(
        "the event's counts match its roster",
        o.active_count == active.len() as u64 && o.waitlist_count == waiting.len() as u64,
        format!(
            "counts {}/{} vs roster {}/{}",
            o.active_count,
            o.waitlist_count,
            active.len(),
            waiting.len()
        ),
    ));
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(user: Uuid, status: &str, position: Option<u64>) -> Member {
        Member {
            user,
            status: status.into(),
            position,
        }
    }

    fn scenario(capacity: u64, n: usize) -> (HashMap<Uuid, Told>, Vec<Member>) {
        let users: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
        let mut acked = HashMap::new();
        let mut roster = Vec::new();
        for (i, u) in users.iter().enumerate() {
            let position = (i as u64 >= capacity).then(|| i as u64 - capacity + 1);
            let status = if position.is_some() {
                "waitlisted"
            } else {
                "active"
            };
            acked.insert(
                *u,
                Told {
                    status: status.into(),
                    position,
                },
            );
            roster.push(member(*u, status, position));
        }
        (acked, roster)
    }

    fn run(
        capacity: u64,
        acked: &HashMap<Uuid, Told>,
        refused: &HashSet<Uuid>,
        roster: &[Member],
    ) -> Vec<Check> {
        run_with(capacity, acked, refused, &HashSet::new(), roster)
    }

    fn run_with(
        capacity: u64,
        acked: &HashMap<Uuid, Told>,
        refused: &HashSet<Uuid>,
        unanswered: &HashSet<Uuid>,
        roster: &[Member],
    ) -> Vec<Check> {
        let active = roster.iter().filter(|m| m.status == "active").count() as u64;
        check_hot_join(&HotJoinOutcome {
            capacity,
            acknowledged: acked,
            refused,
            unanswered,
            roster,
            active_count: active,
            waitlist_count: roster.len() as u64 - active,
        })
    }

    fn passed(checks: &[Check], name: &str) -> bool {
        checks
            .iter()
            .find(|c| c.name.starts_with(name))
            .unwrap_or_else(|| panic!("no check {name}"))
            .passed
    }

    #[test]
    fn a_correct_run_passes_every_check() {
        let (acked, roster) = scenario(5, 12);
        assert!(
            run(5, &acked, &HashSet::new(), &roster)
                .iter()
                .all(|c| c.passed)
        );
    }

    #[test]
    fn a_lost_acknowledged_join_fails() {
        let (acked, mut roster) = scenario(5, 12);
        roster.pop();
        let checks = run(5, &acked, &HashSet::new(), &roster);
        assert!(!passed(&checks, "every 2xx"));
    }

    #[test]
    fn a_gap_in_the_waitlist_fails() {
        let (acked, mut roster) = scenario(2, 6);
        roster[3].position = Some(7);
        let checks = run(2, &acked, &HashSet::new(), &roster);
        assert!(!passed(&checks, "waitlist"));
    }

    #[test]
    fn overbooking_fails() {
        let (acked, mut roster) = scenario(2, 6);
        roster[2].status = "active".into();
        roster[2].position = None;
        let checks = run(2, &acked, &HashSet::new(), &roster);
        assert!(!checks[0].passed);
    }

    #[test]
    fn a_waiter_listed_at_another_place_than_told_fails() {
        let (acked, mut roster) = scenario(2, 6);
        // Two waiters swapped: each gapless, neither where it was told.
        roster.swap(3, 4);
        roster[3].position = Some(2);
        roster[4].position = Some(3);
        let checks = run(2, &acked, &HashSet::new(), &roster);
        assert!(passed(&checks, "waitlist positions"));
        assert!(!passed(&checks, "every 2xx"));
    }

    #[test]
    fn a_join_applied_twice_fails() {
        let (acked, mut roster) = scenario(2, 4);
        let twice = roster[3].clone();
        roster.push(Member {
            position: Some(3),
            ..twice
        });
        let checks = run(2, &acked, &HashSet::new(), &roster);
        assert!(!passed(&checks, "each member is listed once"));
    }

    #[test]
    fn a_member_nobody_sent_fails_and_an_unanswered_one_may_be_either() {
        let (acked, mut roster) = scenario(2, 3);
        let unanswered = Uuid::new_v4();
        roster.push(member(unanswered, "waitlisted", Some(2)));
        let checks = run_with(
            2,
            &acked,
            &HashSet::new(),
            &HashSet::from([unanswered]),
            &roster,
        );
        assert!(
            checks.iter().all(|c| c.passed),
            "an unanswered join may have taken effect"
        );
        let checks = run(2, &acked, &HashSet::new(), &roster);
        assert!(!passed(&checks, "nobody is listed"));
    }

    #[test]
    fn a_refused_join_that_took_effect_fails() {
        let (acked, mut roster) = scenario(2, 3);
        let sneaky = Uuid::new_v4();
        roster.push(member(sneaky, "waitlisted", Some(2)));
        let checks = run(2, &acked, &HashSet::from([sneaky]), &roster);
        assert!(!passed(&checks, "no refused"));
    }
}
