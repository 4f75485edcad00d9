//! The runtime around the model: owns the state lock, runs one model step under it, releases it, then carries out
//! the step's effects (binds an IMDS server, spawns a worker, sends a signal) and reports their outcome back to
//! the model. No bind, spawn or `.await` ever happens with the lock held, so one slow effect never stalls the
//! APIs, and every API call and tick sees a consistent region.
//!
//! The IMDS server itself is an API module; it is handed in as [`ImdsApp`] so the runtime does not import it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::clock::{Clock, Now};
use crate::config::RunArgs;
use crate::model::scaling::{Policy, Tracker};
use crate::model::{Effect, Region, Settings, Signal};
use crate::process;

/// How often deadlines are checked. 50 ms keeps a 6-second PT2M run accurate to about 1 %.
pub const TICK: Duration = Duration::from_millis(50);

/// Builds the IMDS app for one instance id (the `imds` module's `app`).
pub type ImdsApp = fn(Arc<Sim>, String) -> axum::Router;

/// How worker processes are started (not part of the model: it only knows whether instances have one).
#[derive(Debug, Clone)]
pub struct Workers {
    /// The worker to run per instance; None: every instance is external.
    pub cmd: Option<PathBuf>,
    pub args: Vec<String>,
    /// Where `<instance-id>.log` files go.
    pub log_dir: PathBuf,
    /// The Auto Scaling endpoint workers are given; None: the API server's own URL.
    pub auto_scaling_endpoint: Option<String>,
}

/// The simulator, shared by every server and task.
pub struct Sim {
    /// The model's fixed settings, readable without the lock (a copy of what the model holds).
    pub settings: Settings,
    pub clock: Clock,
    workers: Workers,
    imds_app: ImdsApp,
    state: Mutex<Region>,
    /// Base URL of the API server, known once it listens (workers get it as their Auto Scaling endpoint).
    pub api_url: OnceLock<String>,
    /// Fired by POST /_sim/shutdown.
    pub shutdown: tokio::sync::Notify,
    /// The IAM gate's authorisation endpoint, when the region enforces policies (FIS roles are checked there).
    pub authorizer: OnceLock<String>,
}

/// Model settings from the command line.
pub fn settings_from_args(a: &RunArgs) -> Settings {
    Settings {
        group: a.group_name.clone(),
        hook: a.hook_name.clone(),
        hook_timeout: a.hook_timeout,
        launch_delay: a.launch_delay,
        hook_start_delay: a.hook_start_delay,
        kill_grace: a.kill_grace,
        capacity_rebalance: a.capacity_rebalance,
        max_size: a.max_size,
        min_size: a.min_size,
        instance_warmup: a.instance_warmup,
        workers: a.worker_cmd.is_some(),
        region: a.region.clone(),
        account: a.account.clone(),
        instance_type: a.instance_type.clone(),
        created_at: time::OffsetDateTime::now_utc(),
    }
}

impl Sim {
    pub fn new(
        settings: Settings,
        clock: Clock,
        desired: u32,
        workers: Workers,
        imds_app: ImdsApp,
        policy: Option<Policy>,
    ) -> Arc<Sim> {
        let mut region = Region::new(settings.clone(), clock, desired);
        // Launch template version 1 is the command line's worker.
        region.fleet.templates[0].cmd = workers.cmd.clone();
        region.fleet.templates[0].args = workers.args.clone();
        region.fleet.scaling = policy.map(Tracker::new);
        Arc::new(Sim {
            state: Mutex::new(region),
            settings,
            clock,
            workers,
            imds_app,
            api_url: OnceLock::new(),
            shutdown: tokio::sync::Notify::new(),
            authorizer: OnceLock::new(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Region> {
        // A panic while holding the lock would be a simulator bug; keep serving rather than poison everything.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run one model step under the lock, then carry out its effects with the lock released.
    pub fn step<R>(self: &Arc<Self>, f: impl FnOnce(&mut Region, Now) -> (R, Vec<Effect>)) -> R {
        let (r, effects) = f(&mut self.lock(), Now::read());
        self.carry_out(effects);
        r
    }

    /// Carry out effects in order (an instance's IMDS server before its worker, which is given its URL).
    pub fn carry_out(self: &Arc<Self>, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::StartImds { instance } => self.start_imds(&instance),
                Effect::SpawnWorker { instance } => self.spawn_worker(&instance),
                Effect::Signal {
                    instance,
                    pid,
                    signal,
                    note,
                } => {
                    let err = process::signal(pid, signal).err().map(|e| e.to_string());
                    self.lock()
                        .fleet
                        .record_signal(Now::read(), &instance, signal, &note, err);
                }
            }
        }
    }

    fn start_imds(self: &Arc<Self>, id: &str) {
        let bound = (|| -> std::io::Result<tokio::net::TcpListener> {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        })();
        match bound.and_then(|l| Ok((l.local_addr()?, l))) {
            Ok((addr, listener)) => {
                let app = (self.imds_app)(self.clone(), id.to_string());
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app).await {
                        warn!(cause = %e, "imds server stopped");
                    }
                });
                self.lock()
                    .fleet
                    .imds_bound(Now::read(), id, format!("http://{addr}"));
            }
            Err(e) => self
                .lock()
                .fleet
                .imds_failed(Now::read(), id, &e.to_string()),
        }
    }

    fn spawn_worker(self: &Arc<Self>, id: &str) {
        // The instance's launch template version says what it runs.
        let (imds_url, cmd, args) = {
            let st = self.lock();
            let Some(inst) = st.fleet.get(id) else { return };
            // Its IMDS server could not bind: the launch was undone.
            let Some(u) = inst.imds_url.clone() else {
                return;
            };
            let t = st.fleet.template(inst.version);
            let cmd = t
                .and_then(|t| t.cmd.clone())
                .or_else(|| self.workers.cmd.clone());
            let args = t.map(|t| t.args.clone()).unwrap_or_default();
            (u, cmd, args)
        };
        let Some(cmd) = cmd else {
            return;
        };
        let metrics_addr = match process::free_local_port() {
            Ok(p) => format!("127.0.0.1:{p}"),
            Err(e) => {
                let what = format!("no free metrics port: {e}");
                self.lock().fleet.worker_failed(Now::read(), id, what);
                return;
            }
        };
        let api_url = match &self.workers.auto_scaling_endpoint {
            Some(url) => url.clone(),
            None => self.api_url.get().cloned().unwrap_or_default(),
        };
        let spawned = process::spawn(&process::Spawn {
            cmd: &cmd,
            args: &args,
            imds_url: &imds_url,
            api_url: &api_url,
            metrics_addr: &metrics_addr,
            instance_id: id,
            log_dir: &self.workers.log_dir,
            region: &self.settings.region,
        });
        match spawned {
            Ok((mut child, log_path)) => {
                let pid = child.id();
                let effects =
                    self.lock()
                        .fleet
                        .worker_started(Now::read(), id, pid, metrics_addr, log_path);
                let sim = self.clone();
                let id = id.to_string();
                tokio::spawn(async move {
                    let status = child.wait().await;
                    let what = match status {
                        Ok(s) => process::describe_exit(s),
                        Err(e) => format!("wait failed: {e}"),
                    };
                    sim.lock().fleet.process_exited(Now::read(), &id, what);
                });
                self.carry_out(effects);
            }
            Err(e) => {
                warn!(instance = id, cause = %e, "worker did not start");
                let what = format!("worker failed to start: {e:#}");
                self.lock().fleet.worker_failed(Now::read(), id, what);
            }
        }
    }

    /// Signal a worker's process group for the control API (it records the event itself).
    pub fn signal(&self, pid: u32, sig: Signal) -> std::io::Result<()> {
        process::signal(pid, sig)
    }

    /// One pass over every deadline.
    pub fn tick(self: &Arc<Self>) {
        self.step(|st, now| ((), st.tick(now)));
    }

    /// Stop every worker: SIGTERM, wait up to the grace, SIGKILL the rest.
    pub async fn stop_all(&self) {
        let pids = self.lock().fleet.begin_shutdown(Now::read());
        for pid in &pids {
            let _ = process::signal(*pid, Signal::Term);
        }
        let deadline = Instant::now() + self.settings.kill_grace;
        loop {
            let alive = self.lock().fleet.live_pids();
            if alive.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for pid in alive {
                    let _ = process::signal(pid, Signal::Kill);
                }
                // Give the reapers a moment so the log says who was killed.
                tokio::time::sleep(Duration::from_millis(200)).await;
                break;
            }
            tokio::time::sleep(TICK).await;
        }
    }
}

/// Run the ticker until the process exits.
pub fn start_ticker(sim: Arc<Sim>) {
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(TICK);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            iv.tick().await;
            sim.tick();
        }
    });
}
