//! quilt3 8.0.0 as the format oracle: runs `tests/py/quilt_oracle.py` with the venv's python.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::paths::{repo_root, venv_bin};
use crate::server::{S3Server, tail};

/// How long one oracle run may take.
const ORACLE_TIMEOUT: Duration = Duration::from_secs(300);

/// What an oracle run printed.
#[derive(Debug)]
pub struct OracleOutput {
    /// The exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The last non-empty stdout line parsed as JSON, if it is JSON.
    pub json: Option<serde_json::Value>,
}

impl OracleOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `python tests/py/quilt_oracle.py <args>` from the venv with `server`'s environment and
/// returns the last stdout line as JSON. Panics with stdout and stderr if the exit status is not
/// 0 or the last line is not JSON.
///
/// Subcommands: `browse --registry s3://B --name NS/N [--top-hash H]`,
/// `push --registry s3://B --name NS/N --spec FILE [--message M] [--meta JSON] [--no-workflow |
/// --workflow ID] [--copy-all] [--dest URL]`, `hash --file PATH` (see the script's docstring).
pub fn run_oracle(server: &S3Server, args: &[&str]) -> serde_json::Value {
    let out = run_oracle_output(server, args);
    match (&out.json, out.success()) {
        (Some(v), true) => v.clone(),
        _ => panic!(
            "quilt oracle {args:?} failed (exit {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.code,
            tail(&out.stdout, 8000),
            tail(&out.stderr, 8000),
        ),
    }
}

/// Like [`run_oracle`] but does not panic when the oracle fails (for tests that expect quilt3 to
/// refuse something); it still panics if the oracle cannot be started or times out.
pub fn run_oracle_output(server: &S3Server, args: &[&str]) -> OracleOutput {
    let python = venv_bin("python");
    let script = repo_root().join("tests").join("py").join("quilt_oracle.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script).args(args);
    server.apply_env(&mut cmd);
    cmd.env("PYTHONIOENCODING", "utf-8")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .current_dir(server.dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));

    let mut stdout_pipe = child.stdout.take().expect("stdout is piped");
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let stdout_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout_pipe.read_to_end(&mut buf);
        buf
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut buf);
        buf
    });

    let deadline = Instant::now() + ORACLE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = stderr_reader.join().unwrap_or_default();
                panic!(
                    "quilt oracle {args:?} timed out after {ORACLE_TIMEOUT:?}\n--- stderr ---\n{}",
                    tail(&String::from_utf8_lossy(&stderr), 8000)
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for the quilt oracle: {e}"),
        }
    };
    let stdout = String::from_utf8_lossy(&stdout_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&stderr_reader.join().unwrap_or_default()).into_owned();
    let json = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok());
    OracleOutput {
        code: status.code(),
        stdout,
        stderr,
        json,
    }
}
