//! The Step Functions test stack: a moto server of its own whose engine executes state
//! machines and calls back through [`LambdaRouter`] on its `MOTO_PORT`, `cargo lambda watch`
//! running the real Lambda binaries against that moto, and the real definition
//! (`infra/statemachine.asl.json`) created in moto with the functions substituted.
//!
//! Everything binds 127.0.0.1 on free ports. Every process (with all it starts) is stopped by
//! `Drop` (also when a test panics) and, should the test process die without unwinding or the
//! stack live in a `static`, by a watchdog shell that waits for the test process to go away.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

use crate::paths::{repo_root, venv_bin};
use crate::sfn_router::LambdaRouter;

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "123456789012";
/// The Lambda binaries the definition calls, by substitution name.
pub const FUNCTIONS: [(&str, &str); 4] = [
    ("PlannerFunctionArn", "planner"),
    ("CopierFunctionArn", "copier"),
    ("FinalizerFunctionArn", "finalizer"),
    ("RollbackFunctionArn", "rollback"),
];

/// A child process and everything it starts (`cargo lambda watch` runs each function in a
/// process group of its own), stopped on drop: the whole process tree gets TERM, then KILL. A
/// watchdog does the same should the test process die without unwinding.
struct TreeProcess {
    child: Child,
    watchdog: Option<Child>,
    log: PathBuf,
}

/// `pid` and all its descendants, children before parents' parents (from `/proc`).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces, so split after the last `)`.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok());
            if let Some(ppid) = ppid {
                parents.push((p, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree.reverse();
    tree
}

fn signal(pids: &[u32], sig: &str) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(sig)
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl TreeProcess {
    /// Spawns `cmd`; its watchdog also removes `cleanup` (the stack's directory) if given.
    fn spawn(
        name: &'static str,
        mut cmd: Command,
        log: PathBuf,
        cleanup: Option<&Path>,
    ) -> TreeProcess {
        let out = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log file");
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
        const SCRIPT: &str = r#"t=$1; r=$2; d=$3
tree() { for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do tree "$c"; done; echo "$1"; }
while kill -0 "$t" 2>/dev/null; do sleep 0.5; done
pids=$(tree "$r")
kill -TERM $pids 2>/dev/null; sleep 3; kill -KILL $pids 2>/dev/null
if [ -n "$d" ]; then rm -rf "$d"; fi
"#;
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("s3quilt-sfn-watchdog")
            .arg(std::process::id().to_string())
            .arg(child.id().to_string())
            .arg(cleanup.map(Path::as_os_str).unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok();
        TreeProcess {
            child,
            watchdog,
            log,
        }
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn stop(&mut self) {
        if self.exited().is_none() {
            let tree = process_tree(self.child.id());
            signal(&tree, "-TERM");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && self.exited().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            // Children may outlive their parent's TERM.
            let alive: Vec<u32> = tree
                .into_iter()
                .filter(|p| Path::new(&format!("/proc/{p}")).exists())
                .collect();
            signal(&alive, "-KILL");
        }
        let _ = self.child.wait();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

impl Drop for TreeProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"))
}

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

/// A minimal blocking HTTP/1.1 request to 127.0.0.1 (for moto's config API and warm-up
/// invokes): returns (status, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("no answer within {timeout:?}")
            }
            _ => e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn tail(text: &str, max: usize) -> &str {
    crate::server::tail(text, max)
}

/// The stack: moto (executing state machines), the router on its `MOTO_PORT`, and
/// `cargo lambda watch` with the four binaries. Stopped on drop.
pub struct SfnStack {
    // Field order is drop order: the functions first, the router, then moto.
    lambdas: TreeProcess,
    router: LambdaRouter,
    moto: TreeProcess,
    moto_port: u16,
    lambda_port: u16,
    dir: PathBuf,
}

impl SfnStack {
    /// Starts everything and builds the functions (a warm-up invoke of each, so the first
    /// execution does not wait for compilation). `function_env` is added to the functions'
    /// environment (deployment settings such as `S3QUILT_SHARD_MAX_OBJECTS`).
    pub fn start(function_env: &[(&str, &str)]) -> SfnStack {
        let dir = std::env::temp_dir().join(format!(
            "s3quilt-sfn-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let (moto_port, lambda_port) = (free_port(), free_port());
        let router = LambdaRouter::start(moto_port, lambda_port);

        let mut cmd = Command::new(venv_bin("moto_server"));
        cmd.args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
            .env("MOTO_PORT", router.port().to_string())
            .current_dir(&dir);
        let mut moto = TreeProcess::spawn("moto", cmd, dir.join("moto.log"), Some(&dir));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !accepts(moto_port) {
            if let Some(status) = moto.exited() {
                panic!("moto exited with {status}:\n{}", moto.log());
            }
            assert!(
                Instant::now() < deadline,
                "moto did not start:\n{}",
                moto.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let config = r#"{"stepfunctions": {"execute_state_machine": true}, "lambda": {"use_docker": false}}"#;
        let (status, body) = http(
            moto_port,
            "POST",
            "/moto-api/config",
            config,
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("moto config API: {e}"));
        assert!(
            (200..300).contains(&status),
            "moto config API answered {status}: {body}"
        );

        let lambdas = Self::start_lambdas(&dir, moto_port, lambda_port, function_env);
        let mut stack = SfnStack {
            lambdas,
            router,
            moto,
            moto_port,
            lambda_port,
            dir,
        };
        stack.warm_up();
        stack
    }

    fn start_lambdas(
        dir: &Path,
        moto_port: u16,
        lambda_port: u16,
        function_env: &[(&str, &str)],
    ) -> TreeProcess {
        let cargo_lambda = venv_bin("cargo-lambda");
        let bin_dir = cargo_lambda.parent().expect("venv bin").to_path_buf();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![bin_dir];
        paths.extend(std::env::split_paths(&path));
        let endpoint = format!("http://127.0.0.1:{moto_port}");
        let mut env: Vec<(String, String)> = [
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", REGION),
            ("AWS_DEFAULT_REGION", REGION),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
            ("RUST_LOG", "info"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.extend(
            function_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );

        let mut cmd = Command::new(&cargo_lambda);
        // A target directory of its own: `cargo run --bin <function>` resolves other features
        // than workspace builds do, and in a shared target directory the two keep rebuilding
        // each other's dependencies.
        let target_dir = repo_root().join("target").join("lambda-watch");
        cmd.args([
            "lambda",
            "watch",
            "-A",
            "127.0.0.1",
            "-P",
            &lambda_port.to_string(),
        ])
        .args(["--concurrency", "4", "--ignore-changes"])
        // (`--target-dir` would also be passed to `cargo metadata`, which refuses it.)
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(repo_root())
        .env("PATH", std::env::join_paths(paths).expect("PATH"))
        .env("CARGO_TERM_COLOR", "never");
        for var in [
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in &env {
            cmd.arg("--env-var").arg(format!("{k}={v}"));
            cmd.env(k, v);
        }
        let mut lambdas =
            TreeProcess::spawn("cargo lambda watch", cmd, dir.join("lambdas.log"), None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !accepts(lambda_port) {
            if let Some(status) = lambdas.exited() {
                panic!(
                    "cargo lambda watch exited with {status}:\n{}",
                    tail(&lambdas.log(), 8000)
                );
            }
            assert!(
                Instant::now() < deadline,
                "cargo lambda watch did not listen on {lambda_port}:\n{}",
                tail(&lambdas.log(), 8000)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        lambdas
    }

    /// Invokes each function once with an empty event (an `S3Quilt.InvalidRequest` answer), so
    /// `cargo lambda watch` builds and starts them before the first execution.
    fn warm_up(&mut self) {
        for (_, function) in FUNCTIONS {
            let started = Instant::now();
            // The first one compiles the functions' dependencies (minutes on a cold target
            // directory and a busy machine).
            let result = self.invoke(function, "{}", Duration::from_secs(1800));
            match result {
                Ok((_, body)) if body.contains("S3Quilt.InvalidRequest") => {
                    eprintln!("sfn stack: {function} ready after {:?}", started.elapsed());
                }
                other => panic!(
                    "warm-up invoke of {function} failed: {other:?}\n--- cargo lambda watch ---\n{}",
                    tail(&self.lambdas.log(), 12000)
                ),
            }
        }
    }

    /// Invokes `function` through `cargo lambda watch` directly: (HTTP status, body).
    pub fn invoke(
        &self,
        function: &str,
        payload: &str,
        timeout: Duration,
    ) -> Result<(u16, String), String> {
        http(
            self.lambda_port,
            "POST",
            &format!("/2015-03-31/functions/{function}/invocations"),
            payload,
            timeout,
        )
    }

    /// The router (to install hooks and see invocations).
    pub fn router(&self) -> &LambdaRouter {
        &self.router
    }

    /// `http://127.0.0.1:<moto port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.moto_port)
    }

    /// The logs of moto and of `cargo lambda watch` (for failure messages).
    pub fn logs(&self) -> String {
        format!(
            "--- moto ---\n{}\n--- cargo lambda watch ---\n{}",
            tail(&self.moto.log(), 6000),
            tail(&self.lambdas.log(), 12000)
        )
    }

    fn credentials() -> Credentials {
        Credentials::new("testing", "testing", None, None, "s3quilt-sfn-tests")
    }

    /// An S3 client for this stack's moto.
    pub fn s3_client(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .credentials_provider(Self::credentials())
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// A Step Functions client for this stack's moto.
    pub fn sfn_client(&self) -> aws_sdk_sfn::Client {
        let conf = aws_sdk_sfn::Config::builder()
            .behavior_version(aws_sdk_sfn::config::BehaviorVersion::latest())
            .region(aws_sdk_sfn::config::Region::new(REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(Self::credentials())
            .build();
        aws_sdk_sfn::Client::from_conf(conf)
    }

    /// Creates the state machine from `infra/statemachine.asl.json` with the functions
    /// substituted (as SAM's DefinitionSubstitutions do) and returns its ARN.
    pub async fn create_state_machine(&self, name: &str) -> String {
        let definition = substituted_definition();
        let created = self
            .sfn_client()
            .create_state_machine()
            .name(name)
            .definition(definition)
            .role_arn(format!("arn:aws:iam::{ACCOUNT}:role/s3quilt-test"))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "CreateStateMachine: {}",
                    aws_sdk_sfn::error::DisplayErrorContext(&e)
                )
            });
        created.state_machine_arn().to_string()
    }
}

impl Drop for SfnStack {
    fn drop(&mut self) {
        self.lambdas.stop();
        self.moto.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `infra/statemachine.asl.json` with each `${…FunctionArn}` replaced by a Lambda ARN of the
/// binary's name.
pub fn substituted_definition() -> String {
    let path = repo_root().join("infra").join("statemachine.asl.json");
    let mut text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    for (placeholder, function) in FUNCTIONS {
        text = text.replace(
            &format!("${{{placeholder}}}"),
            &format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function}"),
        );
    }
    assert!(
        !text.contains("${"),
        "unsubstituted placeholder in {}",
        path.display()
    );
    text
}
