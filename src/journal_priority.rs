//! The journal's thread runs ahead of the server's other threads.
//!
//! On a hot event the journal is the one serial stage: every join waits for
//! its commit, and what arrives during a commit is the next batch. Under the
//! scheduler's fair shares its thread waited for a core behind the HTTP
//! workers, whose work only lengthens the journal's queue. Ten nice steps
//! ahead of the rest of the process, it took the hot event from ~31,000 to
//! ~35,500 joins/s under wrk; the event actors' threads gained nothing from
//! the same (docs/BENCHMARKS.md, "The journal runs first").
//!
//! Linux keeps a nice value per thread, so only the journal's moves. Below
//! the process's own value takes `CAP_SYS_NICE` or an `RLIMIT_NICE` that
//! allows it (docs/OPERATIONS.md, "The journal's priority"); without either
//! the thread stays where it is and the server says so at start. The thread
//! is named `turnout-journal` either way, for `top -H` and `ps -L`.

use actix::ArbiterHandle;
use serde::Deserialize;

/// How many nice steps the journal's thread runs ahead of the process: 0
/// (not ahead) to 39 (the whole range, −20 against 19).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u8")]
pub struct PriorityBoost(u8);

impl PriorityBoost {
    pub const NONE: Self = Self(0);
}

impl TryFrom<u8> for PriorityBoost {
    type Error = String;

    fn try_from(steps: u8) -> Result<Self, Self::Error> {
        if steps <= 39 {
            Ok(Self(steps))
        } else {
            Err(format!(
                "a priority boost is 0 to 39 nice steps (the whole range), not {steps}"
            ))
        }
    }
}

/// What became of the boost on the thread that asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boosted {
    /// The thread now runs at this nice value.
    To(i32),
    /// Not allowed (no `CAP_SYS_NICE`, `RLIMIT_NICE` too low, or a system
    /// call filter): the thread stays at this nice value, the process's.
    NotPermitted(i32),
    /// No boost asked: the thread stays at this nice value.
    NotAsked(i32),
    /// Not Linux, or the kernel would not say.
    Unknown,
}

/// Names the journal's `thread` and runs it `boost` steps ahead, before the
/// journal starts there; says how that went in the log and in the
/// `turnout_journal_nice` gauge.
pub fn run_ahead(thread: &ArbiterHandle, boost: PriorityBoost) {
    thread.spawn_fn(move || {
        name_this_thread();
        let nice = match boost_this_thread(boost) {
            Boosted::To(nice) => {
                tracing::info!(nice, "the journal's thread runs ahead of the others");
                nice
            }
            Boosted::NotPermitted(nice) => {
                tracing::info!(
                    nice,
                    "the journal's thread runs at the process's priority: running it ahead \
                     takes CAP_SYS_NICE or RLIMIT_NICE (docs/OPERATIONS.md)"
                );
                nice
            }
            Boosted::NotAsked(nice) => nice,
            Boosted::Unknown => return,
        };
        metrics::gauge!("turnout_journal_nice").set(f64::from(nice));
    });
}

#[cfg(target_os = "linux")]
fn name_this_thread() {
    // A failure leaves actix's name: nothing depends on it.
    let _ = rustix::thread::set_name(c"turnout-journal");
}

#[cfg(not(target_os = "linux"))]
fn name_this_thread() {}

/// Lowers the calling thread's nice value by `boost` steps (to −20 at
/// most). On Linux `setpriority(PRIO_PROCESS, tid)` changes that one
/// thread.
#[cfg(target_os = "linux")]
pub fn boost_this_thread(boost: PriorityBoost) -> Boosted {
    use rustix::process::{getpriority_process, setpriority_process};
    use rustix::thread::gettid;

    let tid = Some(gettid());
    let Ok(now) = getpriority_process(tid) else {
        return Boosted::Unknown;
    };
    if boost == PriorityBoost::NONE {
        return Boosted::NotAsked(now);
    }
    let wanted = (now - i32::from(boost.0)).max(-20);
    match setpriority_process(tid, wanted) {
        Ok(()) => Boosted::To(wanted),
        Err(rustix::io::Errno::ACCESS | rustix::io::Errno::PERM) => Boosted::NotPermitted(now),
        Err(error) => {
            tracing::warn!(%error, "cannot change the journal's thread's priority");
            Boosted::Unknown
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn boost_this_thread(_: PriorityBoost) -> Boosted {
    Boosted::Unknown
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The calling thread's nice value, as the kernel reports it.
    fn nice_of_this_thread() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Field 19, counted after the command's closing parenthesis (field 2
        // may hold spaces).
        let after_command = &stat[stat.rfind(')').unwrap() + 2..];
        after_command.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn a_boost_moves_the_calling_thread_alone_or_says_it_could_not() {
        let process = nice_of_this_thread();
        let (outcome, nice) = std::thread::spawn(|| {
            let outcome = boost_this_thread(PriorityBoost::try_from(5).unwrap());
            (outcome, nice_of_this_thread())
        })
        .join()
        .unwrap();
        match outcome {
            Boosted::To(to) => {
                assert_eq!(to, (process - 5).max(-20));
                assert_eq!(nice, to, "the kernel reports the value set");
            }
            Boosted::NotPermitted(stayed) => {
                assert_eq!(stayed, process);
                assert_eq!(nice, process, "refused, the thread stays where it was");
            }
            other => panic!("a boost of 5 was not tried: {other:?}"),
        }
        assert_eq!(nice_of_this_thread(), process, "other threads keep theirs");
    }

    #[test]
    fn no_boost_leaves_the_thread_where_it_is() {
        let nice = std::thread::spawn(|| boost_this_thread(PriorityBoost::NONE))
            .join()
            .unwrap();
        assert_eq!(nice, Boosted::NotAsked(nice_of_this_thread()));
    }

    #[test]
    fn a_boost_past_the_whole_range_is_refused_with_its_reason() {
        assert_eq!(PriorityBoost::try_from(39), Ok(PriorityBoost(39)));
        let refused = PriorityBoost::try_from(40).unwrap_err();
        assert!(refused.contains("0 to 39"), "{refused}");
    }
}
