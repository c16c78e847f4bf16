//! The real `turnout` binary as a child process, for the tests that kill it
//! or measure its memory: an in-process app shares the test's heap.

use std::process::{Child, Command, Stdio};
use std::sync::mpsc::TryRecvError;
use std::time::{Duration, Instant};

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

impl ServerProcess {
    /// Starts the binary on a port of its own choosing with the test key,
    /// rate limits and the per-address cap on HTTP connections off (the
    /// tests are one address), plus `env`, and waits until it is ready.
    pub async fn start(
        database_url: &str,
        data_dir: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_on(0, database_url, data_dir, env).await
    }

    /// [`ServerProcess::start`] on a given port (a node restarted where
    /// its proxy expects it: see [`turnout::testing::reserved_port`]); 0 lets it choose.
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
        let mut child = Command::new(env!("CARGO_BIN_EXE_turnout"))
            .args([
                "serve",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--database-url",
                database_url,
            ])
            .env("TURNOUT_JWT_SECRETS", JWT_KEY)
            .env("TURNOUT_DATA_DIR", data_dir)
            // The line saying where it listens, and warnings.
            .env("TURNOUT_LOG_FORMAT", "json")
            .env("TURNOUT_LOG_LEVEL", "warn,turnout::app=info")
            .env_remove("RUST_LOG")
            .env("TURNOUT_RATE_LIMITS__ENABLED", "false")
            .env("TURNOUT_HTTP__MAX_CONNECTIONS_PER_IP", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the turnout binary starts");
        let listening = listening_port(child.stdout.take().expect("stdout is piped"));
        // Owned by the guard from here, so that a panic below kills it.
        let mut server = Self {
            child,
            address: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let bound = loop {
            match listening.try_recv() {
                Ok(port) => break port,
                Err(TryRecvError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(200));
                    let status = server.child.try_wait().unwrap();
                    panic!("the server's log ended without its listening line (exit: {status:?})")
                }
                Err(TryRecvError::Empty) => {}
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("the server exited before it listened: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the server did not listen in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            port == 0 || port == bound,
            "asked for {port}, bound {bound}"
        );
        server.address = format!("http://127.0.0.1:{bound}");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        while Instant::now() < deadline {
            if client
                .get(format!("{}/ready", server.address))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return server;
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("the server exited before it was ready: {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not become ready in 60 s");
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

/// Reads the server's log lines on a thread of their own until it ends (a
/// full pipe would hold up its logging), echoes them to the test's stderr,
/// where the harness keeps a failed test's output, and sends the port of
/// its "turnout listening" line.
fn listening_port(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<u16> {
    use std::io::BufRead;
    let (tell, listening) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut stdout = std::io::BufReader::new(stdout);
        let mut line = Vec::new();
        while stdout
            .read_until(b'\n', &mut line)
            .is_ok_and(|read| read > 0)
        {
            let text = String::from_utf8_lossy(&line);
            eprint!("{text}");
            let logged: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if logged["message"] == "turnout listening"
                && let Some(port) = logged["port"].as_u64().and_then(|p| u16::try_from(p).ok())
            {
                let _ = tell.send(port);
            }
            line.clear();
        }
    });
    listening
}
