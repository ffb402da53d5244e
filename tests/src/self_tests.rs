//! Self-tests of the harness: servers, S3 helpers, watchdog and the quilt3 oracle.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_s3::types::{ChecksumMode, ObjectIdentifier};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::*;

fn sha256_b64(b: &[u8]) -> String {
    B64.encode(Sha256::digest(b))
}

/// True while `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 (after the parenthesised command name) is the state.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(true),
        Err(_) => false,
    }
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A file in the shared moto server's directory (removed with the server).
fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = moto().dir().join("scratch");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn paths_and_vectors() {
    assert!(repo_root().join("Cargo.toml").is_file());
    assert!(vectors_dir().ends_with("tests/vectors"));
    let v = load_vector("hashes.json");
    assert_eq!(v["quilt3"], "8.0.0");
    assert!(venv_bin("python").is_file());
}

#[test]
#[should_panic(expected = "bash .ci/run")]
fn missing_tool_fails_loudly() {
    venv_bin("no-such-tool-s3quilt");
}

async fn exercise_server(server: &S3Server) {
    let client = server.client().await;
    let bucket = create_bucket(&client, true).await;
    assert!(bucket.starts_with("t-") && bucket == bucket.to_lowercase());

    let key = "dir/sub/ü a+b.txt";
    let body = b"hello harness".to_vec();
    let v1 = seed(
        &client,
        &bucket,
        &[SeedObject::new(key, body.clone())
            .content_type("text/plain; charset=utf-8")
            .meta("origin", "self-test")
            .meta("Mixed-Case", "v")],
    )
    .await;
    assert_eq!(v1.len(), 1);
    let v1 = v1[0]
        .clone()
        .expect("versioned bucket returns a version id");

    let head = client
        .head_object()
        .bucket(&bucket)
        .key(key)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("text/plain; charset=utf-8"));
    let meta = head.metadata().cloned().unwrap_or_default();
    assert_eq!(meta.get("origin").map(String::as_str), Some("self-test"));
    assert_eq!(meta.get("mixed-case").map(String::as_str), Some("v"));
    assert_eq!(
        head.checksum_sha256().map(str::to_string),
        Some(sha256_b64(&body))
    );
    assert_eq!(get_bytes(&client, &bucket, key).await, body);

    // A second version, an empty object and a delete marker.
    let v2 = seed(
        &client,
        &bucket,
        &[
            SeedObject::new(key, b"v2".to_vec()),
            SeedObject::new("empty", Vec::new()),
        ],
    )
    .await;
    let del = client
        .delete_object()
        .bucket(&bucket)
        .key("empty")
        .send()
        .await
        .unwrap();
    let marker = del.version_id().map(str::to_string);
    assert!(marker.is_some());
    let versions = list_all_versions(&client, &bucket).await;
    let mut expected = vec![
        (key.to_string(), Some(v1), false),
        (key.to_string(), v2[0].clone(), false),
        ("empty".to_string(), v2[1].clone(), false),
        ("empty".to_string(), marker, true),
    ];
    expected.sort();
    assert_eq!(versions, expected);
    assert_eq!(get_bytes(&client, &bucket, key).await, b"v2");

    // Unversioned buckets are listed without version ids.
    let plain = create_bucket(&client, false).await;
    seed(
        &client,
        &plain,
        &[SeedObject::new("b", "2"), SeedObject::new("a", "1")],
    )
    .await;
    assert_eq!(
        list_all_versions(&client, &plain).await,
        vec![
            ("a".to_string(), None, false),
            ("b".to_string(), None, false)
        ]
    );
}

#[tokio::test]
async fn moto_server_roundtrip() {
    let server = moto();
    assert!(server.endpoint().starts_with("http://127.0.0.1:"));
    assert!(server.endpoint().ends_with(&format!(":{}", server.port())));
    let env = server.env();
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("AWS_ENDPOINT_URL").as_deref(), Some(server.endpoint()));
    assert_eq!(get("QUILT_DISABLE_USAGE_METRICS").as_deref(), Some("true"));
    assert_eq!(get("AWS_ACCESS_KEY_ID").as_deref(), Some("testing"));
    exercise_server(server).await;
}

#[tokio::test]
async fn listing_paginates() {
    let client = moto().client().await;
    for versioned in [true, false] {
        let bucket = create_bucket(&client, versioned).await;
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..6 {
            let (client, bucket) = (client.clone(), bucket.clone());
            tasks.spawn(async move {
                let objs: Vec<SeedObject> = (0..180)
                    .map(|i| SeedObject::new(format!("k/{t}/{i:04}"), "x"))
                    .collect();
                seed(&client, &bucket, &objs).await
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let all = list_all_versions(&client, &bucket).await;
        assert_eq!(all.len(), 1080, "versioned={versioned}");
        assert!(all.iter().all(|(_, v, _)| v.is_some() == versioned));
        // Delete a batch so the versioned listing also has delete markers.
        if versioned {
            let ids: Vec<ObjectIdentifier> = all[..5]
                .iter()
                .map(|(k, _, _)| ObjectIdentifier::builder().key(k).build().unwrap())
                .collect();
            client
                .delete_objects()
                .bucket(&bucket)
                .delete(
                    aws_sdk_s3::types::Delete::builder()
                        .set_objects(Some(ids))
                        .build()
                        .unwrap(),
                )
                .send()
                .await
                .unwrap();
            let all = list_all_versions(&client, &bucket).await;
            assert_eq!(all.len(), 1085);
            assert_eq!(all.iter().filter(|(_, _, d)| *d).count(), 5);
        }
    }
}

#[test]
fn drop_stops_the_server() {
    let server = S3Server::start_moto();
    let (pid, dir) = (server.pid(), server.dir().to_path_buf());
    assert!(alive(pid));
    assert!(dir.is_dir());
    assert_ne!(server.port(), moto().port());
    drop(server);
    assert!(!alive(pid), "moto {pid} still running after drop");
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
}

/// Helper for `watchdog_stops_server_of_killed_process`: does nothing unless run by it.
/// `S3QUILT_WATCHDOG_HELPER` names the server kind.
#[test]
fn watchdog_helper_process() {
    let Some(kind) = std::env::var_os("S3QUILT_WATCHDOG_HELPER") else {
        return;
    };
    let kind = ServerKind::from_name(kind.to_str().unwrap()).unwrap();
    let server = kind.shared();
    println!("SERVER {} {}", server.pid(), server.dir().display());
    std::thread::sleep(Duration::from_secs(180));
}

/// Runs `watchdog_helper_process` with a shared server of `kind` in a child test process,
/// SIGKILLs the child, and returns the server's (pid, dir) once the child is gone.
fn start_server_in_killed_process(kind: ServerKind) -> (u32, PathBuf) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "self_tests::watchdog_helper_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("S3QUILT_WATCHDOG_HELPER", kind.name())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    let mut found = None;
    for l in std::io::BufReader::new(stdout).lines() {
        line = l.unwrap();
        // The harness prints "test <name> ... " before the helper's own output.
        if let Some((_, rest)) = line.split_once("SERVER ") {
            let (pid, dir) = rest.split_once(' ').unwrap();
            found = Some((pid.parse::<u32>().unwrap(), PathBuf::from(dir)));
            break;
        }
    }
    let (pid, dir) = found.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("helper printed no SERVER line (last line {line:?})")
    });
    assert!(alive(pid));
    child.kill().unwrap(); // SIGKILL: no Drop, no atexit
    child.wait().unwrap();
    (pid, dir)
}

#[test]
fn watchdog_stops_server_of_killed_process() {
    let (pid, dir) = start_server_in_killed_process(ServerKind::Moto);
    wait_until(
        "the watchdog to stop the orphaned server",
        Duration::from_secs(20),
        || !alive(pid),
    );
    wait_until(
        "the watchdog to remove the server dir",
        Duration::from_secs(10),
        || !dir.exists(),
    );
}

#[test]
fn watchdog_stops_the_localstack_group_of_killed_process() {
    let (pid, dir) = start_server_in_killed_process(ServerKind::LocalStack);
    wait_until(
        "the watchdog to stop the orphaned LocalStack group",
        Duration::from_secs(40),
        || crate::server::processes_in_group(pid).is_empty(),
    );
    wait_until(
        "the watchdog to remove the server dir",
        Duration::from_secs(10),
        || !dir.exists(),
    );
}

/// The local addresses the processes of group `pgid` listen on (TCP), from `ss -ltnpH`.
fn listening_addresses(pgid: u32) -> Vec<String> {
    let pids = crate::server::processes_in_group(pgid);
    let out = std::process::Command::new("ss")
        .args(["-ltnpH"])
        .output()
        .expect("ss (iproute2) runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| pids.iter().any(|p| l.contains(&format!("pid={p},"))))
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn localstack_binds_loopback_keeps_files_in_its_dir_and_stops_its_group() {
    let started = Instant::now();
    let server = tokio::task::spawn_blocking(S3Server::start_localstack)
        .await
        .unwrap();
    eprintln!("LocalStack ready after {:?}", started.elapsed());
    assert_eq!(server.kind(), ServerKind::LocalStack);
    let (pid, dir) = (server.pid(), server.dir().to_path_buf());
    let addresses = listening_addresses(pid);
    assert_eq!(
        addresses,
        [format!("127.0.0.1:{}", server.port())],
        "LocalStack must listen on its port on 127.0.0.1 only"
    );
    exercise_server(&server).await;
    // Objects are stored under the server's directory, not in /tmp/localstack-s3-storage.
    let client = server.client().await;
    let bucket = create_bucket(&client, false).await;
    seed(
        &client,
        &bucket,
        &[SeedObject::new("big", vec![7u8; 600 * 1024])],
    )
    .await;
    assert!(dir.join("s3-storage").join(&bucket).is_dir());
    assert!(
        !Path::new("/tmp/localstack-s3-storage")
            .join(&bucket)
            .exists()
    );
    let stopping = Instant::now();
    drop(server);
    eprintln!("LocalStack stopped after {:?}", stopping.elapsed());
    assert!(
        crate::server::processes_in_group(pid).is_empty(),
        "LocalStack's group {pid} still has processes after drop"
    );
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
}

#[test]
fn server_list_parsing() {
    use crate::server::parse_server_list;
    use ServerKind::*;
    assert_eq!(parse_server_list(""), ServerKind::ALL);
    assert_eq!(parse_server_list(" "), ServerKind::ALL);
    assert_eq!(parse_server_list("moto"), [Moto]);
    assert_eq!(
        parse_server_list(" seaweedfs , moto,,moto"),
        [SeaweedFs, Moto]
    );
    for kind in ServerKind::ALL {
        assert_eq!(ServerKind::from_name(kind.name()), Some(kind));
    }
}

#[test]
#[should_panic(expected = "unknown server \"minio\"")]
fn server_list_refuses_unknown_names() {
    crate::server::parse_server_list("moto,minio");
}

/// A client to `proxy` for `server`'s credentials, without retries, with this attempt timeout.
fn client_via(
    server: &S3Server,
    proxy: &FaultProxy,
    attempt_timeout: Duration,
) -> aws_sdk_s3::Client {
    let conf = server
        .config_builder()
        .endpoint_url(proxy.endpoint())
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(attempt_timeout)
                .build(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

async fn exists(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> bool {
    client
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_apply_then_reset_applies_the_put_but_loses_the_reply() {
    let server = moto();
    let direct = server.client().await;
    let bucket = create_bucket(&direct, false).await;
    let proxy = FaultProxy::start(
        server.endpoint(),
        vec![ProxyRule {
            operation: "PutObject",
            select: Select::Calls(1..=1),
            fault: Fault::ApplyThenReset,
        }],
    );
    let client = client_via(server, &proxy, Duration::from_secs(10));
    let put = |key: &'static str| {
        client
            .put_object()
            .bucket(&bucket)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b"applied"))
            .send()
    };
    let lost = put("lost-reply").await;
    assert!(
        lost.is_err(),
        "the client must not see the answer: {lost:?}"
    );
    assert_eq!(get_bytes(&direct, &bucket, "lost-reply").await, b"applied");
    put("second").await.expect("the second PutObject passes");

    assert_eq!(proxy.count("PutObject"), 2);
    assert_eq!(proxy.counts().get("PutObject"), Some(&2));
    assert_eq!(proxy.faults_injected(), 1);
    let log = proxy.log();
    let (first, second) = (&log[0], &log[1]);
    assert_eq!(first.operation, "PutObject");
    assert_eq!(first.method, "PUT");
    assert_eq!(first.path, format!("/{bucket}/lost-reply"));
    assert!(first.forwarded);
    assert_eq!(first.status, None);
    assert_eq!(first.fault.as_deref(), Some("ApplyThenReset"));
    assert!(
        first.header("Content-Length").is_some()
            || first.header("x-amz-decoded-content-length").is_some()
    );
    assert!(second.forwarded);
    assert_eq!(second.status, Some(200));
    assert_eq!(second.fault, None);
    assert_eq!(second.seq, first.seq + 1);
    proxy.clear_log();
    assert_eq!(proxy.count("*"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_stall_never_reaches_the_server_delay_does() {
    let server = moto();
    let direct = server.client().await;
    let bucket = create_bucket(&direct, false).await;
    let proxy = FaultProxy::start(
        server.endpoint(),
        vec![
            ProxyRule {
                operation: "PutObject",
                select: Select::Calls(1..=1),
                fault: Fault::StallPastTimeout(Duration::from_secs(3)),
            },
            // A rule counts the calls the rules before it let through: this is the 2nd PutObject.
            ProxyRule {
                operation: "PutObject",
                select: Select::Calls(1..=1),
                fault: Fault::Delay(Duration::from_secs(3)),
            },
        ],
    );
    let client = client_via(server, &proxy, Duration::from_secs(1));
    for key in ["stalled", "delayed"] {
        let started = Instant::now();
        let r = client
            .put_object()
            .bucket(&bucket)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b"x"))
            .send()
            .await;
        assert!(r.is_err(), "{key}: the attempt must time out");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{key}: timed out late"
        );
    }
    // Both requests were received; only the delayed one reached moto (before its answer was
    // held: it is there although the client gave up).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !exists(&direct, &bucket, "delayed").await {
        assert!(
            Instant::now() < deadline,
            "the delayed PutObject never reached moto"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // past the stall
    assert!(!exists(&direct, &bucket, "stalled").await);
    let forwarded: Vec<bool> = proxy.log().iter().map(|r| r.forwarded).collect();
    assert_eq!(forwarded, [false, true]);
    assert_eq!(proxy.count("PutObject"), 2);
}

fn check_browse_matches_push(pushed: &Value, browsed: &Value) {
    assert_eq!(browsed["top_hash"], pushed["top_hash"]);
    assert_eq!(browsed["loaded_top_hash"], pushed["top_hash"]);
    assert_eq!(browsed["all_hashes_valid"], true, "{browsed:#}");
    let (p, b) = (
        pushed["entries"].as_array().unwrap(),
        browsed["entries"].as_array().unwrap(),
    );
    assert_eq!(p.len(), b.len());
    for (pe, be) in p.iter().zip(b) {
        for field in [
            "logical_key",
            "physical_key",
            "size",
            "hash",
            "meta",
            "user_meta",
        ] {
            assert_eq!(pe[field], be[field], "{field} of {}", pe["logical_key"]);
        }
        assert_eq!(be["hash_valid"], true);
    }
}

#[tokio::test]
async fn oracle_push_and_browse_on_moto() {
    let server = moto();
    let client = server.client().await;
    let src = create_bucket(&client, true).await;
    let reg = create_bucket(&client, true).await;
    let objects = [
        SeedObject::new("data/one.txt", "one")
            .content_type("text/plain")
            .meta("m", "1"),
        SeedObject::new("data/sub/deep/two.csv", "a,b\n1,2\n").content_type("text/csv"),
        SeedObject::new("data/a b/ü ñ.txt", "unicode ✓"),
        SeedObject::new("data/empty", Vec::new()),
        SeedObject::new("data/a-c.txt", vec![7u8; 1000]),
    ];
    seed(&client, &src, &objects).await;
    let in_place = seed(&client, &reg, &[SeedObject::new("inplace/x.bin", "here")]).await;

    let spec = json!([
        {"logical_key": "one.txt", "source": format!("s3://{src}/data/one.txt"), "meta": {"x": 1, "f": 1.5}},
        {"logical_key": "sub/deep/two.csv", "source": format!("s3://{src}/data/sub/deep/two.csv"), "meta": null},
        {"logical_key": "a b/ü ñ.txt", "source": format!("s3://{src}/data/a%20b/%C3%BC%20%C3%B1.txt"), "meta": {"ünï": "cödé"}},
        {"logical_key": "empty", "source": format!("s3://{src}/data/empty"), "meta": {}},
        {"logical_key": "a-c.txt", "source": format!("s3://{src}/data/a-c.txt"), "meta": null},
        {"logical_key": "a/b.txt", "source": format!("s3://{reg}/inplace/x.bin"), "meta": null},
    ]);
    let spec_path = scratch_file(&format!("spec-{reg}.json"), spec.to_string().as_bytes());
    let registry = format!("s3://{reg}");
    let pushed = run_oracle(
        server,
        &[
            "push",
            "--registry",
            &registry,
            "--name",
            "team/pkg",
            "--spec",
            spec_path.to_str().unwrap(),
            "--message",
            "first ✓",
            "--meta",
            r#"{"k": [1, 2.5]}"#,
        ],
    );
    let top_hash = pushed["top_hash"].as_str().unwrap().to_string();
    assert_eq!(top_hash.len(), 64);
    assert_eq!(
        pushed["manifest_key"],
        format!(".quilt/packages/{top_hash}")
    );
    assert_eq!(pushed["message"], "first ✓");
    assert_eq!(pushed["user_meta"], json!({"k": [1, 2.5]}));
    assert_eq!(
        pushed["header"],
        json!({"version": "v0", "user_meta": {"k": [1, 2.5]}, "message": "first ✓"})
    );

    // Walk order: folder `a` before `a b` before `a-c.txt`.
    let keys: Vec<&str> = pushed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["logical_key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "a/b.txt",
            "a b/ü ñ.txt",
            "a-c.txt",
            "empty",
            "one.txt",
            "sub/deep/two.csv"
        ]
    );
    let entry = |lk: &str| {
        pushed["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["logical_key"] == lk)
            .unwrap()
            .clone()
    };
    // Copied objects land under <name>/<logical key> with a version id; objects already in the
    // registry bucket are referenced in place.
    assert!(
        entry("a b/ü ñ.txt")["physical_key"]
            .as_str()
            .unwrap()
            .starts_with(&format!(
                "s3://{reg}/team/pkg/a%20b/%C3%BC%20%C3%B1.txt?versionId="
            ))
    );
    assert_eq!(
        entry("a/b.txt")["physical_key"],
        format!(
            "s3://{reg}/inplace/x.bin?versionId={}",
            in_place[0].as_deref().unwrap()
        )
    );
    assert_eq!(
        entry("one.txt")["meta"],
        json!({"user_meta": {"x": 1, "f": 1.5}})
    );
    assert_eq!(entry("empty")["meta"], json!({"user_meta": {}}));
    assert_eq!(entry("a-c.txt")["meta"], json!({}));
    assert_eq!(
        entry("empty")["hash"],
        json!({"type": "sha2-256-chunked", "value": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="})
    );

    let browsed = run_oracle(
        server,
        &["browse", "--registry", &registry, "--name", "team/pkg"],
    );
    check_browse_matches_push(&pushed, &browsed);
    let by_hash = run_oracle(
        server,
        &[
            "browse",
            "--registry",
            &registry,
            "--name",
            "team/pkg",
            "--top-hash",
            &top_hash[..10],
        ],
    );
    check_browse_matches_push(&pushed, &by_hash);
    let be = &browsed["entries"][1];
    assert_eq!(be["bytes_sha256"], hex_sha256("unicode ✓".as_bytes()));

    // The registry layout.
    let keys: Vec<String> = list_all_versions(&client, &reg)
        .await
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    assert!(keys.contains(&format!(".quilt/packages/{top_hash}")));
    assert!(keys.contains(&".quilt/named_packages/team/pkg/latest".to_string()));
    assert!(keys.contains(&"team/pkg/sub/deep/two.csv".to_string()));
    assert_eq!(
        get_bytes(&client, &reg, ".quilt/named_packages/team/pkg/latest").await,
        top_hash.as_bytes()
    );
}

fn hex_sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn oracle_hash_matches_vectors() {
    let vectors = load_vector("hashes.json");
    let server = moto();
    for case in vectors["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let size = case["size"].as_u64().unwrap() as usize;
        let bytes: Vec<u8> = match name {
            "empty" => Vec::new(),
            "a" => b"a".to_vec(),
            "zeros_1MiB" => vec![0; size],
            n if n.starts_with("pattern_") && size <= 9 << 20 => {
                (0..size).map(|i| (i % 251) as u8).collect()
            }
            _ => continue,
        };
        let path = scratch_file(&format!("hash-{name}"), &bytes);
        let got = run_oracle(server, &["hash", "--file", path.to_str().unwrap()]);
        assert_eq!(got["sha2-256-chunked"], case["sha2-256-chunked"], "{name}");
        assert_eq!(got["CRC64NVME"], case["CRC64NVME"], "{name}");
        assert_eq!(got["SHA256"], case["SHA256_legacy_hex"], "{name}");
        assert_eq!(got["size"], size, "{name}");
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn oracle_failure_is_reported() {
    let out = run_oracle_output(
        moto(),
        &[
            "browse",
            "--registry",
            "s3://no-such-bucket-s3quilt",
            "--name",
            "a/b",
        ],
    );
    assert!(!out.success());
    assert!(out.json.as_ref().unwrap()["error"].is_string(), "{out:?}");
}

fn assert_gone(pid: u32, dir: &Path) {
    assert!(!alive(pid), "server {pid} still running after drop");
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
}

#[tokio::test]
async fn seaweedfs_two_instances() {
    let a = S3Server::start_seaweedfs();
    let b = S3Server::start_seaweedfs();
    assert_ne!(a.port(), b.port());
    assert_eq!(a.credentials(), ("test", "testtest"));
    exercise_server(&a).await;
    exercise_server(&b).await;
    let (pa, da) = (a.pid(), a.dir().to_path_buf());
    let (pb, db) = (b.pid(), b.dir().to_path_buf());
    drop(a);
    drop(b);
    assert_gone(pa, &da);
    assert_gone(pb, &db);
}

#[tokio::test]
async fn oracle_verifies_crc64nvme_and_flags_bad_hashes() {
    let server = moto();
    let client = server.client().await;
    let bucket = create_bucket(&client, false).await;
    let case_a = load_vector("hashes.json")["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "a")
        .unwrap()
        .clone();
    let fake_hash = "0".repeat(64);
    let lines = [
        json!({"version": "v0", "message": null}),
        json!({"logical_key": "crc.txt", "physical_keys": [format!("s3://{bucket}/a.txt")], "size": 1,
               "hash": {"type": "CRC64NVME", "value": case_a["CRC64NVME"]}, "meta": {}}),
        json!({"logical_key": "wrong.txt", "physical_keys": [format!("s3://{bucket}/a.txt")], "size": 1,
               "hash": {"type": "sha2-256-chunked", "value": sha256_b64(b"")}, "meta": {}}),
    ];
    let manifest: String = lines.iter().map(|l| format!("{l}\n")).collect();
    seed(
        &client,
        &bucket,
        &[
            SeedObject::new("a.txt", "a"),
            SeedObject::new(format!(".quilt/packages/{fake_hash}"), manifest),
            SeedObject::new(".quilt/named_packages/t/p/latest", fake_hash.clone()),
        ],
    )
    .await;
    let registry = format!("s3://{bucket}");
    let got = run_oracle(
        server,
        &["browse", "--registry", &registry, "--name", "t/p"],
    );
    assert_eq!(got["loaded_top_hash"], fake_hash);
    assert_ne!(got["top_hash"], fake_hash);
    assert_eq!(got["entries"][0]["logical_key"], "crc.txt");
    assert_eq!(got["entries"][0]["hash_valid"], true);
    assert_eq!(got["entries"][1]["hash_valid"], false);
    assert_eq!(got["all_hashes_valid"], false);
    assert_eq!(got["has_user_meta"], false);
    assert_eq!(got["entries"][0]["bytes_sha256"], hex_sha256(b"a"));
}
