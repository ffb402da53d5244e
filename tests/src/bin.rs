//! The `s3quilt` binary for tests that run it as a subprocess (`cargo test` builds no binary of
//! another package, so `CARGO_BIN_EXE_s3quilt` is not available here).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::paths::repo_root;

/// The `s3quilt` binary, built once per test process. `--workspace --tests` gives the feature
/// set `cargo test --workspace` resolved, so after it only the binary itself is compiled;
/// `cargo build -p s3quilt` would resolve other features and rebuild the AWS SDK.
///
/// Panics (the test fails) if the build fails.
pub fn s3quilt_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = repo_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(&cargo);
        build
            .args([
                "build",
                "--workspace",
                "--tests",
                "--bin",
                "s3quilt",
                "--quiet",
            ])
            .current_dir(&root);
        // The variables cargo sets for this test process are not a build's: some build scripts
        // (ring's) watch CARGO_MANIFEST_DIR, and building with it set would make the next
        // plain `cargo` command rebuild them and everything above them.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_BIN_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                    "OUT_DIR",
                ]
                .contains(&name.as_ref())
            {
                build.env_remove(name.as_ref());
            }
        }
        let status = build
            .status()
            .unwrap_or_else(|e| panic!("cannot run {cargo} build: {e}"));
        assert!(status.success(), "cargo build of the s3quilt binary failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let bin = target.join("debug").join("s3quilt");
        assert!(bin.is_file(), "{} was not built", bin.display());
        bin
    })
    .clone()
}

/// What a child process printed, and how it ended.
pub struct ChildOutput {
    /// Exit status.
    pub status: std::process::ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: std::time::Duration,
}

/// Runs `cmd` with stdin closed and stdout/stderr captured (read on threads, so a chatty child
/// never blocks on a full pipe), killing it and panicking with its stderr if it outlives
/// `timeout`. `what` names the child in that message.
pub fn run_child(cmd: &mut Command, what: &str, timeout: std::time::Duration) -> ChildOutput {
    use std::io::Read;
    use std::process::Stdio;
    let started = std::time::Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let stdout = reader(Box::new(child.stdout.take().expect("stdout is piped")));
    let stderr = reader(Box::new(child.stderr.take().expect("stderr is piped")));
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .unwrap_or_else(|e| panic!("wait for {what}: {e}"))
        {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} timed out after {timeout:?}\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    ChildOutput {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}
