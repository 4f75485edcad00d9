//! chaos/proxy.py from a test: the HTTP-aware fault proxy between real SDK clients and the emulator. A test adds
//! rules ("fail the next ChangeMessageVisibilityBatch with AccessDenied") and reads what the proxy saw.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use serde_json::{json, Value};

use super::{log_dir, repo, spawn_logged, suffix, wait_for, Proc, REGION};

/// The Python that runs the proxy: the project's virtual environment (the one ministack runs in), else `python3`
/// on PATH (the proxy needs only the standard library). `PROXY_PYTHON` overrides both.
pub fn python_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PROXY_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// A running chaos/proxy.py, stopped (its process group killed) on drop.
pub struct FaultProxy {
    url: String,
    control: String,
    proc: Proc,
    http: reqwest::Client,
}

impl FaultProxy {
    /// Start the proxy in front of `upstream` and wait (with a deadline) for its ready file.
    pub async fn start(test: &str, upstream: &str) -> FaultProxy {
        Self::start_with(test, "proxy", upstream, &[]).await
    }

    /// The same, named `name` in the logs, with more of chaos/proxy.py's flags (`--iam strict`, `--listen`).
    pub async fn start_with(test: &str, name: &str, upstream: &str, args: &[String]) -> FaultProxy {
        let dir = log_dir(test);
        let id = suffix();
        let ready = dir.join(format!("{name}-{id}.ready"));
        let mut cmd = Command::new(python_bin());
        cmd.arg(repo().join("chaos/proxy.py"))
            .args(["--upstream", upstream, "--ready-file"])
            .arg(&ready)
            .args(args);
        let mut proc = spawn_logged(cmd, &dir.join(format!("{name}-{id}.log")));
        let (url, control) = wait_for("the proxy's ready file", Duration::from_secs(20), || {
            // A proxy that died will never write the file: fail now, with its log, not at the deadline.
            if let Some(status) = proc.child.try_wait().ok().flatten() {
                panic!("proxy exited ({status}); log:\n{}", proc.log_text());
            }
            let text = std::fs::read_to_string(&ready).ok();
            async move {
                let v: Value = serde_json::from_str(&text?).ok()?;
                Some((
                    v["listen"].as_str()?.to_owned(),
                    v["control"].as_str()?.to_owned(),
                ))
            }
        })
        .await;
        FaultProxy {
            url,
            control,
            proc,
            http: reqwest::Client::new(),
        }
    }

    /// The endpoint clients use (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn control(&self) -> &str {
        &self.control
    }

    pub fn stop(&mut self) {
        self.proc.signal("KILL");
        let _ = self.proc.child.wait();
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// An SDK configuration that reaches the emulator through the proxy, with `max_attempts` SDK attempts (1: one
    /// rule count is one failure the caller sees) and an optional operation timeout.
    pub async fn sdk(
        &self,
        max_attempts: u32,
        operation_timeout: Option<Duration>,
    ) -> aws_config::SdkConfig {
        let mut timeouts = TimeoutConfig::builder().connect_timeout(Duration::from_secs(3));
        if let Some(t) = operation_timeout {
            timeouts = timeouts.operation_timeout(t);
        }
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(&self.url)
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .retry_config(
                // A tiny backoff: a test that lets the SDK retry should not wait for it.
                RetryConfig::standard()
                    .with_max_attempts(max_attempts)
                    .with_initial_backoff(Duration::from_millis(1)),
            )
            .timeout_config(timeouts.build())
            .load()
            .await
    }

    /// One control call: (HTTP status, JSON body).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.control));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("proxy control {method} {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method.clone(), path, body).await;
        assert_eq!(status, 200, "proxy control {method} {path}: {v}");
        v
    }

    /// Add a rule (`POST /rules`); returns the rule as stored, with its `id`. Panics if the proxy refuses it.
    pub async fn rule(&self, rule: Value) -> Value {
        self.ok(reqwest::Method::POST, "/rules", Some(rule)).await
    }

    /// One rule as `GET /status` reports it (hits, matched, remaining, held, active).
    pub async fn rule_status(&self, id: u64) -> Value {
        let s = self.status().await;
        s["rules"]
            .as_array()
            .and_then(|rules| rules.iter().find(|r| r["id"] == id).cloned())
            .unwrap_or_else(|| panic!("no rule {id} in {s}"))
    }

    /// Remove every rule (`DELETE /rules`); requests held by a stall are released.
    pub async fn clear(&self) {
        self.ok(reqwest::Method::DELETE, "/rules", None).await;
    }

    pub async fn status(&self) -> Value {
        self.ok(reqwest::Method::GET, "/status", None).await
    }

    /// How many requests of `service` / `operation` reached the proxy (faulted or not).
    pub async fn count(&self, service: &str, operation: &str) -> u64 {
        self.status().await["requests"][service][operation]
            .as_u64()
            .unwrap_or(0)
    }

    /// A whole-endpoint fault (`POST /fault`): `stall`, `drop` for `seconds`, or `pass` to end one.
    pub async fn fault(&self, mode: &str, seconds: f64) -> Value {
        self.ok(
            reqwest::Method::POST,
            "/fault",
            Some(json!({"mode": mode, "seconds": seconds})),
        )
        .await
    }
}

/// The emulator, a queue and tables, and a fault proxy in front of the emulator for the workers.
pub struct Rig {
    pub _emu: super::Emulator,
    /// Talks to the emulator directly (the test's own sends and reads).
    pub fx: super::Fixture,
    /// The same queue and tables, reached by workers through the proxy.
    pub via: super::Fixture,
    pub proxy: FaultProxy,
}

/// A `Rig` for one test.
pub async fn rig(test: &str) -> Rig {
    let emu = super::Emulator::start(test).await;
    let fx = super::Fixture::new(&emu, test).await;
    let proxy = FaultProxy::start(test, &emu.endpoint).await;
    let via = fx.through(proxy.url());
    Rig {
        _emu: emu,
        fx,
        via,
        proxy,
    }
}
