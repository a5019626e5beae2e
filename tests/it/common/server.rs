//! The real `iace` binary as a child process (`iace serve` with the simulated carrier), and its
//! administrative commands (`iace org create`, `iace user create`).

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_iace");

/// One `iace serve` process.
pub struct Server {
    child: Option<Child>,
    /// Its database.
    pub database_url: String,
    /// Its port.
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// `http://127.0.0.1:PORT` of its metrics listener (`/metrics`, the detailed `/ready`).
    pub metrics_base: String,
    /// The open-file soft limit it is started with (`None`: inherited).
    pub nofile_soft: Option<u64>,
    /// The simulated carrier's Redis key prefix (kept across restarts).
    pub sim_prefix: String,
    env: Vec<(String, String)>,
}

impl Server {
    /// Starts a server on `database_url` with the simulated carrier and extra `env`.
    pub async fn start(database_url: &str, env: &[(&str, &str)]) -> Server {
        let port = super::api::free_port();
        let metrics_port = super::api::free_port();
        let mut server = Server {
            child: None,
            database_url: database_url.to_owned(),
            port,
            base: format!("http://127.0.0.1:{port}"),
            metrics_base: format!("http://127.0.0.1:{metrics_port}"),
            nofile_soft: None,
            sim_prefix: format!("iace:test:{}:", uuid::Uuid::new_v4().simple()),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        server.spawn().await;
        server
    }

    /// Sets (or replaces) an environment variable for the next [`Server::spawn`].
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM (a graceful shutdown).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    /// (Re)starts the process and waits for `/health`.
    pub async fn spawn(&mut self) {
        // A lowered soft limit goes through the shell's `ulimit` (no unsafe pre_exec here).
        let mut cmd = match self.nofile_soft {
            Some(n) => {
                let mut cmd = Command::new("sh");
                cmd.args(["-c", &format!("ulimit -S -n {n} && exec \"$0\" serve"), BIN]);
                cmd
            }
            None => {
                let mut cmd = Command::new(BIN);
                cmd.arg("serve");
                cmd
            }
        };
        let metrics_addr = self.metrics_base.trim_start_matches("http://").to_owned();
        cmd.env("DATABASE_URL", &self.database_url)
            .env("IACE_METRICS_BIND", metrics_addr)
            .env("REDIS_URL", super::db::redis_url())
            .env("IACE_BIND", format!("127.0.0.1:{}", self.port))
            .env("IACE_TELEPHONY", "simulated")
            .env("IACE_SIM_KEY_PREFIX", &self.sim_prefix)
            // Rate-limit windows per database (servers on one database are one deployment and
            // share them): sign-in budgets per address and for the whole deployment would
            // otherwise be shared by every test's server on this Redis (all of them see
            // clients at 127.0.0.1).
            .env(
                "IACE_RATE_LIMIT_PREFIX",
                format!(
                    "iace:test:rl:{}:",
                    self.database_url.rsplit('/').next().unwrap_or_default()
                ),
            )
            // Password checks of a debug build on a busy machine can take seconds: a check
            // queued behind another waits rather than being refused (tests of the bound
            // lower it).
            .env("IACE_PASSWORD_MAX_WAIT_MS", "30000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawning the iace binary"));
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{}/health", self.base)).send().await {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("iace exited during start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "iace did not come up within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the process to exit by itself (after [`Server::sigterm`]) and reaps it;
    /// panics if it still runs after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("waiting for iace") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "iace (pid {}) did not exit within {within:?}",
                child.id()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no graceful shutdown.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `iace <args>` on `database_url` with `stdin`, returning the one JSON line it prints,
/// or its stderr when it fails.
pub fn admin(database_url: &str, args: &[&str], stdin: Option<&str>) -> Result<Value, String> {
    let mut child = Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running iace");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "iace {args:?} prints one line: {stdout}");
    Ok(serde_json::from_str(lines[0]).unwrap())
}

/// `iace org create`: (organization id, owner API key).
pub fn create_org(database_url: &str, name: &str) -> (String, String) {
    let v = admin(database_url, &["org", "create", name], None).expect("org create");
    (
        v["organization_id"].as_str().unwrap().to_owned(),
        v["api_key"].as_str().unwrap().to_owned(),
    )
}

/// `iace user create ... --password-stdin`.
pub fn create_user(
    database_url: &str,
    org: &str,
    email: &str,
    role: &str,
    password: &str,
) -> String {
    let v = admin(
        database_url,
        &[
            "user",
            "create",
            "--org",
            org,
            "--email",
            email,
            "--role",
            role,
            "--password-stdin",
        ],
        Some(&format!("{password}\n")),
    )
    .expect("user create");
    assert!(
        v.get("password").is_none(),
        "a given password is never printed"
    );
    v["user_id"].as_str().unwrap().to_owned()
}
