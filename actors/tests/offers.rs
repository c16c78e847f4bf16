//! Given/when/then proofs of the grown-up waitlist — parties, offers that
//! expire, strict and first-fit order — and property tests over random
//! sequences of everything a member, the owner and the clock can do.

mod support;

use std::collections::HashMap;

use proptest::prelude::*;
use support::*;
use turnout_actors::domain::*;

const HOLD: i64 = 30;

/// Capacity 1 in offer mode: user 1 active, users 2 and 3 waiting.
fn full_offer_event() -> Vec<Command> {
    [
        published_with(1, offers(HOLD, WaitlistFill::Strict)),
        vec![join(1, 2), join(2, 3), join(3, 4)],
    ]
    .concat()
}

fn state_after(commands: &[Command]) -> EventState {
    given(commands).0.expect("the event exists")
}

#[test]
fn in_offer_mode_a_freed_place_is_offered_to_the_first_waiter_and_held() {
    let state = state_after(&full_offer_event());

    let facts = decide(Some(&state), &leave(1, 10)).unwrap();

    assert!(matches!(facts[0], DomainEvent::Left { user: u, .. } if u == user(1)));
    assert_eq!(
        facts[1],
        DomainEvent::Offered {
            user: user(2),
            joined_at: t(3),
            seats: Seats::default(),
            expires_at: t(10 + HOLD),
            because: Some(Freed::Left),
            at: t(10),
        }
    );
    let state = facts.iter().fold(Some(state), evolve).unwrap();
    assert!(matches!(
        state.membership(user(2)),
        Some(Membership::Offered { expires_at, .. }) if expires_at == t(10 + HOLD)
    ));
    assert_eq!(state.free_places(), 0, "the offered place is held");
    assert!(matches!(
        state.membership(user(3)),
        Some(Membership::Waitlisted { position: 1, .. })
    ));
    let newcomer = decide(Some(&state), &join(4, 11)).unwrap();
    assert!(
        matches!(
            newcomer[0],
            DomainEvent::Joined {
                status: JoinedAs::Waitlisted,
                ..
            }
        ),
        "a newcomer does not take a held place"
    );
}

#[test]
fn accepting_an_offer_makes_the_party_active_and_accepting_again_changes_nothing() {
    let state = state_after(&[full_offer_event(), vec![leave(1, 10)]].concat());

    let facts = decide(Some(&state), &accept(2, 11)).unwrap();

    assert!(
        matches!(facts[..], [DomainEvent::OfferAccepted { user: u, joined_at, .. }] if u == user(2) && joined_at == t(3))
    );
    let state = facts.iter().fold(Some(state), evolve).unwrap();
    assert!(matches!(
        state.membership(user(2)),
        Some(Membership::Active { .. })
    ));
    assert_eq!(state.offers.len(), 0);
    assert_eq!(decide(Some(&state), &accept(2, 12)), Ok(vec![]));
}

#[test]
fn only_the_party_holding_an_offer_may_accept_or_decline_it() {
    let state = state_after(&[full_offer_event(), vec![leave(1, 10)]].concat());

    for command in [accept(3, 11), decline(3, 11), accept(9, 11), decline(9, 11)] {
        assert_eq!(
            decide(Some(&state), &command),
            Err(Rejection::NoOffer),
            "{command:?}"
        );
    }
}

#[test]
fn declining_passes_the_offer_on_at_once_and_the_party_is_out() {
    let state = state_after(&[full_offer_event(), vec![leave(1, 10)]].concat());

    let facts = decide(Some(&state), &decline(2, 11)).unwrap();

    assert!(matches!(facts[0], DomainEvent::OfferDeclined { user: u, .. } if u == user(2)));
    assert_eq!(served(&facts), vec![user(3)]);
    let state = facts.iter().fold(Some(state), evolve).unwrap();
    assert_eq!(state.membership(user(2)), None);
    assert_eq!(
        decide(Some(&state), &decline(2, 12)),
        Err(Rejection::NoOffer)
    );
}

/// A request taken by another node is decided on the clock of the node
/// that holds the event, whichever way the taker's clock is off: an
/// acceptance timed before the deadline by a lagging clock, but decided
/// after it here, is too late; one timed after the deadline by a clock
/// running ahead, but decided before it here, is in time.
#[test]
fn an_acceptance_is_judged_by_the_deciding_nodes_clock() {
    let state = state_after(&[full_offer_event(), vec![leave(1, 10)]].concat());
    let lagging = accept(2, 10 + HOLD - 1);
    assert!(
        decide(Some(&state), &lagging).is_ok(),
        "in time by its own clock"
    );
    let decided_here = lagging.timed_at(t(10 + HOLD));
    assert_eq!(decided_here.at(), t(10 + HOLD));
    assert_eq!(decide(Some(&state), &decided_here), Err(Rejection::NoOffer));

    let ahead = accept(2, 10 + HOLD + 60);
    assert_eq!(
        decide(Some(&state), &ahead),
        Err(Rejection::NoOffer),
        "too late by its own clock"
    );
    let decided_here = ahead.timed_at(t(10 + HOLD - 1));
    assert!(
        decide(Some(&state), &decided_here).is_ok(),
        "in time by the deciding clock"
    );
}

#[test]
fn an_offer_not_taken_in_time_expires_and_passes_on() {
    let state = state_after(&[full_offer_event(), vec![leave(1, 10)]].concat());

    assert_eq!(
        decide(Some(&state), &expire(10 + HOLD - 1)),
        Ok(vec![]),
        "not yet"
    );
    let facts = decide(Some(&state), &expire(10 + HOLD)).unwrap();

    assert!(
        matches!(facts[0], DomainEvent::OfferExpired { user: u, at, .. } if u == user(2) && at == t(10 + HOLD))
    );
    assert_eq!(served(&facts), vec![user(3)]);
    assert_eq!(
        decide(Some(&state), &accept(2, 10 + HOLD)),
        Err(Rejection::NoOffer),
        "an offer past its deadline cannot be accepted, even before the clock has expired it"
    );
    let state = facts.iter().fold(Some(state), evolve).unwrap();
    assert_eq!(state.membership(user(2)), None, "the party is out");
    let back = decide(Some(&state), &join(2, 10 + HOLD + 1)).unwrap();
    assert!(
        matches!(
            back[..],
            [DomainEvent::Joined {
                status: JoinedAs::Waitlisted,
                ..
            }]
        ),
        "it may join again, at the back"
    );
}

#[test]
fn leaving_with_an_offer_in_hand_passes_it_on() {
    let state = state_after(&[full_offer_event(), vec![leave(1, 10)]].concat());

    let facts = decide(Some(&state), &leave(2, 11)).unwrap();

    assert!(matches!(facts[0], DomainEvent::Left { user: u, .. } if u == user(2)));
    assert_eq!(served(&facts), vec![user(3)]);
}

#[test]
fn capacity_counts_seats_and_a_party_joins_as_one() {
    let state = state_after(
        &[
            published_with(5, parties(WaitlistFill::Strict)),
            vec![join_party(1, 3, 2)],
        ]
        .concat(),
    );
    assert_eq!(state.free_places(), 2);
    assert!(matches!(
        state.membership(user(1)),
        Some(Membership::Active { seats, .. }) if seats.get() == 3
    ));

    let facts = decide(Some(&state), &join_party(2, 3, 3)).unwrap();
    assert!(
        matches!(
            facts[..],
            [DomainEvent::Joined {
                status: JoinedAs::Waitlisted,
                ..
            }]
        ),
        "three seats do not fit in two"
    );
}

#[test]
fn a_party_larger_than_the_event_takes_is_refused() {
    let state = state_after(&published_with(
        4,
        WaitlistPolicy {
            max_party: Seats::parse(3).unwrap(),
            ..WaitlistPolicy::default()
        },
    ));
    assert_eq!(
        decide(Some(&state), &join_party(1, 4, 2)),
        Err(Rejection::PartyTooLarge { seats: 4, max: 3 })
    );
    let small = state_after(&published_with(2, parties(WaitlistFill::Strict)));
    assert_eq!(
        decide(Some(&small), &join_party(1, 3, 2)),
        Err(Rejection::PartyTooLarge { seats: 3, max: 2 }),
        "nor more seats than the whole event has"
    );
}

/// Capacity 4: user 1 active with 3 seats; user 2 waits for 3, user 3 for 1.
fn blocked_front(fill: WaitlistFill) -> Vec<Command> {
    [
        published_with(4, parties(fill)),
        vec![
            join_party(1, 3, 2),
            join_party(2, 3, 3),
            join_party(3, 1, 4),
        ],
    ]
    .concat()
}

#[test]
fn in_strict_order_nobody_is_served_before_a_party_waiting_ahead() {
    let state = state_after(&blocked_front(WaitlistFill::Strict));
    assert!(
        matches!(
            state.membership(user(3)),
            Some(Membership::Waitlisted { position: 2, .. })
        ),
        "one free place, but the party ahead waits for three"
    );

    let facts = decide(Some(&state), &leave(1, 5)).unwrap();

    assert_eq!(
        served(&facts),
        vec![user(2), user(3)],
        "the front first, then whoever still fits"
    );
}

#[test]
fn in_first_fit_order_a_smaller_party_behind_takes_what_the_first_cannot_use() {
    let state = state_after(&blocked_front(WaitlistFill::FirstFit));
    assert!(
        matches!(state.membership(user(3)), Some(Membership::Active { .. })),
        "the free place went to the party that fits"
    );
    assert!(matches!(
        state.membership(user(2)),
        Some(Membership::Waitlisted { position: 1, .. })
    ));
}

#[test]
fn switching_to_first_fit_serves_the_parties_that_fit_now() {
    let state = state_after(&blocked_front(WaitlistFill::Strict));

    let facts = decide(
        Some(&state),
        &set_policy(
            PolicyPatch {
                fill: Some(WaitlistFill::FirstFit),
                ..PolicyPatch::default()
            },
            5,
        ),
    )
    .unwrap();

    assert!(
        matches!(facts[0], DomainEvent::WaitlistChanged { policy, .. } if policy.fill == WaitlistFill::FirstFit)
    );
    assert_eq!(served(&facts), vec![user(3)]);
}

#[test]
fn a_blocking_party_leaving_the_waitlist_lets_those_behind_it_in() {
    let state = state_after(&blocked_front(WaitlistFill::Strict));

    let facts = decide(Some(&state), &leave(2, 5)).unwrap();

    assert!(matches!(facts[0], DomainEvent::Left { user: u, .. } if u == user(2)));
    assert_eq!(served(&facts), vec![user(3)]);
}

#[test]
fn a_capacity_raise_in_offer_mode_makes_offers_in_order_and_a_cut_below_held_seats_is_refused() {
    let state = state_after(&full_offer_event());

    let facts = decide(Some(&state), &set_capacity(3, 10)).unwrap();
    assert_eq!(served(&facts), vec![user(2), user(3)]);
    assert!(
        facts
            .iter()
            .skip(1)
            .all(|f| matches!(f, DomainEvent::Offered { .. }))
    );

    let state = facts.iter().fold(Some(state), evolve).unwrap();
    assert_eq!(
        decide(Some(&state), &set_capacity(2, 11)),
        Err(Rejection::CapacityBelowActive {
            requested: 2,
            active: 3
        }),
        "offered seats are taken seats"
    );
}

#[test]
fn capacity_may_not_be_cut_below_a_waiting_party() {
    let state = state_after(
        &[
            published_with(4, parties(WaitlistFill::Strict)),
            vec![join_party(1, 1, 2), join_party(2, 4, 3)],
        ]
        .concat(),
    );

    assert_eq!(
        decide(Some(&state), &set_capacity(3, 4)),
        Err(Rejection::CapacityBelowParty {
            requested: 3,
            seats: 4
        }),
        "the party of four could never be served, nor anyone behind it"
    );
}

#[test]
fn no_offer_is_made_once_the_event_has_started() {
    let state = state_after(&[full_offer_event(), vec![leave(1, START - HOLD)]].concat());

    let facts = decide(Some(&state), &expire(START)).unwrap();

    assert!(matches!(facts[..], [DomainEvent::OfferExpired { .. }]));
    assert_eq!(
        decide(Some(&state), &accept(2, START)),
        Err(Rejection::Started)
    );
}

#[test]
fn cancelling_ends_offers_too() {
    let state = state_after(
        &[
            full_offer_event(),
            vec![
                leave(1, 10),
                Command::Cancel {
                    by: user(OWNER),
                    at: t(11),
                },
            ],
        ]
        .concat(),
    );
    assert!(state.offers.is_empty() && state.waitlist.is_empty());
    assert_eq!(state.next_deadline(), None);
}

#[test]
fn the_event_clock_knows_its_next_deadline() {
    let state = state_after(&[full_offer_event(), vec![leave(1, 10)]].concat());
    assert_eq!(state.next_deadline(), Some(t(10 + HOLD)));
}

#[test]
fn a_log_written_before_parties_and_offers_loads_as_it_was() {
    #[derive(serde::Deserialize)]
    struct Row {
        event_type: String,
        schema_version: i32,
        payload: serde_json::Value,
    }
    let rows: Vec<Row> =
        serde_json::from_str(include_str!("fixtures/log_before_offers.json")).unwrap();
    let facts: Vec<DomainEvent> = rows
        .into_iter()
        .map(|r| {
            StoredEvent {
                event_type: r.event_type,
                schema_version: r.schema_version,
                payload: r.payload,
            }
            .decode()
            .unwrap()
        })
        .collect();
    let state = facts.iter().fold(None, evolve).unwrap();

    assert_eq!(state.policy, WaitlistPolicy::default());
    assert_eq!(state.version, 8);
    assert_eq!(state.active.len(), 2);
    assert_eq!(state.active.seats(), 2, "everyone came alone");
    assert_eq!(state.waitlist.len(), 1);
    assert_eq!(state.waitlist.seats(), 1);

    // And a snapshot taken then, of the same state, reads as the fold does.
    let snapshot: EventState =
        serde_json::from_str(include_str!("fixtures/snapshot_before_offers.json")).unwrap();
    assert_eq!(snapshot, state);
}

// ---- properties ----

#[derive(Debug, Clone)]
enum Op {
    Join(u8, u8),
    Leave(u8),
    Accept(u8),
    Decline(u8),
    Capacity(u8),
    /// Minutes pass; the clock expires what ran out.
    Wait(u8),
    ToggleFill,
    ToggleMode,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..20, 1u8..4).prop_map(|(u, s)| Op::Join(u, s)),
        3 => (0u8..20).prop_map(Op::Leave),
        3 => (0u8..20).prop_map(Op::Accept),
        1 => (0u8..20).prop_map(Op::Decline),
        1 => (1u8..12).prop_map(Op::Capacity),
        2 => (1u8..40).prop_map(Op::Wait),
        1 => Just(Op::ToggleFill),
        1 => Just(Op::ToggleMode),
    ]
}

fn to_command(op: &Op, minute: i64, state: &EventState) -> Command {
    match *op {
        Op::Join(n, seats) => join_party(n as u128, seats as i64, minute),
        Op::Leave(n) => leave(n as u128, minute),
        Op::Accept(n) => accept(n as u128, minute),
        Op::Decline(n) => decline(n as u128, minute),
        Op::Capacity(c) => set_capacity(c as i64, minute),
        Op::Wait(_) => expire(minute),
        Op::ToggleFill => set_policy(
            PolicyPatch {
                fill: Some(match state.policy.fill {
                    WaitlistFill::Strict => WaitlistFill::FirstFit,
                    WaitlistFill::FirstFit => WaitlistFill::Strict,
                }),
                ..PolicyPatch::default()
            },
            minute,
        ),
        Op::ToggleMode => set_policy(
            PolicyPatch {
                mode: Some(match state.policy.mode {
                    WaitlistMode::Auto => WaitlistMode::Offer,
                    WaitlistMode::Offer => WaitlistMode::Auto,
                }),
                ..PolicyPatch::default()
            },
            minute,
        ),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn seats_order_and_history_hold_over_any_sequence(
        capacity in 1i64..8,
        offer_mode in any::<bool>(),
        first_fit in any::<bool>(),
        ops in prop::collection::vec(op(), 0..100),
        crossing_the_start in any::<bool>(),
    ) {
        let fill = if first_fit { WaitlistFill::FirstFit } else { WaitlistFill::Strict };
        let policy = if offer_mode { offers(HOLD, fill) } else { parties(fill) };
        let (mut state, mut history) = given(&published_with(capacity, policy));
        // Two hours before the start, the ops run past it.
        let mut minute = if crossing_the_start { START - 120 } else { 2 };
        for op in &ops {
            minute += match op { Op::Wait(m) => *m as i64, _ => 1 };
            let before = state.clone().unwrap();
            let command = to_command(op, minute, &before);
            let Ok(facts) = decide(Some(&before), &command) else { continue };

            // Order: whoever is served was waiting, ahead of everyone left
            // waiting; in strict order nobody is served past a party that
            // still waits ahead of them.
            let position: HashMap<UserId, usize> =
                before.waitlist.iter().enumerate().map(|(i, w)| (w.user, i)).collect();
            let served = served(&facts);
            if minute >= START {
                prop_assert!(served.is_empty(), "served after the start: {:?}", facts);
            }
            let after = facts.iter().fold(Some(before.clone()), evolve).unwrap();
            for s in &served {
                prop_assert!(position.contains_key(s), "only waiting parties are served");
                if after.policy.fill == WaitlistFill::Strict {
                    for w in after.waitlist.iter() {
                        if let Some(&p) = position.get(&w.user) {
                            prop_assert!(position[s] < p, "served past a party waiting ahead");
                        }
                    }
                }
            }
            if after.policy.fill == WaitlistFill::Strict
                && let Some(DomainEvent::Joined { status: JoinedAs::Active, .. }) = facts.first()
            {
                prop_assert!(before.waitlist.is_empty(), "a newcomer went ahead of a waiting party");
            }
            // Each waiting party's new place follows from the moves alone.
            let moves = waitlist_moves(&before, &facts);
            for w in before.waitlist.iter() {
                let mut place = Some(position[&w.user] as u32 + 1);
                for m in &moves {
                    place = place.and_then(|p| m.shift(p));
                }
                let now = match after.membership(w.user) {
                    Some(Membership::Waitlisted { position, .. }) => Some(position as u32),
                    _ => None,
                };
                if after.lifecycle != Lifecycle::Cancelled {
                    prop_assert_eq!(place, now, "{:?} after {:?}", w.user, moves);
                }
            }
            for m in &moves {
                if let WaitlistMove::Entered { user, position } = m {
                    let entered = matches!(after.membership(*user), Some(Membership::Waitlisted { position: p, .. }) if p as u32 == *position);
                    prop_assert!(entered);
                }
            }
            // The clock: nothing due is left once it has run.
            if let Command::ExpireOffers { at } = command {
                prop_assert!(after.offers.iter().all(|(_, o)| o.expires_at > at));
            }

            state = Some(after);
            history.extend(facts);
            let s = state.as_ref().unwrap();

            // Seats: active + offered ≤ capacity, always.
            prop_assert!(s.active.seats() + s.offers.seats() <= s.capacity.get());
            // Counts kept on the side agree with the parties held.
            prop_assert_eq!(s.active.seats(), s.active.iter().map(|(_, a)| a.seats.get()).sum::<usize>());
            prop_assert_eq!(s.waitlist.seats(), s.waitlist.iter().map(|w| w.seats.get()).sum::<usize>());
            // Work-conserving before the start: no waiting party fits the
            // places free (in strict order, the front one does not).
            let free = s.free_places();
            if minute < START {
                match s.policy.fill {
                    WaitlistFill::Strict => prop_assert!(s.waitlist.front().is_none_or(|w| w.seats.get() > free)),
                    WaitlistFill::FirstFit => prop_assert!(s.waitlist.iter().all(|w| w.seats.get() > free)),
                }
            }
            // Nobody is in two places at once.
            for (u, _) in s.active.iter() {
                prop_assert!(!s.offers.contains_key(u) && !s.waitlist.contains(*u));
            }
            for (u, _) in s.offers.iter() {
                prop_assert!(!s.waitlist.contains(*u));
            }
            prop_assert_eq!(s.version as usize, history.len());
        }
        // fold(facts) = live state, also through the stored form.
        let rebuilt = history.iter().fold(None, evolve);
        prop_assert_eq!(&rebuilt, &state);
        let decoded = history.iter().map(|e| StoredEvent::encode(e).decode().unwrap()).fold(None, |s, e| evolve(s, &e));
        prop_assert_eq!(&decoded, &state);
        // And through a snapshot.
        let snapshot: Option<EventState> = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        prop_assert_eq!(&snapshot, &state);
    }
}
