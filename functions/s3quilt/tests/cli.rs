//! The built `s3quilt` binary on bad `--request` input: exit code 2 and a message naming the
//! field, on stderr and in the `--json` document, before any S3 call (no server runs here).

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn s3quilt(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_s3quilt"))
        .args(args)
        // Nowhere to connect: a request that got past validation would fail differently.
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "none")
        .env("AWS_SECRET_ACCESS_KEY", "none")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run s3quilt");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().expect("wait for s3quilt")
}

#[test]
fn a_bad_request_file_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("request.json");
    std::fs::write(
        &path,
        r#"{"source_bucket": "src", "package_name": "team/pkg", "target_registry": "Not_A_Bucket"}"#,
    )
    .unwrap();
    let path = path.to_str().unwrap();
    for command in ["plan", "create"] {
        let out = s3quilt(&[command, "--request", path, "--json"], None);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let doc: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("one JSON document");
        let message = doc["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("--request: ")
                && message.contains("target_registry: \"Not_A_Bucket\""),
            "{message}"
        );
        assert_eq!(doc["error"]["kind"], "invalid_argument");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("target_registry"), "{stderr}");
    }

    // From stdin, a wrongly typed field of the wrapped form.
    let wrapped = r#"{"request": {"source_bucket": "src", "package_name": "team/pkg",
        "target_registry": "reg", "preserve_structure": "no"}, "max_concurrency": 8}"#;
    let out = s3quilt(&["plan", "--request", "-"], Some(wrapped));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--request: stdin: request.preserve_structure: invalid type"),
        "{stderr}"
    );
}

#[test]
fn request_conflicts_with_the_request_field_flags() {
    let out = s3quilt(
        &[
            "plan",
            "--request",
            "r.json",
            "--include",
            "*.csv",
            "--json",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["error"]["kind"], "usage");
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("--request") && message.contains("--include"),
        "{message}"
    );
}

#[test]
fn help_describes_object_metadata_and_request() {
    let out = s3quilt(&["create", "--help"], None);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--object-metadata <WHAT>",
        "listing",
        "halves the S3",
        "--request <FILE>",
        "S3 requests in flight",
    ] {
        assert!(help.contains(needle), "{needle}:\n{help}");
    }
}
