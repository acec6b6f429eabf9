//! Workers for tests: the real binary as a child process (killed on drop,
//! its output collected), and in-process workers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use user_sync::app::Worker;

use super::Env;

/// A one-shot command (migrate, status, conflicts) on a busy machine.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// The binary with exactly `vars` (plus PATH and the repository's config
/// folder): nothing leaks in from the developer's shell.
pub fn user_sync(vars: &HashMap<String, String>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_user-sync"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("USER_SYNC_CONFIG_DIR", super::config_dir())
        .envs(vars)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs a one-shot command to its end.
pub async fn run_once(vars: &HashMap<String, String>, args: &[&str]) -> Finished {
    let output = tokio::time::timeout(COMMAND_LIMIT, user_sync(vars, args).output())
        .await
        .unwrap_or_else(|_| panic!("`user-sync {}` did not finish", args.join(" ")))
        .expect("the binary starts");
    Finished {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A long-running `user-sync` process whose stdout and stderr are collected
/// line by line. Killed when dropped (a failing test leaves nothing behind).
pub struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(vars: &HashMap<String, String>, args: &[&str]) -> Self {
        let mut child = user_sync(vars, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let readers = vec![collect(stdout, log.clone()), collect(stderr, log.clone())];
        Self {
            child,
            log,
            readers,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process has not been reaped")
    }

    /// Waits for the "user-sync is running" line (needs JSON logs at info
    /// level or more) and returns the ops address it names.
    pub async fn ready(&mut self) -> SocketAddr {
        let deadline = Instant::now() + COMMAND_LIMIT;
        loop {
            let found = self.log().lines().find_map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).ok()?;
                if value["message"] != "user-sync is running" {
                    return None;
                }
                value["ops_addr"].as_str()?.parse::<SocketAddr>().ok()
            });
            if let Some(addr) = found {
                return addr;
            }
            if let Some(status) = self.child.try_wait().expect("poll the process") {
                panic!(
                    "the worker exited before it was running: {status}\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the worker never said it was running:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no chance to clean anything up. Returns everything the
    /// process wrote.
    pub async fn kill(mut self) -> String {
        self.child.start_kill().expect("send SIGKILL");
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("a SIGKILLed process ends")
            .expect("wait for the process");
        self.drain().await
    }

    /// Waits for the readers to reach the end of the closed pipes.
    async fn drain(&mut self) -> String {
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        self.log()
    }

    /// SIGTERM, then waits at most `limit`; returns the exit status and
    /// everything the process wrote.
    pub async fn terminate(mut self, limit: Duration) -> (ExitStatus, String) {
        let pid = self.pid().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for the process"),
            Err(_) => panic!(
                "the worker did not stop within {limit:?} of SIGTERM:\n{}",
                self.log()
            ),
        };
        // The pipes close with the process: the readers finish.
        (status, self.drain().await)
    }

    /// Waits at most `limit` for the process to exit on its own; returns
    /// the exit status and everything the process wrote.
    pub async fn exits_within(mut self, limit: Duration) -> (ExitStatus, String) {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for the process"),
            Err(_) => panic!("the worker did not exit within {limit:?}:\n{}", self.log()),
        };
        (status, self.drain().await)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        self.readers.iter().for_each(JoinHandle::abort);
    }
}

pub fn collect(
    stream: impl AsyncRead + Unpin + Send + 'static,
    log: Arc<Mutex<String>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut log = log.lock().expect("log lock");
            log.push_str(&line);
            log.push('\n');
        }
    })
}

/// Worker variables that make the process say when it is running.
pub fn process_vars(env: &Env) -> HashMap<String, String> {
    speaking(env.vars())
}

/// [`process_vars`] on [`Env::vars_on_default_timings`].
pub fn process_vars_on_default_timings(env: &Env) -> HashMap<String, String> {
    speaking(env.vars_on_default_timings())
}

fn speaking(mut vars: HashMap<String, String>) -> HashMap<String, String> {
    vars.insert("USER_SYNC__LOG__LEVEL".into(), "info".into());
    vars.insert("USER_SYNC__LOG__FORMAT".into(), "json".into());
    vars
}

// ---------------------------------------------------------------------------
// In-process workers and HTTP
// ---------------------------------------------------------------------------

pub struct Running {
    pub worker: Worker,
    pub shutdown: CancellationToken,
}

impl Running {
    pub async fn start(env: &Env) -> Self {
        Self::with(env, &[]).await
    }

    /// With extra variables over the test's own.
    pub async fn with(env: &Env, extra: &[(&str, &str)]) -> Self {
        let shutdown = CancellationToken::new();
        let worker = Worker::start(&env.settings_with(extra), shutdown.clone())
            .await
            .expect("worker starts");
        Self { worker, shutdown }
    }

    /// On [`Env::settings_on_default_timings`], with `extra`.
    pub async fn on_default_timings(env: &Env, extra: &[(&str, &str)]) -> Self {
        let shutdown = CancellationToken::new();
        let worker = Worker::start(&env.settings_on_default_timings(extra), shutdown.clone())
            .await
            .expect("worker starts");
        Self { worker, shutdown }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.worker.stopped())
            .await
            .expect("worker stops within its shutdown timeout")
            .expect("no part of the worker stopped on its own");
    }
}
