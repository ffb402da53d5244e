//! Finding `moto_server` and a Python with quilt3, starting moto, and running child processes
//! with their peak RSS and CPU time measured (`wait4`).

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How to get the tools, printed when one is missing.
pub const INSTALL_HINT: &str = "install them with `bash .ci/run` from the repository root \
(it creates .venv with moto[server]==5.2.5 and quilt3==8.0.0), or \
`python3 -m venv .venv && .venv/bin/pip install 'moto[server]==5.2.5' quilt3==8.0.0`; \
or pass --moto PATH and --python PATH";

/// Directories that may hold the pinned tools: `$S3QUILT_VENV/bin`, then `.venv/bin` in the
/// current directory or any parent, then the repository this binary was built from.
fn venv_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(venv) = std::env::var_os("S3QUILT_VENV") {
        dirs.push(PathBuf::from(venv).join("bin"));
    }
    if let Ok(cwd) = std::env::current_dir() {
        dirs.extend(cwd.ancestors().map(|d| d.join(".venv/bin")));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin"));
    dirs
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

/// Candidates for an executable: the venvs first (they hold the pinned versions), then PATH.
fn candidates(names: &[&str]) -> Vec<PathBuf> {
    venv_dirs()
        .into_iter()
        .chain(path_dirs())
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .filter(|p| p.is_file())
        .collect()
}

fn runs_ok(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `moto_server`: the flag, or the first candidate that answers `--help`.
pub fn find_moto(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag {
        if runs_ok(Command::new(path).arg("--help")).is_none() {
            bail!("--moto {}: does not run; {INSTALL_HINT}", path.display());
        }
        return Ok(path.to_path_buf());
    }
    candidates(&["moto_server"])
        .into_iter()
        .find(|p| runs_ok(Command::new(p).arg("--help")).is_some())
        .with_context(|| format!("moto_server not found (in .venv/bin or on PATH); {INSTALL_HINT}"))
}

/// A Python that imports quilt3, and quilt3's version: the flag, or the first candidate.
pub fn find_python(flag: Option<&Path>) -> anyhow::Result<(PathBuf, String)> {
    let version = |p: &Path| {
        runs_ok(Command::new(p).args([
            "-c",
            "from importlib.metadata import version; print(version('quilt3'))",
        ]))
    };
    if let Some(path) = flag {
        let v = version(path).with_context(|| {
            format!(
                "--python {}: cannot import quilt3; {INSTALL_HINT}",
                path.display()
            )
        })?;
        return Ok((path.to_path_buf(), v));
    }
    candidates(&["python", "python3"])
        .into_iter()
        .find_map(|p| version(&p).map(|v| (p, v)))
        .with_context(|| {
            format!("no Python with quilt3 found (in .venv/bin or on PATH); {INSTALL_HINT}")
        })
}

/// A free TCP port on 127.0.0.1 (free when asked; another process could take it after).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Asks the kernel to kill `cmd`'s process when this process dies (even by SIGKILL).
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A running moto server; dropping it kills it.
pub struct Moto {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Moto {
    /// Starts `moto_server -H 127.0.0.1 -p <free port>` (log in `log`) and waits until it
    /// answers HTTP (up to 60 s).
    pub async fn start(moto: &Path, log: &Path) -> anyhow::Result<Moto> {
        let port = free_port()?;
        let logfile = std::fs::File::create(log)?;
        let mut cmd = Command::new(moto);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(logfile.try_clone()?)
            .stderr(logfile);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", moto.display()))?;
        let mut server = Moto {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.child.try_wait()? {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                bail!("moto_server exited ({status}) before answering:\n{text}");
            }
            if http_answers(server.addr).await {
                return Ok(server);
            }
            if Instant::now() > deadline {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                bail!(
                    "moto_server did not answer on {} in 60 s:\n{text}",
                    server.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn http_answers(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let req = format!("GET /moto-api/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if buf.starts_with(b"HTTP/1.")
    )
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A finished child process.
#[derive(Debug)]
pub struct Measured {
    /// When it was spawned.
    pub started: Instant,
    /// From spawn to exit.
    pub wall: Duration,
    /// Peak resident set size, bytes (`ru_maxrss`).
    pub peak_rss: u64,
    /// CPU time, user and system (`ru_utime` + `ru_stime`).
    pub cpu: Duration,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// Runs `cmd` to completion (blocking) and measures wall time and peak RSS; fails, with its
/// output, when it does not exit 0.
pub fn run_measured(mut cmd: Command, what: &str) -> anyhow::Result<Measured> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let pid = libc::pid_t::try_from(child.id())?;
    let hwm = HighWater::watch(child.id());
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; wait4 fills it and `status` for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals; `pid` is our child, not yet reaped.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).with_context(|| format!("waiting for {what}"));
        }
    }
    let wall = start.elapsed();
    let polled_rss = hwm.stop();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !ok {
        bail!("{what} failed (wait status {status}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    }
    Ok(Measured {
        started: start,
        wall,
        peak_rss: polled_rss.unwrap_or(u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024),
        cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
        stdout,
        stderr,
    })
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
        + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
}

/// Polls a child's `VmHWM` (its peak RSS since it exec'd) while it runs. `ru_maxrss` from
/// `wait4` is no use here: Linux carries the RSS a child had before exec (a fork of this
/// process, which holds the in-memory S3's objects) into it. `VmHWM` only grows after exec, so
/// the last value read is the peak, give or take the last poll interval.
struct HighWater {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Option<u64>>,
}

impl HighWater {
    fn watch(pid: u32) -> HighWater {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut last = None;
            while !flag.load(std::sync::atomic::Ordering::Acquire) {
                if let Some(kb) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| vm_hwm_kb(&s))
                {
                    last = Some(kb * 1024);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            last
        });
        HighWater { stop, thread }
    }

    fn stop(self) -> Option<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.thread.join().ok().flatten()
    }
}

/// `VmHWM:   1234 kB` from a `/proc/PID/status` text.
fn vm_hwm_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_high_water_mark() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t   1234 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(super::vm_hwm_kb(status), Some(1234));
        assert_eq!(super::vm_hwm_kb("Name: x\n"), None);
    }
}
