//! What a process on this machine is using, from /proc: resident memory and
//! CPU time. The scenarios read the server's (with `--server-pid`) and their
//! own, so a report can say what a connection or a request cost each side.

use std::collections::HashMap;
use std::time::Duration;

use crate::Common;
use crate::report::Check;

/// CPU time of the server (when its pid is known), of the processes it
/// works through (its database, Redis: `--companion`) and of the tool,
/// from the start of a measurement: on a machine where they share the
/// cores, this says what a request cost the server and what it cost the
/// processes beside it, over the same window.
pub struct CpuMeter {
    server_pid: Option<u32>,
    server: Option<Duration>,
    companions: Vec<String>,
    companions_at_start: HashMap<u32, Duration>,
    own: Option<Duration>,
}

impl CpuMeter {
    pub fn start(common: &Common) -> Self {
        let server_pid = common.server_pid;
        Self {
            server_pid,
            server: server_pid.and_then(cpu_time),
            companions: common.companion.clone(),
            companions_at_start: cpu_times_of(&common.companion),
            own: own_cpu_time(),
        }
    }

    /// Info checks with the CPU time spent since the start per unit of
    /// work: `units` is what was done (answered 2xx, delivered), not what
    /// was asked, so fast refusals cannot make a request look cheap.
    pub fn checks(&self, units: usize, what: &str) -> Vec<Check> {
        let server = cpu_per(self.server, self.server_pid.and_then(cpu_time), units, what);
        let own = cpu_per(self.own, own_cpu_time(), units, what);
        let mut checks = Vec::new();
        checks.extend(server.map(|per| Check::new("server CPU (info)", true, per)));
        if !self.companions.is_empty() {
            let names = self.companions.join(", ");
            let at_end = cpu_times_of(&self.companions);
            // None found is no measurement: read as 0 µs, it would make
            // the server look cheaper than it is.
            let found = !self.companions_at_start.is_empty() && !at_end.is_empty();
            let spent = companions_spent(&self.companions_at_start, &at_end);
            let per = cpu_per(Some(Duration::ZERO), Some(spent), units, what)
                .filter(|_| found)
                .map_or_else(
                    || format!("no process named {names} found"),
                    |per| format!("{per}: {names}"),
                );
            checks.push(Check::new("companion CPU (info)", found, per));
        }
        checks.extend(own.map(|per| Check::new("load generator CPU (info)", true, per)));
        checks
    }
}

/// The CPU time of every process whose command is one of `names`, by pid.
fn cpu_times_of(names: &[String]) -> HashMap<u32, Duration> {
    if names.is_empty() {
        return HashMap::new();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let command = &stat[stat.find('(')? + 1..stat.rfind(')')?];
            if !names.iter().any(|name| name == command) {
                return None;
            }
            Some((pid, parse_cpu_time(&stat)?))
        })
        .collect()
}

/// What the processes read at `end` spent since `start`: all of it for a
/// process started meanwhile (a new database backend). One that ended
/// meanwhile is not counted: keep the window shorter than its life.
fn companions_spent(start: &HashMap<u32, Duration>, end: &HashMap<u32, Duration>) -> Duration {
    end.iter()
        .map(|(pid, now)| now.saturating_sub(start.get(pid).copied().unwrap_or_default()))
        .sum()
}

/// Resident memory of a process in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The server's resident memory, read every `every` while a load runs.
pub struct RssTrack {
    samples: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    sampler: Option<tokio::task::JoinHandle<()>>,
}

impl RssTrack {
    /// Starts reading (nothing without a pid).
    pub fn start(pid: Option<u32>, every: std::time::Duration) -> Self {
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sampler = pid.map(|pid| {
            let samples = samples.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    if let Some(rss) = rss_bytes(pid) {
                        samples.lock().unwrap().push(rss);
                    }
                }
            })
        });
        Self { samples, sampler }
    }

    /// Stops reading: an info check with where the memory started and
    /// ended, its growth over the second half of the run, and the growth
    /// per member the load added.
    pub fn check(mut self, pid: Option<u32>, members: usize) -> Option<Check> {
        if let Some(sampler) = self.sampler.take() {
            sampler.abort();
        }
        let mut samples = std::mem::take(&mut *self.samples.lock().unwrap());
        samples.extend(pid.and_then(rss_bytes));
        let (first, last) = (*samples.first()?, *samples.last()?);
        let half = samples[samples.len() / 2];
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        Some(Check::new(
            "server memory (info)",
            true,
            format!(
                "RSS {:.0} MiB at the start, {:.0} MiB halfway, {:.0} MiB at the end, {:.0} MiB at most; \
                 {} bytes per member added ({members})",
                mib(first),
                mib(half),
                mib(last),
                mib(samples.iter().copied().max().unwrap_or(last)),
                last.saturating_sub(first) / members.max(1) as u64,
            ),
        ))
    }
}

/// The server's resident memory growth per connection, as an info check,
/// when both readings were taken.
pub fn memory_per_connection(
    name: &str,
    before: Option<u64>,
    after: Option<u64>,
    connections: usize,
) -> Option<Check> {
    let (before, after) = (before?, after?);
    let bytes = after.saturating_sub(before) / connections.max(1) as u64;
    Some(Check::new(
        name,
        true,
        format!("{bytes} bytes ({:.1} KiB)", bytes as f64 / 1024.0),
    ))
}

/// CPU time (user and system, all threads) a process has used.
fn cpu_time(pid: u32) -> Option<Duration> {
    parse_cpu_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The tool's own CPU time.
fn own_cpu_time() -> Option<Duration> {
    cpu_time(std::process::id())
}

/// utime + stime from a /proc/<pid>/stat line, in clock ticks of 10 ms
/// (USER_HZ is 100 on Linux).
fn parse_cpu_time(stat: &str) -> Option<Duration> {
    // The command name (field 2) may hold spaces and parentheses: count from
    // the last ')'. utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// CPU time spent between two readings, per unit of work.
fn cpu_per(
    before: Option<Duration>,
    after: Option<Duration>,
    units: usize,
    what: &str,
) -> Option<String> {
    let spent = after?.checked_sub(before?)?;
    let per = spent.as_secs_f64() * 1e6 / units.max(1) as f64;
    // A fan-out's delivery costs a few µs, and two builds a few per cent
    // apart differ only in its second decimal.
    let decimals = if per < 10.0 { 2 } else { 1 };
    Some(format!(
        "{per:.decimals$} µs per {what} ({:.2} s in all)",
        spent.as_secs_f64()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_utime_plus_stime() {
        let stat = "4242 (turnout (x) y) S 1 4242 4242 0 -1 4194560 2519 0 0 0 150 25 0 0 20 0 7 0";
        assert_eq!(parse_cpu_time(stat), Some(Duration::from_millis(1750)));
    }

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        assert!(own_cpu_time().is_some());
    }

    #[test]
    fn companions_count_what_they_spent_in_the_window() {
        let ms = Duration::from_millis;
        let start = HashMap::from([(1, ms(100)), (2, ms(50)), (3, ms(70))]);
        // 1 went on, 2 ended, 4 began.
        let end = HashMap::from([(1, ms(130)), (4, ms(20))]);
        assert_eq!(companions_spent(&start, &end), ms(50));
    }

    #[test]
    fn a_companion_is_found_by_its_command() {
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        let command = me[me.find('(').unwrap() + 1..me.rfind(')').unwrap()].to_owned();
        let found = cpu_times_of(&[command]);
        assert!(found.contains_key(&std::process::id()), "{found:?}");
    }

    #[test]
    fn cost_per_unit_is_the_difference_divided() {
        let per = cpu_per(
            Some(Duration::from_secs(1)),
            Some(Duration::from_secs(3)),
            1000,
            "join",
        );
        assert_eq!(per.as_deref(), Some("2000.0 µs per join (2.00 s in all)"));
        let per = cpu_per(
            Some(Duration::ZERO),
            Some(Duration::from_secs(2)),
            600_000,
            "delivery",
        );
        assert_eq!(per.as_deref(), Some("3.33 µs per delivery (2.00 s in all)"));
        assert_eq!(cpu_per(None, Some(Duration::ZERO), 1, "join"), None);
    }
}
