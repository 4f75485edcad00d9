//! The real process behind a simulated instance: spawn it with the instance's endpoints, signal it.
//!
//! Each worker runs in its own process group (so a shell wrapper and its children get the same signal, as
//! systemd's control group would) and with `PR_SET_PDEATHSIG` so it cannot outlive spot-sim even if spot-sim is
//! SIGKILLed. The death signal is tied to the *thread* that forked, so spawning must happen on a runtime worker
//! thread (which lives as long as the runtime), never inside `spawn_blocking`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::model::Signal;

/// What a worker process needs to know about its instance.
pub struct Spawn<'a> {
    pub cmd: &'a Path,
    pub args: &'a [String],
    pub imds_url: &'a str,
    pub api_url: &'a str,
    pub metrics_addr: &'a str,
    pub instance_id: &'a str,
    pub log_dir: &'a Path,
    /// The simulated region, given as AWS_REGION when the environment names none.
    pub region: &'a str,
}

/// Start the worker for one instance; stdout and stderr go to `<log_dir>/<instance-id>.log`.
pub fn spawn(s: &Spawn<'_>) -> anyhow::Result<(Child, PathBuf)> {
    let log_path = s.log_dir.join(format!("{}.log", s.instance_id));
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let log2 = log.try_clone()?;
    let mut cmd = Command::new(s.cmd);
    cmd.args(s.args)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", s.imds_url)
        .env("AWS_ENDPOINT_URL_AUTO_SCALING", s.api_url)
        .env("ORDER_WORKER_METRICS_ADDR", s.metrics_addr)
        .env("SPOT_SIM_INSTANCE_ID", s.instance_id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .kill_on_drop(true);
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        cmd.env("AWS_REGION", s.region);
    }
    // SAFETY: the closure runs in the forked child before exec and only calls async-signal-safe functions.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            #[cfg(target_os = "linux")]
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("spawning {}", s.cmd.display()))?;
    Ok((child, log_path))
}

/// Signal the worker's whole process group (it is the group leader); fall back to the pid alone.
pub fn signal(pid: u32, sig: Signal) -> std::io::Result<()> {
    let sig = match sig {
        Signal::Term => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
        Signal::Stop => libc::SIGSTOP,
        Signal::Cont => libc::SIGCONT,
        Signal::Int => libc::SIGINT,
        Signal::Hup => libc::SIGHUP,
    };
    let pid = pid as libc::pid_t;
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(-pid, sig) };
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: as above.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A free 127.0.0.1 port for a worker's metrics endpoint. The port is released before the worker binds it; the
/// race with another process is accepted for a local simulator.
pub fn free_local_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// How a worker ended, for its `worker exited` event.
pub fn describe_exit(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown exit".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_described() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe_exit(std::process::ExitStatus::from_raw(3 << 8)),
            "exit code 3"
        );
        assert_eq!(
            describe_exit(std::process::ExitStatus::from_raw(9)),
            "killed by signal 9"
        );
    }
}
