//! The real `turnout` binary as a child process, for the tests that kill it
//! or measure its memory: an in-process app shares the test's heap.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::JWT_KEY;

pub struct ServerProcess {
    pub child: Child,
    pub address: String,
}

impl Drop for ServerProcess {
    /// A failed test must not leave a server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl ServerProcess {
    /// Starts the binary on a free port with the test key, rate limits and
    /// the per-address cap on HTTP connections off (the tests are one
    /// address), plus `env`, and waits until it is ready.
    pub async fn start(
        database_url: &str,
        data_dir: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_on(free_port(), database_url, data_dir, env).await
    }

    /// [`ServerProcess::start`] on a given port (a node restarted where
    /// its proxy expects it).
    #[allow(
        clippy::zombie_processes,
        reason = "the ServerProcess guard kills and waits on drop"
    )]
    pub async fn start_on(
        port: u16,
        database_url: &str,
        data_dir: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_turnout"))
            .args([
                "serve",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--database-url",
                database_url,
            ])
            .env("TURNOUT_JWT_SECRETS", JWT_KEY)
            .env("TURNOUT_DATA_DIR", data_dir)
            .env("TURNOUT_LOG_LEVEL", "warn")
            .env("TURNOUT_RATE_LIMITS__ENABLED", "false")
            .env("TURNOUT_HTTP__MAX_CONNECTIONS_PER_IP", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the turnout binary starts");
        let address = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if client
                .get(format!("{address}/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Self { child, address };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not become ready");
    }

    /// Sends the process a signal (`TERM`, `STOP`, `CONT`, `KILL`).
    pub fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{signal}");
    }

    /// SIGTERM, then the exit; whether it was clean.
    pub async fn terminate(self) -> bool {
        self.signal("TERM");
        self.exited().await
    }

    /// Waits (up to 30 s) for the process to end; whether it ended cleanly.
    /// One that does not is killed before the test fails, not left running.
    pub async fn exited(mut self) -> bool {
        let pid = self.child.id().to_string();
        let exited = tokio::task::spawn_blocking(move || {
            let status = self.child.wait();
            (status, self)
        });
        let Ok(waited) = tokio::time::timeout(Duration::from_secs(30), exited).await else {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status();
            panic!("the server did not exit within 30 s of SIGTERM; killed");
        };
        let (status, _) = waited.unwrap();
        status.unwrap().success()
    }

    /// `kill -9`, and the process reaped.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }

    /// Resident memory now, in MiB.
    pub fn rss_mib(&self) -> u64 {
        self.status_kib("VmRSS:") / 1024
    }

    /// The most resident memory the process has had, in MiB.
    pub fn peak_rss_mib(&self) -> u64 {
        self.status_kib("VmHWM:") / 1024
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server process is alive");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
    }
}
