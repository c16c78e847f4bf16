//! The checks that make this a correctness tool, not just a load generator:
//! given what each user was told and what the server now lists, did it keep
//! its promises? Pure functions, unit-tested below.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::report::Check;

/// One roster row as the attendees endpoint lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub user: Uuid,
    pub status: String,
    pub position: Option<u64>,
}

/// What the load told and what the server now holds, for one event.
pub struct HotJoinOutcome<'a> {
    pub capacity: u64,
    /// Users answered 2xx, with the status they were told.
    pub acknowledged: &'a HashMap<Uuid, String>,
    /// Users answered with a definite non-2xx status (not timeouts).
    pub refused: &'a HashSet<Uuid>,
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
    let lost: Vec<&Uuid> = o
        .acknowledged
        .iter()
        .filter(|(user, status)| listed.get(*user).is_none_or(|m| &m.status != *status))
        .map(|(user, _)| user)
        .collect();
    checks.push(Check::new(
        "every 2xx join is present with the status it was told",
        lost.is_empty(),
        format!(
            "{} acknowledged, {} missing or changed",
            o.acknowledged.len(),
            lost.len()
        ),
    ));

    let phantom = o.refused.iter().filter(|u| listed.contains_key(*u)).count();
    checks.push(Check::new(
        "no refused join is present",
        phantom == 0,
        format!("{} refused, {phantom} present anyway", o.refused.len()),
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

    fn scenario(capacity: u64, n: usize) -> (HashMap<Uuid, String>, Vec<Member>) {
        let users: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
        let mut acked = HashMap::new();
        let mut roster = Vec::new();
        for (i, u) in users.iter().enumerate() {
            if (i as u64) < capacity {
                acked.insert(*u, "active".to_owned());
                roster.push(member(*u, "active", None));
            } else {
                acked.insert(*u, "waitlisted".to_owned());
                roster.push(member(*u, "waitlisted", Some(i as u64 - capacity + 1)));
            }
        }
        (acked, roster)
    }

    fn run(
        capacity: u64,
        acked: &HashMap<Uuid, String>,
        refused: &HashSet<Uuid>,
        roster: &[Member],
    ) -> Vec<Check> {
        let active = roster.iter().filter(|m| m.status == "active").count() as u64;
        check_hot_join(&HotJoinOutcome {
            capacity,
            acknowledged: acked,
            refused,
            roster,
            active_count: active,
            waitlist_count: roster.len() as u64 - active,
        })
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
        assert!(
            !checks
                .iter()
                .find(|c| c.name.starts_with("every 2xx"))
                .unwrap()
                .passed
        );
    }

    #[test]
    fn a_gap_in_the_waitlist_fails() {
        let (acked, mut roster) = scenario(2, 6);
        roster[3].position = Some(7);
        let checks = run(2, &acked, &HashSet::new(), &roster);
        assert!(
            !checks
                .iter()
                .find(|c| c.name.starts_with("waitlist"))
                .unwrap()
                .passed
        );
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
    fn a_refused_join_that_took_effect_fails() {
        let (acked, mut roster) = scenario(2, 3);
        let sneaky = Uuid::new_v4();
        roster.push(member(sneaky, "waitlisted", Some(2)));
        let checks = run(2, &acked, &HashSet::from([sneaky]), &roster);
        assert!(
            !checks
                .iter()
                .find(|c| c.name.starts_with("no refused"))
                .unwrap()
                .passed
        );
    }
}
