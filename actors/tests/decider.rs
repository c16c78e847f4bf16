//! Given/when/then tests of the event decider, and property tests over random
//! command sequences.

mod support;

use chrono::Duration;
use proptest::prelude::*;
use support::*;
use turnout_actors::domain::*;

#[test]
fn join_is_active_until_full_then_waitlisted_in_order() {
    let (state, _) = given(
        &[
            published(2),
            vec![join(1, 2), join(2, 3), join(3, 4), join(4, 5)],
        ]
        .concat(),
    );
    let state = state.unwrap();
    assert!(matches!(
        state.membership(user(1)),
        Some(Membership::Active { .. })
    ));
    assert!(matches!(
        state.membership(user(2)),
        Some(Membership::Active { .. })
    ));
    assert!(matches!(
        state.membership(user(3)),
        Some(Membership::Waitlisted { position: 1, .. })
    ));
    assert!(matches!(
        state.membership(user(4)),
        Some(Membership::Waitlisted { position: 2, .. })
    ));
}

#[test]
fn leaving_promotes_the_earliest_waiter_in_the_same_step() {
    let (state, _) = given(&[published(1), vec![join(1, 2), join(2, 3), join(3, 4)]].concat());
    let events = decide(state.as_ref(), &leave(1, 5)).unwrap();
    assert_eq!(events.len(), 2);
    assert!(matches!(events[0], DomainEvent::Left { user: u, .. } if u == user(1)));
    assert!(
        matches!(events[1], DomainEvent::Promoted { user: u, joined_at, .. } if u == user(2) && joined_at == t(3))
    );
}

#[test]
fn leaving_the_waitlist_promotes_nobody_and_closes_the_gap() {
    let (state, _) = given(
        &[
            published(1),
            vec![join(1, 2), join(2, 3), join(3, 4), leave(2, 5)],
        ]
        .concat(),
    );
    let state = state.unwrap();
    assert_eq!(state.active.len(), 1);
    assert!(matches!(
        state.membership(user(3)),
        Some(Membership::Waitlisted { position: 1, .. })
    ));
}

#[test]
fn capacity_raise_promotes_waiters_in_order_and_a_cut_below_active_is_refused() {
    let (state, _) = given(
        &[
            published(1),
            vec![join(1, 2), join(2, 3), join(3, 4), join(4, 5)],
        ]
        .concat(),
    );
    let raise = Command::Update {
        by: user(OWNER),
        patch: DetailsPatch::default(),
        capacity: Some(Capacity::parse(3).unwrap()),
        policy: PolicyPatch::default(),
        at: t(6),
    };
    let events = decide(state.as_ref(), &raise).unwrap();
    let promoted: Vec<UserId> = events
        .iter()
        .filter_map(|e| match e {
            DomainEvent::Promoted { user, .. } => Some(*user),
            _ => None,
        })
        .collect();
    assert_eq!(promoted, vec![user(2), user(3)]);

    let state = events.iter().fold(state, evolve);
    let cut = Command::Update {
        by: user(OWNER),
        patch: DetailsPatch::default(),
        capacity: Some(Capacity::parse(2).unwrap()),
        policy: PolicyPatch::default(),
        at: t(7),
    };
    assert_eq!(
        decide(state.as_ref(), &cut),
        Err(Rejection::CapacityBelowActive {
            requested: 2,
            active: 3
        })
    );
}

#[test]
fn the_owner_cannot_join() {
    let (state, _) = given(&published(5));
    assert_eq!(
        decide(state.as_ref(), &join(OWNER, 2)),
        Err(Rejection::OwnerCannotJoin)
    );
}

#[test]
fn joining_again_changes_nothing() {
    let (state, _) = given(&[published(5), vec![join(1, 2)]].concat());
    assert_eq!(decide(state.as_ref(), &join(1, 3)), Ok(vec![]));
}

#[test]
fn a_draft_is_not_found_by_anyone_but_its_owner() {
    let (draft, _) = given(&[create(5)]);
    let stranger = user(7);
    for command in [
        Command::Publish {
            by: stranger,
            at: t(1),
        },
        Command::Cancel {
            by: stranger,
            at: t(1),
        },
        Command::Update {
            by: stranger,
            patch: DetailsPatch::default(),
            capacity: None,
            policy: PolicyPatch::default(),
            at: t(1),
        },
        join(7, 1),
        leave(7, 1),
    ] {
        assert_eq!(
            decide(draft.as_ref(), &command),
            Err(Rejection::NotFound),
            "{command:?}"
        );
    }
    let publish = Command::Publish {
        by: user(OWNER),
        at: t(1),
    };
    assert!(
        decide(draft.as_ref(), &publish).is_ok(),
        "the owner still can"
    );
}

#[test]
fn joins_need_a_published_event_that_has_not_started() {
    let (draft, _) = given(&[create(5)]);
    assert_eq!(
        decide(draft.as_ref(), &join(1, 2)),
        Err(Rejection::NotFound),
        "a draft is not found by anyone but its owner"
    );

    let (open, _) = given(&published(5));
    assert_eq!(
        decide(open.as_ref(), &join(1, START)),
        Err(Rejection::Started)
    );

    let (cancelled, _) = given(
        &[
            published(5),
            vec![Command::Cancel {
                by: user(OWNER),
                at: t(2),
            }],
        ]
        .concat(),
    );
    assert_eq!(
        decide(cancelled.as_ref(), &join(1, 3)),
        Err(Rejection::Cancelled)
    );
}

#[test]
fn cancelling_ends_every_membership() {
    let (state, _) = given(
        &[
            published(1),
            vec![
                join(1, 2),
                join(2, 3),
                Command::Cancel {
                    by: user(OWNER),
                    at: t(4),
                },
            ],
        ]
        .concat(),
    );
    let state = state.unwrap();
    assert_eq!(state.lifecycle, Lifecycle::Cancelled);
    assert!(state.active.is_empty() && state.waitlist.is_empty());
}

#[test]
fn only_the_owner_manages_the_event() {
    let (state, _) = given(&published(5));
    assert_eq!(
        decide(
            state.as_ref(),
            &Command::Cancel {
                by: user(1),
                at: t(1)
            }
        ),
        Err(Rejection::NotOwner)
    );
}

#[test]
fn an_event_starts_within_five_years() {
    let mut far = details();
    far.starts_at = t(0) + MAX_LEAD + Duration::minutes(1);
    let create_far = Command::Create {
        id: EventId::new(),
        owner: user(OWNER),
        details: far,
        capacity: Capacity::parse(5).unwrap(),
        policy: WaitlistPolicy::default(),
        at: t(0),
    };
    assert_eq!(
        decide(None, &create_far),
        Err(Rejection::InvalidSchedule {
            problem: ScheduleProblem::StartsTooFarAhead
        })
    );
}

#[test]
fn an_event_must_start_in_the_future_and_end_after_it_starts() {
    let mut past = details();
    past.starts_at = t(-1);
    let create_past = Command::Create {
        id: EventId::new(),
        owner: user(OWNER),
        details: past,
        capacity: Capacity::parse(1).unwrap(),
        policy: WaitlistPolicy::default(),
        at: t(0),
    };
    assert!(matches!(
        decide(None, &create_past),
        Err(Rejection::InvalidSchedule {
            problem: ScheduleProblem::StartsInThePast
        })
    ));
}

#[test]
fn a_started_event_cannot_be_moved_to_start_again() {
    // Given an event that started with someone waiting beside a free place
    // (an offer ran out after the start, and none is made once it started),
    let (state, _) = given(
        &[
            published_with(2, offers(60, WaitlistFill::FirstFit)),
            vec![
                join(1, 2),
                join(2, 3),
                join(3, 4),
                join(4, 5),
                leave(1, START - 10),
                expire(START + 51),
            ],
        ]
        .concat(),
    );
    let state = state.unwrap();
    assert_eq!(state.free_places(), 1);
    assert_eq!(state.waitlist.len(), 1);
    // when the owner moves its start to tomorrow,
    let patch = DetailsPatch {
        starts_at: Some(t(START + 24 * 60)),
        ..DetailsPatch::default()
    };
    let reschedule = Command::Update {
        by: user(OWNER),
        patch,
        capacity: None,
        policy: PolicyPatch::default(),
        at: t(START + 52),
    };
    // then it is refused: reopened, a newcomer would pass the waiter.
    assert_eq!(decide(Some(&state), &reschedule), Err(Rejection::Started));

    // Its end may still move, after its start and not before it.
    let end_at = |minute| Command::Update {
        by: user(OWNER),
        patch: DetailsPatch {
            ends_at: Some(Some(t(minute))),
            ..DetailsPatch::default()
        },
        capacity: None,
        policy: PolicyPatch::default(),
        at: t(START + 52),
    };
    assert!(matches!(
        decide(Some(&state), &end_at(START + 300))
            .unwrap()
            .as_slice(),
        [DomainEvent::DetailsChanged { .. }]
    ));
    assert_eq!(
        decide(Some(&state), &end_at(START - 1)),
        Err(Rejection::InvalidSchedule {
            problem: ScheduleProblem::EndsBeforeItStarts
        })
    );
}

#[test]
fn commands_on_a_missing_event_are_not_found() {
    assert_eq!(decide(None, &join(1, 1)), Err(Rejection::NotFound));
}

#[test]
fn stored_events_round_trip_and_old_shapes_upcast() {
    let (_, events) = given(&[published(3), vec![join(1, 2)]].concat());
    for e in &events {
        assert_eq!(&StoredEvent::encode(e).decode().unwrap(), e);
        let text: serde_json::Value = serde_json::from_str(&StoredEvent::encode_text(e)).unwrap();
        assert_eq!(
            text,
            StoredEvent::encode(e).payload,
            "the log's text is the encoded value"
        );
    }

    // Written by an earlier build, when tags were one comma-separated string.
    let v1: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/created_v1.json")).unwrap();
    let stored = StoredEvent {
        event_type: "created".into(),
        schema_version: 1,
        payload: v1,
    };
    let DomainEvent::Created { details, .. } = stored.decode().unwrap() else {
        panic!("a created fact decodes as Created");
    };
    let tags: Vec<&str> = details.tags.iter().map(Tag::as_str).collect();
    assert_eq!(tags, ["jazz", "late-night"]);
}

#[test]
fn a_stored_fact_from_a_newer_build_is_refused_not_misread() {
    let stored = StoredEvent {
        event_type: "joined".into(),
        schema_version: 99,
        payload: serde_json::json!({}),
    };
    assert!(matches!(
        stored.decode(),
        Err(DecodeError::FromTheFuture { .. })
    ));
}

// ---- properties ----

#[derive(Debug, Clone)]
enum Op {
    Join(u8),
    Leave(u8),
    Capacity(u8),
    Cancel,
}

/// Joins, leaves and capacity changes; a cancellation, after which every
/// command is refused, only at the end (`ops`): drawn among the others it
/// ended most sequences within a dozen steps.
fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..30).prop_map(Op::Join),
        3 => (0u8..30).prop_map(Op::Leave),
        1 => (1u8..12).prop_map(Op::Capacity),
    ]
}

/// Up to 120 operations; in one sequence of four, a cancellation near the
/// end, and a few commands after it (all refused).
fn ops() -> impl Strategy<Value = Vec<Op>> {
    (
        prop::collection::vec(op(), 0..120),
        prop::bool::weighted(0.25),
        prop::collection::vec(op(), 0..5),
    )
        .prop_map(|(mut ops, cancelled, after)| {
            if cancelled {
                ops.push(Op::Cancel);
                ops.extend(after);
            }
            ops
        })
}

fn to_command(op: &Op, minute: i64) -> Command {
    match *op {
        Op::Join(n) => join(n as u128, minute),
        Op::Leave(n) => leave(n as u128, minute),
        Op::Capacity(c) => Command::Update {
            by: user(OWNER),
            patch: DetailsPatch::default(),
            capacity: Some(Capacity::parse(c as i64).unwrap()),
            policy: PolicyPatch::default(),
            at: t(minute),
        },
        Op::Cancel => Command::Cancel {
            by: user(OWNER),
            at: t(minute),
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn invariants_hold_over_any_command_sequence(capacity in 1i64..8, ops in ops()) {
        let (mut state, mut history) = given(&published(capacity));
        for (i, op) in ops.iter().enumerate() {
            let command = to_command(op, 2 + i as i64);
            let before = state.clone();
            let Ok(events) = decide(state.as_ref(), &command) else { continue };

            // Promotion is FIFO: each promoted user is the front waiter at that moment.
            let mut waitlist: std::collections::VecDeque<Waiter> = before.as_ref().unwrap().waitlist.iter().copied().collect();
            for e in &events {
                match e {
                    DomainEvent::Promoted { user, .. } => {
                        prop_assert_eq!(waitlist.pop_front().map(|w| w.user), Some(*user));
                    }
                    DomainEvent::Left { user, .. } => waitlist.retain(|w| w.user != *user),
                    _ => {}
                }
            }

            state = events.iter().fold(state, evolve);
            history.extend(events);
            let s = state.as_ref().unwrap();

            // Never overbooked.
            prop_assert!(s.active.len() <= s.capacity.get());
            // Nobody waits while a place is free (work-conserving).
            prop_assert!(s.waitlist.is_empty() || s.free_places() == 0 || s.lifecycle == Lifecycle::Cancelled);
            // Positions are exactly 1..n.
            for (i, w) in s.waitlist.iter().enumerate() {
                let is_at_position = matches!(s.membership(w.user), Some(Membership::Waitlisted { position, .. }) if position == i + 1);
                prop_assert!(is_at_position);
                prop_assert!(!s.active.contains_key(&w.user));
            }
            // The version counts the facts.
            prop_assert_eq!(s.version as usize, history.len());
        }
        // Folding the whole history again rebuilds exactly the live state,
        // also through the stored (encoded) form.
        let rebuilt = history.iter().fold(None, evolve);
        prop_assert_eq!(&rebuilt, &state);
        let decoded = history.iter().map(|e| StoredEvent::encode(e).decode().unwrap()).fold(None, |s, e| evolve(s, &e));
        prop_assert_eq!(&decoded, &state);
    }
}
