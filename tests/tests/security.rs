//! Security: no credential (secret key, session token) reaches logs or error messages, even at
//! TRACE level and on failure paths; logical keys cannot escape `namespace/name/`.

use std::io::Write;
use std::sync::{Arc, Mutex};

use aws_sdk_s3::config::{Credentials, Region};
use s3quilt_core::engine::{EngineOptions, Progress, run_local};
use s3quilt_core::request::PackageRequest;
use s3quilt_core::storage::S3Store;
use s3quilt_tests::{
    S3Server, SeedObject, create_bucket, list_all_versions, moto, seed, server_tests,
};

const SECRET: &str = "SECRETsentinel/5f2b9cde+QuiltKey";
const TOKEN: &str = "TOKENsentinel-9a8b7c6d5e4f3a2b1c";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn credentials_never_reach_logs_or_errors() {
    let server = moto();
    let plain = server.client().await;
    let (source, registry) = (
        create_bucket(&plain, true).await,
        create_bucket(&plain, true).await,
    );
    seed(
        &plain,
        &source,
        &[
            SeedObject::new("d/a.csv", b"1".to_vec()),
            SeedObject::new("d/b.csv", b"2".to_vec()),
        ],
    )
    .await;

    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(server.endpoint())
        .force_path_style(true)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "AKIDSENTINEL",
            SECRET,
            Some(TOKEN.to_string()),
            None,
            "test",
        ))
        .build();
    let store = S3Store::shared(aws_sdk_s3::Client::from_conf(config));

    let mut errors = Vec::new();
    // A run that works, and runs that fail in planning and at the source.
    let ok = run_local(
        store.clone(),
        &PackageRequest::new(&source, "d", "team/secure", &registry),
        &EngineOptions::default(),
        Progress::new(),
    )
    .await;
    assert!(ok.is_ok(), "{:?}", ok.err().map(|e| e.to_string()));
    for request in [
        PackageRequest::new("no-such-bucket-secure", "d", "team/secure", &registry),
        PackageRequest::new(&source, "d", "team/secure", "no-such-registry-secure"),
        PackageRequest::new(&source, "nothing", "team/secure", &registry),
    ] {
        let err = run_local(
            store.clone(),
            &request,
            &EngineOptions::default(),
            Progress::new(),
        )
        .await
        .unwrap_err();
        errors.push(format!("{err} {err:?}"));
    }
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).to_string();
    assert!(
        logs.len() > 1000,
        "TRACE logging captured the SDK's requests ({} bytes)",
        logs.len()
    );
    for text in errors.iter().chain(std::iter::once(&logs)) {
        assert!(!text.contains(SECRET), "secret key leaked");
        assert!(!text.contains(TOKEN), "session token leaked");
        assert!(!text.contains("X-Amz-Signature="), "a presigned URL leaked");
    }
}

async fn keys_cannot_escape_the_package_folder(server: &'static S3Server) {
    let client = server.client().await;
    let (source, registry) = (
        server.versioned_bucket_where_supported().await,
        server.versioned_bucket_where_supported().await,
    );
    // S3 accepts these keys; as logical keys they would climb out of `team/escape/`.
    seed(
        &client,
        &source,
        &[
            SeedObject::new("d/../../other-team/pkg/x.csv", b"1".to_vec()),
            SeedObject::new("d/ok.csv", b"2".to_vec()),
        ],
    )
    .await;
    let before = list_all_versions(&client, &registry).await;
    let err = run_local(
        S3Store::shared(client.clone()),
        &PackageRequest::new(&source, "d", "team/escape", &registry),
        &EngineOptions::default(),
        Progress::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("`..`"), "{err}");
    assert_eq!(list_all_versions(&client, &registry).await, before);
    // A leading `/` cannot be produced either: the relative key of `d//x` is `/x`, refused.
    assert!("/x".parse::<s3quilt_core::quilt::LogicalKey>().is_err());
}

/// `s3quilt` on a machine without AWS configuration (no credentials anywhere), against an
/// endpoint where nothing listens. `extra` adds variables.
fn cli_on_a_bare_machine(args: &[&str], extra: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(s3quilt_tests::s3quilt_bin())
        .env_clear()
        .envs([
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/nonexistent"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/nonexistent/s3quilt-aws-config"),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/s3quilt-aws-credentials",
            ),
        ])
        .envs(extra.iter().copied())
        .args(args)
        .output()
        .expect("run s3quilt")
}

const PLAN: [&str; 8] = [
    "plan",
    "s3://some-bucket/data/",
    "team/pkg",
    "--registry",
    "s3://some-registry",
    "--endpoint-url",
    "http://127.0.0.1:1",
    "--json",
];

#[test]
fn the_cli_names_the_setting_to_change_when_credentials_or_the_endpoint_are_wrong() {
    let out = cli_on_a_bare_machine(&PLAN, &[]);
    let error: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json error");
    assert_eq!(out.status.code(), Some(3), "{error}");
    assert_eq!(error["error"]["kind"], "no_credentials", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    for needle in [
        "no AWS credentials",
        "AWS_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "--profile",
    ] {
        assert!(message.contains(needle), "{needle}: {message}");
    }
    assert!(!message.contains("DispatchFailure"), "{message}");

    let out = cli_on_a_bare_machine(
        &PLAN,
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
        ],
    );
    let error: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json error");
    assert_eq!(out.status.code(), Some(1), "{error}");
    assert_eq!(error["error"]["kind"], "unreachable", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    for needle in ["could not connect", "127.0.0.1:1", "--endpoint-url"] {
        assert!(message.contains(needle), "{needle}: {message}");
    }
    let everything = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!everything.contains(SECRET), "{everything}");
}

#[test]
fn the_cli_refuses_a_deeply_nested_glob_before_any_request() {
    let pattern = format!("{}a{}", "{".repeat(2000), "}".repeat(2000));
    let mut args = PLAN.to_vec();
    args.extend(["--include", &pattern]);
    let out = cli_on_a_bare_machine(&args, &[]);
    let error: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json error");
    assert_eq!(out.status.code(), Some(2), "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("include_patterns: ")
            && message.contains("nest 2000 deep; at most 16 levels")
            && message.contains("--include"),
        "{message}"
    );
    // The 8,000-deep pattern that used to overflow the stack is refused too.
    let long = format!("{}a{}", "{".repeat(8000), "}".repeat(8000));
    let mut args = PLAN.to_vec();
    args.extend(["--include", &long]);
    let out = cli_on_a_bare_machine(&args, &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

server_tests! {
    // `ServerKind::stores_dot_segments` (the escaping keys are `..` segments).
    keys_cannot_escape_the_package_folder => [moto, localstack];
}
