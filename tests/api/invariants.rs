//! What must hold of an event after any load, however it went — servers
//! killed, paused or restarted under it: every acknowledged join is there
//! with the status it was told, nothing is overbooked, the waitlist is one
//! place per waiter in order, and the event's counts agree with its roster.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{TestApp, User};

/// Checks the event's roster against the joins acknowledged (user → the
/// answer's `data`) and those refused; nobody left, so the event is full
/// up to its capacity. Returns the roster.
pub async fn assert_roster(
    app: &TestApp,
    owner: &User,
    event: Uuid,
    capacity: i64,
    acknowledged: &HashMap<Uuid, Value>,
    refused: &HashSet<Uuid>,
) -> Vec<Value> {
    let roster = app.attendees(owner, event).await;
    let by_user: HashMap<Uuid, &Value> = roster
        .iter()
        .map(|a| (a["user_id"].as_str().unwrap().parse().unwrap(), a))
        .collect();
    for (user, answer) in acknowledged {
        let row = by_user
            .get(user)
            .unwrap_or_else(|| panic!("acknowledged join of {user} to {event} was lost"));
        assert_eq!(
            row["status"], answer["status"],
            "{user} kept the status it was told"
        );
    }
    for user in refused {
        assert!(
            !by_user.contains_key(user),
            "{user} was refused but joined {event}"
        );
    }
    let active = roster.iter().filter(|a| a["status"] == "active").count() as i64;
    assert!(active <= capacity, "overbooked: {active} > {capacity}");
    assert_eq!(
        active,
        (roster.len() as i64).min(capacity),
        "nobody waits while a place is free"
    );
    let positions: Vec<i64> = roster
        .iter()
        .filter_map(|a| a["position"].as_i64())
        .collect();
    assert_eq!(
        positions,
        (1..=positions.len() as i64).collect::<Vec<_>>(),
        "one waitlist place per waiter, in order"
    );
    let seen = app.event(event).await;
    assert_eq!(seen["active_count"].as_i64(), Some(active));
    assert_eq!(
        seen["waitlist_count"].as_i64(),
        Some(positions.len() as i64)
    );
    roster
}
