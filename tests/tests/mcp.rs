//! The MCP server (`s3quilt mcp`) driven by real MCP clients: the Python `mcp` SDK 2.x
//! (`tests/py/mcp_client.py`), the TypeScript SDK (`tests/js/mcp_client.mjs`) and the MCP
//! Inspector's CLI, over stdio and over Streamable HTTP (`--http`, with a bearer token),
//! against moto; quilt3 reads what they made.
//!
//! - every tool, on both protocol revisions (2025-11-25 handshake, 2026-07-28 discover):
//!   schemas with descriptions and examples, annotations, structured results, progress
//!   notifications, paginated listing and browsing;
//! - what a package server must not do: globs matched against the full key or `*` crossing
//!   `/`, keys with `% # [ ] ~ {` dropped, a preview that differs from what is written,
//!   flattening that overwrites, failures returned as ordinary results, no progress, no
//!   rollback, no annotations;
//! - a run that outlasts `wait_seconds`, followed to its end with `package_create_status`;
//! - a run whose copies fail: a tool error that names the rollback, and nothing left behind;
//! - bad input answered with tool errors that say what to fix, the server staying up;
//! - guard rails (`--allow-bucket`, `--read-only`), and a host that disconnects mid-run;
//! - what agents and hosts really send (null arguments, URIs for names, out-of-range pages,
//!   deeply nested globs and metadata, lines that are not JSON): every request answered.

use std::process::Command;
use std::time::Duration;

use s3quilt_core::quilt::PackageName;
use s3quilt_core::registry::Registry;
use s3quilt_core::storage::S3Store;
use s3quilt_tests::{
    ChildOutput, Fault, FaultProxy, ProxyRule, S3Server, SeedObject, Select, SfnStack,
    create_bucket, list_all_versions, moto, repo_root, run_child, run_oracle, s3quilt_bin, seed,
    venv_bin,
};
use serde_json::{Value, json};

/// How long one client scenario may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(150);

/// Runs `mcp_client.py <scenario> <config>` with the venv's python and returns its report.
/// `server_args` follow `s3quilt mcp`; the server's environment is `env` (credentials,
/// endpoint), and nothing else of this process's.
fn run_client(
    env: Vec<(String, String)>,
    scenario: &str,
    server_args: &[&str],
    mut config: Value,
) -> Value {
    let secret = env
        .iter()
        .find(|(k, _)| k == "AWS_SECRET_ACCESS_KEY")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let env: serde_json::Map<String, Value> = env
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .chain([("RUST_LOG".to_string(), json!("warn"))])
        .collect();
    let mut args = vec!["mcp".to_string()];
    args.extend(server_args.iter().map(|a| a.to_string()));
    config["command"] = json!(s3quilt_bin());
    config["args"] = json!(args);
    config["env"] = Value::Object(env);
    config["version"] = json!(env!("CARGO_PKG_VERSION"));
    config["secret"] = json!(secret);

    let script = repo_root().join("tests").join("py").join("mcp_client.py");
    let mut cmd = Command::new(venv_bin("python"));
    cmd.arg(&script).arg(scenario).arg(config.to_string());
    cmd.env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let ChildOutput {
        status,
        stdout,
        stderr,
        elapsed,
    } = run_child(&mut cmd, &format!("MCP client {scenario}"), CLIENT_TIMEOUT);
    let report: Option<Value> = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok());
    match report {
        Some(report) if status.success() => {
            eprintln!("MCP client {scenario}: {:.1} s", elapsed.as_secs_f64());
            report
        }
        _ => panic!(
            "MCP client {scenario} failed ({status})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        ),
    }
}

fn browse(server: &S3Server, registry: &str, name: &str) -> Value {
    let out = run_oracle(
        server,
        &[
            "browse",
            "--registry",
            &format!("s3://{registry}"),
            "--name",
            name,
        ],
    );
    assert_eq!(out["all_hashes_valid"], json!(true), "{out}");
    out
}

fn oracle_keys(browsed: &Value) -> Vec<String> {
    browsed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["logical_key"].as_str().unwrap().to_string())
        .collect()
}

/// Keys under `data/` that other servers have dropped or mangled.
const ODD_KEYS: [&str; 3] = [
    "data/odd/100% #1 [draft] ~{x}.txt",
    "data/odd/ü space+plus=&?.txt",
    "data/odd/a,b;c'd\"e.txt",
];

fn sample() -> Vec<SeedObject> {
    let mut objects = vec![
        SeedObject::new("data/README.md", b"# sample\n".to_vec())
            .content_type("text/markdown")
            .meta("owner", "lab-7"),
        SeedObject::new("data/tables/a.csv", b"x,y\n1,2\n".to_vec()).content_type("text/csv"),
        SeedObject::new("data/tables/b.csv", b"x,y\n3,4\n".to_vec()).content_type("text/csv"),
        SeedObject::new("data/tables/2024/c.csv", b"x,y\n5,6\n".to_vec()),
        SeedObject::new("data/same/a/same.csv", b"first\n".to_vec()),
        SeedObject::new("data/same/b/same.csv", b"second\n".to_vec()),
        SeedObject::new("elsewhere/tables/z.csv", b"outside the prefix\n".to_vec()),
    ];
    for (i, key) in ODD_KEYS.iter().enumerate() {
        objects.push(
            SeedObject::new(*key, format!("odd {i}\n").into_bytes()).content_type("text/plain"),
        );
    }
    objects
}

/// On moto: a source bucket holding `objects` and an empty registry bucket.
async fn source_and_registry(
    objects: &[SeedObject],
    versioned_registry: bool,
) -> (&'static S3Server, aws_sdk_s3::Client, String, String) {
    let server = moto();
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, false).await,
        create_bucket(&client, versioned_registry).await,
    );
    seed(&client, &source, objects).await;
    (server, client, source, registry)
}

/// `n` small objects `run/part-NN.csv`.
fn parts(n: usize) -> Vec<SeedObject> {
    (0..n)
        .map(|i| {
            SeedObject::new(
                format!("run/part-{i:02}.csv"),
                format!("{i}\n").into_bytes(),
            )
        })
        .collect()
}

/// A proxy to `server` that answers every CopyObject `delay` late.
fn slow_copies(server: &S3Server, delay: Duration) -> FaultProxy {
    FaultProxy::start(
        server.endpoint(),
        vec![ProxyRule {
            operation: "CopyObject",
            select: Select::Calls(1..=1000),
            fault: Fault::Delay(delay),
        }],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_uses_every_tool_over_stdio() {
    let server = moto();
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, false).await,
        create_bucket(&client, true).await,
    );
    let objects = sample();
    seed(&client, &source, &objects).await;
    let keys: Vec<&str> = objects
        .iter()
        .map(|o| o.key.as_str())
        .filter(|k| k.starts_with("data/"))
        .collect();
    let config = json!({
        "source_bucket": source,
        "source_prefix": "data/",
        "registry": format!("s3://{registry}"),
        "keys": keys,
        "object_info": {
            "data/README.md": ["text/markdown", {"owner": "lab-7"}],
            ODD_KEYS[0]: ["text/plain", {}],
        },
        "same_name_keys": ["data/same/a/same.csv", "data/same/b/same.csv"],
        "odd_folder": "data/odd/",
        "missing_bucket": format!("{source}-missing"),
    });
    let report = tokio::task::block_in_place(|| run_client(server.env(), "main", &[], config));

    assert_eq!(
        report["folders"],
        json!(["data/odd/", "data/same/", "data/tables/"])
    );
    // Globs: relative to the prefix, `*` within a folder; full-key globs select nothing.
    assert_eq!(report["glob_keys"], json!(["tables/a.csv", "tables/b.csv"]));
    assert_eq!(
        report["pattern_matches"],
        json!([
            {"field": "include_patterns", "pattern": "tables/*.csv", "keys": 2},
            {"field": "include_patterns", "pattern": "odd/100% #1 [draft] ~{x}.txt", "keys": 0},
        ]),
        "matches per pattern"
    );
    assert_eq!(report["modern_revision"], json!("2026-07-28"));

    // What the server made, read by quilt3: every key (odd ones too), hashes verified, the
    // same entries the MCP client browsed.
    let full = &report["full"];
    let browsed = tokio::task::block_in_place(|| browse(server, &registry, "team/full"));
    assert_eq!(browsed["top_hash"], full["top_hash"]);
    let mut expected: Vec<String> = keys
        .iter()
        .map(|k| k.strip_prefix("data/").unwrap().to_string())
        .collect();
    let mut got = oracle_keys(&browsed);
    assert_eq!(
        json!(got),
        report["browsed_keys"],
        "MCP browse = quilt3 order"
    );
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "every key under the prefix, none dropped");
    assert_eq!(browsed["message"], json!("made over MCP"));
    assert_eq!(
        browsed["user_meta"],
        json!({"project": "mcp-test", "n": 1, "tags": ["mcp", "test"]}),
        "tags are kept in the package metadata: {browsed}"
    );

    // package_create kept both same-named files and the odd folder's keys.
    let explicit = tokio::task::block_in_place(|| browse(server, &registry, "team/explicit"));
    assert_eq!(explicit["top_hash"], report["explicit"]["top_hash"]);
    let mut explicit_keys = oracle_keys(&explicit);
    explicit_keys.sort();
    let mut want: Vec<String> = ODD_KEYS
        .iter()
        .map(|k| k.strip_prefix("data/").unwrap().to_string())
        .chain(["same/a/same.csv".into(), "same/b/same.csv".into()])
        .collect();
    want.sort();
    assert_eq!(explicit_keys, want);

    let messages = report["bad_input_messages"].as_array().unwrap();
    assert_eq!(messages.len(), 17, "{messages:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_outlasts_the_call_is_followed_with_status() {
    let server = moto();
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, false).await,
        create_bucket(&client, true).await,
    );
    seed(&client, &source, &parts(12)).await;
    // Every copy is answered 3 s late: the run outlasts wait_seconds = 0.
    let proxy = slow_copies(server, Duration::from_secs(3));
    let endpoint = proxy.endpoint();
    let config = json!({
        "source_bucket": source, "source_prefix": "run", "registry": format!("s3://{registry}"),
    });
    let report = tokio::task::block_in_place(|| {
        run_client(server.env(), "slow", &["--endpoint-url", &endpoint], config)
    });
    assert!(
        report["returned_after"].as_f64().unwrap() < 2.5,
        "the create call returned once planned: {report}"
    );
    assert!(report["polls"].as_u64().unwrap() >= 1, "{report}");
    let browsed = tokio::task::block_in_place(|| browse(server, &registry, "team/slow"));
    assert_eq!(browsed["top_hash"], report["package"]["top_hash"]);
    assert_eq!(browsed["entries"].as_array().unwrap().len(), 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_of_an_unchanged_package_is_up_to_date() {
    let server = moto();
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, true).await,
        create_bucket(&client, true).await,
    );
    seed(&client, &source, &sample()).await;
    let config = json!({
        "source_bucket": source, "source_prefix": "data", "registry": format!("s3://{registry}"),
    });
    let report = tokio::task::block_in_place(|| {
        run_client(
            server.env(),
            "incremental",
            &["--endpoint-url", server.endpoint()],
            config,
        )
    });
    let top_hash = report["first"]["package"]["top_hash"].clone();
    // One version only: the second run wrote no pointer.
    let versions = s3quilt_core::registry::Registry::new(
        s3quilt_core::storage::S3Store::shared(client.clone()),
        &registry,
    )
    .versions(&"team/inc".parse().unwrap())
    .await
    .unwrap();
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(json!(versions[0].top_hash), top_hash);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_run_is_a_tool_error_and_is_rolled_back() {
    let server = moto();
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, false).await,
        create_bucket(&client, true).await,
    );
    let objects: Vec<SeedObject> = (0..8)
        .map(|i| SeedObject::new(format!("f/part-{i}.csv"), format!("{i}\n").into_bytes()))
        .collect();
    seed(&client, &source, &objects).await;
    let before = list_all_versions(&client, &registry).await;
    // The fourth copy is refused for good.
    let proxy = FaultProxy::start(
        server.endpoint(),
        vec![ProxyRule {
            operation: "CopyObject",
            select: Select::Calls(4..=4),
            fault: Fault::Status(403, "AccessDenied"),
        }],
    );
    let endpoint = proxy.endpoint();
    let config = json!({
        "source_bucket": source, "source_prefix": "f", "registry": format!("s3://{registry}"),
    });
    let report = tokio::task::block_in_place(|| {
        run_client(
            server.env(),
            "failing",
            &["--endpoint-url", &endpoint],
            config,
        )
    });
    assert!(
        report["error"].as_str().unwrap().contains("rolled back"),
        "{report}"
    );
    assert_eq!(
        list_all_versions(&client, &registry).await,
        before,
        "rollback left the registry exactly as it was"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn what_agents_send_is_accepted_or_answered_with_an_error() {
    let objects = [
        SeedObject::new("data/a.csv", b"1\n".to_vec()),
        SeedObject::new("data/b/c.csv", b"2\n".to_vec()),
        SeedObject::new("top.txt", b"3\n".to_vec()),
    ];
    let (server, client, source, registry) = source_and_registry(&objects, true).await;
    let before = list_all_versions(&client, &registry).await;
    let config = json!({"source_bucket": source, "registry": format!("s3://{registry}")});
    let report =
        tokio::task::block_in_place(|| run_client(server.env(), "agent_input", &[], config));

    assert_eq!(
        report["null_keys"],
        json!(["data/a.csv", "data/b/c.csv", "top.txt"]),
        "null arguments: the whole bucket"
    );
    assert_eq!(report["split_keys"], json!(["a.csv", "b/c.csv"]));
    for message in report["page_size_errors"].as_array().unwrap() {
        assert!(
            message.as_str().unwrap().starts_with("max_keys: "),
            "{message}"
        );
    }
    let glob_errors = report["glob_errors"].as_array().unwrap();
    assert!(
        glob_errors[1]
            .as_str()
            .unwrap()
            .contains("groups nest 2000 deep; at most 16 levels are allowed"),
        "{glob_errors:?}"
    );
    assert_eq!(report["deep_metadata_error"]["code"], json!(-32600));
    assert_eq!(report["raw"]["not_json"]["error"]["code"], json!(-32700));
    assert_eq!(report["raw"]["too_deep"]["id"], json!(42));
    assert_eq!(
        list_all_versions(&client, &registry).await,
        before,
        "dry runs and refused requests write nothing"
    );
}

/// Listings larger than an agent's context: `bucket_objects_list` with max_keys 1000 over
/// keys long enough that one S3 page passes 40 KiB (with and without folders), and
/// `packages_list` one name or version at a time. Every page stays under 45 KB and the pages
/// together hold each key, folder, package and version exactly once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn long_listings_come_in_pages_that_fit_a_context() {
    // About 550 bytes of JSON an object: 150 objects pass 80 KiB.
    let stem = format!("wide/{}", "long-file-name-".repeat(12));
    let mut objects = Vec::new();
    for i in 0..100 {
        objects.push(SeedObject::new(format!("{stem}{i:03}.bin"), vec![b'x']));
        // A folder sorting right after its namesake object ("….bin" < "…/"): merged order.
        if i % 2 == 1 {
            objects.push(SeedObject::new(
                format!("{stem}{i:03}/part.bin"),
                vec![b'y'],
            ));
        }
    }
    let (server, client, source, registry) = source_and_registry(&objects, false).await;
    let top_hash = |i: usize| format!("{i:064x}");
    let packages = ["other/q", "team/p0", "team/p1", "team/p2", "team-x/p"];
    let stamps = ["1700000001", "1700000002", "1700000010"];
    let mut pointers = Vec::new();
    for (i, name) in packages.iter().enumerate() {
        let pointer = |at: &str, hash: String| {
            SeedObject::new(
                format!(".quilt/named_packages/{name}/{at}"),
                hash.into_bytes(),
            )
        };
        pointers.push(pointer("latest", top_hash(i)));
        pointers.push(pointer(stamps[0], top_hash(i)));
    }
    for (i, stamp) in stamps.iter().enumerate().skip(1) {
        pointers.push(SeedObject::new(
            format!(".quilt/named_packages/team/p0/{stamp}"),
            top_hash(10 + i).into_bytes(),
        ));
    }
    seed(&client, &registry, &pointers).await;
    let keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let mut names: Vec<String> = keys
        .iter()
        .map(|k| match k.strip_suffix("/part.bin") {
            Some(folder) => format!("{folder}/"),
            None => k.to_string(),
        })
        .collect();
    names.sort();
    let config = json!({
        "source_bucket": source, "prefix": "wide/", "registry": format!("s3://{registry}"),
        "keys": keys, "names": names, "package": "team/p0", "stamps": stamps,
    });
    let report = tokio::task::block_in_place(|| run_client(server.env(), "paging", &[], config));

    for listing in ["keys", "folders"] {
        let listed = &report[listing];
        assert!(
            listed["pages"].as_u64().unwrap() >= 2,
            "one S3 page served in several: {listed}"
        );
        assert!(
            listed["largest"].as_u64().unwrap() <= 45_000,
            "{listing}: {listed}"
        );
    }
    let mut sorted = packages.to_vec();
    sorted.sort();
    assert_eq!(
        report["packages"],
        json!(sorted),
        "one page a name, in order"
    );
    assert_eq!(
        report["team_packages"],
        json!(["team/p0", "team/p1", "team/p2"])
    );
    assert_eq!(report["versions"], json!(stamps), "oldest first");
}

/// A host that goes away mid-run (the SDK closes stdin, then SIGTERM after 2 s, SIGKILL 2 s
/// later, as Claude Desktop does): the server stops starting copies, rolls back what the run
/// created and exits before the kill, leaving the registry exactly as before; the same call
/// to a new server then creates the package.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_mid_run_leaves_the_registry_as_before() {
    let server = moto();
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, false).await,
        create_bucket(&client, false).await,
    );
    seed(&client, &source, &parts(24)).await;
    let before = list_all_versions(&client, &registry).await;
    // Copies answered 300 ms late, 4 at a time: the run copies for about 2 s.
    let proxy = slow_copies(server, Duration::from_millis(300));
    let endpoint = proxy.endpoint();
    let args = ["--endpoint-url", endpoint.as_str(), "--concurrency", "4"];
    let config = |phase: &str| json!({"source_bucket": source, "registry": format!("s3://{registry}"), "phase": phase});
    let left = tokio::task::block_in_place(|| {
        run_client(server.env(), "disconnect", &args, config("leave"))
    });
    eprintln!("{left}");
    assert!(
        left["server_gone_after"].as_f64().unwrap() < 4.0,
        "the server ended before the host's SIGKILL: {left}"
    );
    assert_eq!(
        list_all_versions(&client, &registry).await,
        before,
        "rolled back: the registry (an unversioned bucket) is as before, staging included"
    );
    let retried = tokio::task::block_in_place(|| {
        run_client(server.env(), "disconnect", &args, config("retry"))
    });
    let browsed = tokio::task::block_in_place(|| browse(server, &registry, "team/left"));
    assert_eq!(browsed["top_hash"], retried["package"]["top_hash"]);
    assert_eq!(oracle_keys(&browsed).len(), 24);
}

/// Streamable HTTP (`--http`): the Python SDK's HTTP client against a server on a free
/// loopback port with a bearer token; what it made is read by quilt3.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_uses_the_tools_over_streamable_http_with_a_token() {
    let objects = [
        SeedObject::new("data/a.csv", b"1\n".to_vec()),
        SeedObject::new("data/b/c.csv", b"2\n".to_vec()),
        SeedObject::new("data/b/d.csv", b"3\n".to_vec()),
    ];
    let (server, _, source, registry) = source_and_registry(&objects, true).await;
    let token = "http-test-token-0123456789abcdef";
    let mut env = server.env();
    env.push(("S3QUILT_MCP_TOKEN".to_string(), token.to_string()));
    let config = json!({"source_bucket": source, "registry": format!("s3://{registry}"),
                        "token": token});
    let report =
        tokio::task::block_in_place(|| run_client(env, "http", &["--http", "127.0.0.1:0"], config));
    assert_eq!(report["exit_status"], json!(0), "{report}");
    assert_eq!(report["package"]["objects"], json!(3), "{report}");
    let browsed = tokio::task::block_in_place(|| browse(server, &registry, "team/remote"));
    assert_eq!(browsed["top_hash"], report["package"]["top_hash"]);
    assert_eq!(
        json!(oracle_keys(&browsed)),
        report["browsed_keys"],
        "quilt3 reads what the HTTP client made"
    );
    assert_eq!(browsed["message"], json!("made over Streamable HTTP"));
}

/// A second real client, the TypeScript SDK (`tests/js/mcp_client.mjs`, the SDK installed by
/// `.ci/run` into `.tools/npm`), over stdio and over Streamable HTTP: tools, a dry run and a
/// real run each, with progress and output schemas checked by the SDK; quilt3 reads both.
#[tokio::test(flavor = "multi_thread")]
async fn the_typescript_sdk_creates_packages_over_stdio_and_http() {
    let sdk = repo_root().join(".tools/npm/node_modules/@modelcontextprotocol/sdk");
    assert!(
        sdk.join("package.json").exists(),
        "{} is missing: run .ci/run, which installs it",
        sdk.display()
    );
    let objects = [
        SeedObject::new("data/a.csv", b"1\n".to_vec()),
        SeedObject::new("data/b/c.csv", b"2\n".to_vec()),
    ];
    let (server, _, source, registry) = source_and_registry(&objects, true).await;
    let token = "ts-client-token-0123456789abcdef";
    let env: serde_json::Map<String, Value> = server
        .env()
        .into_iter()
        .chain([
            ("S3QUILT_MCP_TOKEN".to_string(), token.to_string()),
            ("RUST_LOG".to_string(), "warn".to_string()),
        ])
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let config = json!({
        "sdk": sdk, "command": s3quilt_bin(), "args": ["mcp"],
        "http_args": ["mcp", "--http", "127.0.0.1:0"], "env": env, "token": token,
        "source_bucket": source, "registry": format!("s3://{registry}"),
    });
    let script = repo_root().join("tests/js/mcp_client.mjs");
    let mut cmd = Command::new("node");
    cmd.arg(&script).arg(config.to_string());
    let out = tokio::task::block_in_place(|| {
        run_child(&mut cmd, "TypeScript MCP client", CLIENT_TIMEOUT)
    });
    let report: Value = out
        .stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "TypeScript MCP client failed ({})\n{}\n{}",
                out.status, out.stdout, out.stderr
            )
        });
    assert!(out.status.success(), "{report}\n{}", out.stderr);
    for transport in ["stdio", "http"] {
        let made = &report[transport]["package"];
        assert_eq!(made["objects"], json!(2), "{report}");
        let name = format!("team/ts-{transport}");
        let browsed = tokio::task::block_in_place(|| browse(server, &registry, &name));
        assert_eq!(browsed["top_hash"], made["top_hash"], "{transport}");
        assert_eq!(oracle_keys(&browsed), ["a.csv", "b/c.csv"]);
    }
}

/// The MCP Inspector's CLI (`mcp-inspector --cli`, installed by `.ci/run` into `.tools/npm`),
/// one call per process as a user types them: every tool listed with plain schemas, a package
/// created over stdio with `metadata` given as the Inspector sends it (a JSON object in
/// `key=value`), and over Streamable HTTP (with the bearer token) a dry run and a browse.
#[tokio::test(flavor = "multi_thread")]
async fn the_inspector_cli_calls_the_tools_over_stdio_and_http() {
    let inspector = repo_root().join(".tools/npm/node_modules/.bin/mcp-inspector");
    assert!(
        inspector.exists(),
        "{} is missing: run .ci/run, which installs it",
        inspector.display()
    );
    let objects = [
        SeedObject::new("data/a.csv", b"1\n".to_vec()),
        SeedObject::new("data/b/c.csv", b"2\n".to_vec()),
    ];
    let (server, _, source, registry) = source_and_registry(&objects, true).await;
    let env = server.env();
    let inspect = |target: &[String], call: &[&str]| -> Value {
        let mut cmd = Command::new(&inspector);
        cmd.arg("--cli").args(target).args(call);
        let out = run_child(&mut cmd, "MCP Inspector CLI", CLIENT_TIMEOUT);
        assert!(
            out.status.success(),
            "mcp-inspector {call:?} failed ({})\n{}\n{}",
            out.status,
            out.stdout,
            out.stderr
        );
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("mcp-inspector printed no JSON ({e}):\n{}", out.stdout))
    };
    // Over stdio: the Inspector starts the server with the environment given by `-e`.
    let mut stdio: Vec<String> = env
        .iter()
        .flat_map(|(k, v)| ["-e".to_string(), format!("{k}={v}")])
        .collect();
    stdio.extend([s3quilt_bin().display().to_string(), "mcp".to_string()]);
    let listed = tokio::task::block_in_place(|| inspect(&stdio, &["--method", "tools/list"]));
    let tools = listed["tools"].as_array().expect("tools");
    assert_eq!(tools.len(), 8, "{listed}");
    for tool in tools {
        let schema = tool["inputSchema"].to_string();
        assert!(
            !schema.contains("\"null\"") && !schema.contains("\"format\""),
            "{}: {schema}",
            tool["name"]
        );
    }
    let registry_uri = format!("s3://{registry}");
    let create = |name: &str| {
        vec![
            "--method".to_string(),
            "tools/call".to_string(),
            "--tool-name".to_string(),
            "package_create_from_s3".to_string(),
            "--tool-arg".to_string(),
            format!("source_bucket={source}"),
            "source_prefix=data/".to_string(),
            format!("package_name={name}"),
            format!("target_registry={registry_uri}"),
            r#"metadata={"via": "inspector", "n": 2}"#.to_string(),
            "wait_seconds=50".to_string(),
        ]
    };
    let call = create("team/inspected");
    let call: Vec<&str> = call.iter().map(String::as_str).collect();
    let made = tokio::task::block_in_place(|| inspect(&stdio, &call));
    assert_ne!(made["isError"], json!(true), "{made}");
    let package = &made["structuredContent"]["package"];
    assert_eq!(package["objects"], json!(2), "{made}");
    let browsed = tokio::task::block_in_place(|| browse(server, &registry, "team/inspected"));
    assert_eq!(browsed["top_hash"], package["top_hash"]);
    assert_eq!(browsed["user_meta"], json!({"via": "inspector", "n": 2}));

    // Over Streamable HTTP, with the token in a header.
    let token = "inspector-token-0123456789abcdef";
    let mut http = Command::new(s3quilt_bin());
    http.args(["mcp", "--http", "127.0.0.1:0"])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("S3QUILT_MCP_TOKEN", token)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    let mut child = http.spawn().expect("start s3quilt mcp --http");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read the listening line");
    let url = line
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("no listening line: {line:?}"))
        .trim()
        .to_string();
    let target = vec![
        url,
        "--transport".to_string(),
        "http".to_string(),
        "--header".to_string(),
        format!("Authorization: Bearer {token}"),
    ];
    let mut dry = create("team/inspected-http");
    dry.push("dry_run=true".to_string());
    let dry: Vec<&str> = dry.iter().map(String::as_str).collect();
    let planned = tokio::task::block_in_place(|| inspect(&target, &dry));
    assert_eq!(
        planned["structuredContent"]["plan"]["sample_logical_keys"],
        json!(["a.csv", "b/c.csv"]),
        "{planned}"
    );
    let browse_call = [
        "--method",
        "tools/call",
        "--tool-name",
        "package_browse",
        "--tool-arg",
        "package_name=team/inspected",
        &format!("registry={registry_uri}"),
    ];
    let page = tokio::task::block_in_place(|| inspect(&target, &browse_call));
    assert_eq!(
        page["structuredContent"]["top_hash"], package["top_hash"],
        "{page}"
    );
    // SIGTERM: the server ends cleanly.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(killed.success());
    let status = child.wait().expect("wait for the HTTP server");
    assert!(status.success(), "{status}");
}

/// Guard rails: a server limited to two buckets (`S3QUILT_ALLOW_BUCKETS`) and read-only
/// (`--read-only`) refuses every call naming a third bucket and every call that would write,
/// before sending S3 anything for it: no bucket changes.
#[tokio::test(flavor = "multi_thread")]
async fn an_allowlist_and_read_only_refuse_other_buckets_and_writes() {
    let server = moto();
    let client = server.client().await;
    let (source, registry, other) = (
        create_bucket(&client, false).await,
        create_bucket(&client, true).await,
        create_bucket(&client, false).await,
    );
    let objects = [
        SeedObject::new("data/a.csv", b"1\n".to_vec()),
        SeedObject::new("data/b/c.csv", b"2\n".to_vec()),
    ];
    seed(&client, &source, &objects).await;
    seed(&client, &other, &objects).await;
    let before = (
        list_all_versions(&client, &registry).await,
        list_all_versions(&client, &other).await,
    );
    let mut env = server.env();
    env.push((
        "S3QUILT_ALLOW_BUCKETS".to_string(),
        format!("{source},s3://{registry}"),
    ));
    let config = json!({"source_bucket": source, "registry": registry, "other_bucket": other});
    let report =
        tokio::task::block_in_place(|| run_client(env, "guarded", &["--read-only"], config));
    let messages = report["messages"].as_object().unwrap();
    assert_eq!(messages.len(), 11, "{report}");
    let source_refusal = messages["package_create_from_s3.source_bucket"]
        .as_str()
        .unwrap();
    assert!(
        source_refusal.starts_with(&format!("source_bucket: bucket \"{other}\" is not one")),
        "{source_refusal}"
    );
    assert!(
        source_refusal.contains(&format!("allowed: {registry}, {source}"))
            || source_refusal.contains(&format!("allowed: {source}, {registry}")),
        "{source_refusal}"
    );
    assert_eq!(
        (
            list_all_versions(&client, &registry).await,
            list_all_versions(&client, &other).await,
        ),
        before,
        "a read-only server writes nothing"
    );
}

/// The environment of a machine with no AWS configuration: no credentials anywhere, and an
/// endpoint where nothing listens (so nothing reaches AWS either).
fn bare_machine_env() -> Vec<(String, String)> {
    [
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/s3quilt-aws-config"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/s3quilt-aws-credentials",
        ),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
        ("HOME", "/nonexistent"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[test]
fn missing_credentials_and_a_wrong_endpoint_are_configuration_errors() {
    let no_credentials = run_client(
        bare_machine_env(),
        "misconfigured",
        &[],
        json!({"needles": ["no AWS credentials", "AWS_PROFILE", "AWS_ACCESS_KEY_ID",
                           "claude_desktop_config.json"]}),
    );
    eprintln!("{no_credentials}");
    let mut with_keys = bare_machine_env();
    with_keys.extend([
        ("AWS_ACCESS_KEY_ID".to_string(), "testing".to_string()),
        (
            "AWS_SECRET_ACCESS_KEY".to_string(),
            "SECRETsentinel-never-printed".to_string(),
        ),
    ]);
    let wrong_endpoint = run_client(
        with_keys,
        "misconfigured",
        &["--endpoint-url", "http://127.0.0.1:1"],
        json!({"needles": ["could not connect", "127.0.0.1:1", "--endpoint-url"]}),
    );
    eprintln!("{wrong_endpoint}");
}

/// Step Functions mode: the real state machine in moto, the real Lambdas under
/// `cargo lambda watch` (`SfnStack`), started and followed through the MCP tools.
#[tokio::test(flavor = "multi_thread")]
async fn step_functions_mode_runs_executions() {
    let stack =
        tokio::task::block_in_place(|| SfnStack::start(&[("S3QUILT_SHARD_MAX_OBJECTS", "2")]));
    let client = stack.s3_client();
    let (source, registry) = (
        create_bucket(&client, true).await,
        create_bucket(&client, true).await,
    );
    let objects: Vec<SeedObject> = (0..5)
        .map(|i| {
            SeedObject::new(
                format!("sfn/dir {i}/part-{i}.csv"),
                format!("{i}\n").into_bytes(),
            )
        })
        .collect();
    seed(&client, &source, &objects).await;
    let machine = stack.create_state_machine("s3quilt-mcp").await;
    let endpoint = stack.endpoint();
    let env: Vec<(String, String)> = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/s3quilt-aws-config"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/s3quilt-aws-credentials",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = json!({
        "source_bucket": source, "source_prefix": "sfn", "registry": format!("s3://{registry}"),
    });
    let report = tokio::task::block_in_place(|| {
        run_client(env, "sfn", &["--state-machine-arn", &machine], config)
    });
    let name: PackageName = "team/sfn".parse().unwrap();
    let (top_hash, manifest) = Registry::new(S3Store::shared(client), &registry)
        .latest_manifest(&name)
        .await
        .unwrap_or_else(|e| panic!("no package: {e}\n{}", stack.logs()));
    assert_eq!(json!(top_hash), report["package"]["top_hash"], "{report}");
    let keys: Vec<&str> = manifest
        .entries
        .iter()
        .map(|e| e.logical_key.as_str())
        .collect();
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert!(keys.contains(&"dir 3/part-3.csv"), "{keys:?}");
    // The retried call (same idempotency_key) started nothing.
    let executions = stack
        .sfn_client()
        .list_executions()
        .state_machine_arn(&machine)
        .send()
        .await
        .unwrap();
    assert_eq!(executions.executions().len(), 1, "{executions:?}");
}

#[test]
fn help_lists_the_configuration() {
    let out = Command::new(s3quilt_bin())
        .args(["mcp", "--help"])
        .output()
        .expect("run s3quilt mcp --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--endpoint-url",
        "--region",
        "--profile",
        "--registry",
        "S3QUILT_REGISTRY",
        "--state-machine-arn",
        "S3QUILT_STATE_MACHINE_ARN",
        "AWS_ENDPOINT_URL",
        "--allow-bucket",
        "S3QUILT_ALLOW_BUCKETS",
        "--read-only",
        "S3QUILT_READ_ONLY",
        "--http",
        "S3QUILT_MCP_TOKEN",
    ] {
        assert!(
            help.contains(needle),
            "`s3quilt mcp --help` lacks {needle}:\n{help}"
        );
    }
}
