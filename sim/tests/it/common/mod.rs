//! Shared test harness: each test starts its own spot-sim binary on port 0 and talks to it over HTTP.

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A running spot-sim, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct SimProc {
    pub child: Child,
    pub api: String,
    pub dir: PathBuf,
    pub http: reqwest::Client,
}

fn scratch_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "spot-sim-test-{}-{:016x}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

impl SimProc {
    /// Start spot-sim with `args` (plus --listen and --ready-file) and wait for its ready file.
    pub async fn start(args: &[&str]) -> SimProc {
        Self::start_with_env(args, &[]).await
    }

    /// As [`SimProc::start`], with extra environment for spot-sim (and so for its workers).
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> SimProc {
        let dir = scratch_dir();
        let ready = dir.join("ready.json");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spot-sim"));
        // Killed by the kernel if the test process dies before its drop (a killed `cargo test`); spot-sim's own
        // workers die with it the same way (src/process.rs). Tied to this thread: the test's, never a
        // `spawn_blocking` one.
        // SAFETY: runs in the forked child before exec, and prctl(2) is async-signal-safe.
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .args(["--listen", "127.0.0.1:0", "--ready-file"])
            .arg(&ready)
            .arg("--log-dir")
            .arg(dir.join("logs"))
            .args(args)
            .env("SPOT_SIM_LOG", "spot_sim=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("spot-sim.stderr")).unwrap())
            .spawn()
            .expect("spawn spot-sim");
        let deadline = Instant::now() + Duration::from_secs(20);
        let api = loop {
            if let Ok(s) = std::fs::read_to_string(&ready) {
                let v: Value = serde_json::from_str(&s).expect("ready file is JSON");
                break v["api"].as_str().unwrap().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "spot-sim did not write its ready file"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        SimProc {
            child,
            api,
            dir,
            http,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn status(&self) -> Value {
        self.http
            .get(format!("{}/_sim/status", self.api))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn instance(&self, id: &str) -> Value {
        let s = self.status().await;
        s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no instance {id} in {s}"))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.api))
            .json(&body)
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    /// Launch an external instance (registered InService): (id, imds_url).
    pub async fn external(&self) -> (String, String) {
        let (code, v) = self
            .post("/_sim/instances", json!({"external": true}))
            .await;
        assert_eq!(code, 201, "{v}");
        (
            v["id"].as_str().unwrap().into(),
            v["imds_url"].as_str().unwrap().into(),
        )
    }

    /// Wait until exactly `n` instances are InService (10 s); the status that showed it.
    pub async fn wait_in_service(&self, n: usize) -> Value {
        self.wait_status(&format!("{n} InService"), Duration::from_secs(10), |s| {
            ids_in(s, "InService").len() == n
        })
        .await
    }

    /// Wait until some instance's worker process is alive (10 s); the status that showed it.
    pub async fn wait_worker_alive(&self) -> Value {
        self.wait_status("a worker", Duration::from_secs(10), |s| {
            s["instances"]
                .as_array()
                .is_some_and(|a| a.iter().any(|i| i["process_alive"] == true))
        })
        .await
    }

    /// Wait (polling the status document) until `f` holds; panics with the last status after `timeout`.
    pub async fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status().await;
            if f(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status: {s:#}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait until the instance is in `lifecycle`.
    pub async fn wait_lifecycle(&self, id: &str, lifecycle: &str, timeout: Duration) -> Value {
        let s = self
            .wait_status(&format!("{id} {lifecycle}"), timeout, |s| {
                find(s, id).is_some_and(|i| i["lifecycle_state"] == lifecycle)
            })
            .await;
        find(&s, id).unwrap().clone()
    }

    /// The Auto Scaling SDK client pointed at this simulator.
    pub fn asg(&self) -> aws_sdk_autoscaling::Client {
        use aws_sdk_autoscaling::config::{Credentials, Region};
        let conf = aws_sdk_autoscaling::Config::builder()
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.api)
            .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
            .build();
        aws_sdk_autoscaling::Client::from_conf(conf)
    }

    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("spot-sim.stderr")).unwrap_or_default()
    }
}

impl Drop for SimProc {
    fn drop(&mut self) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn find<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    status["instances"]
        .as_array()?
        .iter()
        .find(|i| i["id"] == id)
}

/// Ids of instances in a lifecycle state.
pub fn ids_in(status: &Value, lifecycle: &str) -> Vec<String> {
    status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["lifecycle_state"] == lifecycle)
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// IMDS: fetch a token with this TTL header value.
pub async fn token(http: &reqwest::Client, imds: &str, ttl: &str) -> (u16, String) {
    let r = http
        .put(format!("{imds}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", ttl)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// IMDS GET with an optional token.
pub async fn md(
    http: &reqwest::Client,
    imds: &str,
    path: &str,
    tok: Option<&str>,
) -> (u16, String) {
    let mut rq = http.get(format!("{imds}{path}"));
    if let Some(t) = tok {
        rq = rq.header("X-aws-ec2-metadata-token", t);
    }
    let r = rq.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Poll `f` until it returns Some, with a deadline.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Parse an RFC 3339 time as seconds since the epoch.
pub fn epoch(rfc3339: &str) -> f64 {
    // Small parser to avoid a dev-dependency: YYYY-MM-DDTHH:MM:SS(.fff)Z.
    let (date, time) = rfc3339.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let t: Vec<f64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    let (y, m, day) = (d[0], d[1], d[2]);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days as f64 * 86_400.0 + t[0] * 3600.0 + t[1] * 60.0 + t[2]
}

pub fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
