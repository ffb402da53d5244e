//! `s3quilt bench`: in one run, on one seeded dataset in a local S3 (by default the bench's
//! own in-memory S3 on `s3s`, `memory.rs`; or moto behind our latency proxy), times (1) the
//! floor — a bare aws-sdk-s3 client issuing only the copy requests (CopyObject, or the
//! multipart upload's UploadPartCopy for large objects), at several concurrencies, best kept;
//! (2) s3quilt's local engine end to end, as a child process (peak RSS and CPU measured); (3)
//! quilt3's `set_dir` + `push`, at its default and at other `QUILT_TRANSFER_MAX_CONCURRENCY`.
//! Measuring only: no domain logic lives here.

mod incremental;
mod memory;
mod proxy;
mod scale;
mod tools;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_s3::Client;
use aws_sdk_s3::types::{ChecksumAlgorithm, MetadataDirective};
use clap::Args;
use futures::StreamExt;
use serde_json::json;

use self::incremental::{ChangeSet, IncrementalReport, RunFigures};
use self::memory::MemoryServer;
use self::proxy::{Counts, LatencyProxy, Logged, diff};
use self::tools::{Measured, Moto, run_measured};

const SOURCE_BUCKET: &str = "bench-src";
const SOURCE_PREFIX: &str = "data/";
const FLOOR_BUCKET: &str = "bench-floor";
const S3QUILT_REGISTRY: &str = "bench-reg-s3quilt";
const QUILT3_REGISTRY: &str = "bench-reg-quilt3";
const REGION: &str = "us-east-1";
const ACCESS_KEY: &str = "testing";
const SECRET_KEY: &str = "testing";

/// `bench` arguments.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Objects to seed (sizes 1 KiB–256 KiB, log-uniform, over 16 folders).
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub objects: u32,
    /// Give every object this size instead (bytes, e.g. 1073741824), each one byte repeated:
    /// the in-memory S3 holds it as a length, so large objects cost nothing to seed or copy.
    /// `--server memory` only.
    #[arg(long, value_name = "BYTES")]
    pub object_size: Option<u64>,
    /// The S3 to measure against: `memory` (the bench's in-memory S3 on s3s, fast enough not
    /// to be the bottleneck) or `moto` (moto_server behind the latency proxy).
    #[arg(long, value_enum, default_value_t = ServerKind::Memory)]
    pub server: ServerKind,
    /// Delay added to each request before it is served (models S3's round trip).
    #[arg(long, value_name = "MS", default_value_t = 20)]
    pub latency_ms: u64,
    /// Concurrencies tried for the floor (comma-separated); s3quilt runs at the floor's best.
    #[arg(long, value_name = "N,..", value_delimiter = ',', default_values_t = [16u16, 64, 128, 256], value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: Vec<u16>,
    /// `moto_server` to use (default: .venv/bin, then PATH).
    #[arg(long, value_name = "PATH")]
    pub moto: Option<PathBuf>,
    /// Python with quilt3 to use (default: .venv/bin, then PATH).
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Skip quilt3 (e.g. for very large runs); quilt3_s is then null.
    #[arg(long)]
    pub no_quilt3: bool,
    /// s3quilt runs to time, by `--object-metadata` mode: `full` (the default mode: a HEAD
    /// beside each copy) and `listing` (no HEAD: one request per object).
    #[arg(long, value_name = "MODE,..", value_delimiter = ',', default_values_t = [String::from("full"), String::from("listing")])]
    pub s3quilt_modes: Vec<String>,
    /// quilt3 runs to time, by `QUILT_TRANSFER_MAX_CONCURRENCY`: `default` (unset: quilt3's
    /// own, 10 threads) or a number.
    #[arg(long, value_name = "N,..", value_delimiter = ',', default_values_t = [String::from("default"), String::from("64")])]
    pub quilt3_concurrency: Vec<String>,
    /// Then the second version: change 1 % of the objects, remove 0.5 % and add as many,
    /// and time the incremental run of the first `--s3quilt-modes` mode's package, then an
    /// up-to-date run (see `bench/incremental.rs`).
    #[arg(long)]
    pub incremental: bool,
    /// Instead: the finalizer alone, for runs of these many entries (comma-separated, e.g.
    /// 100000,1000000), its peak RSS, wall and CPU time as a process of its own (see
    /// `bench/scale.rs`).
    #[arg(long, value_name = "N,..", value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..))]
    pub finalizer: Vec<u64>,
    /// Instead: the planner alone (`s3quilt plan`, a dry run: the listing, selection and
    /// checks) over a prefix of these many objects, its peak RSS, wall and CPU time (see
    /// `bench/scale.rs`).
    #[arg(long, value_name = "N,..", value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..))]
    pub planner: Vec<u64>,
    /// After the table, print one JSON object as the last line.
    #[arg(long)]
    pub json: bool,
}

/// Which S3 the bench measures against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerKind {
    /// The bench's in-memory S3 (s3s), with the latency added in the server.
    Memory,
    /// moto_server behind the latency proxy.
    Moto,
}

/// The running S3 and how to reach it.
enum Backend {
    Memory(MemoryServer),
    Moto { moto: Moto, proxy: LatencyProxy },
}

impl Backend {
    /// The measured endpoint: delayed and counted.
    fn endpoint(&self) -> String {
        match self {
            Backend::Memory(m) => m.endpoint(),
            Backend::Moto { proxy, .. } => proxy.endpoint(),
        }
    }

    /// Straight to the server: for seeding and cleaning up, untimed.
    fn direct_endpoint(&self) -> String {
        match self {
            Backend::Memory(m) => m.direct_endpoint(),
            Backend::Moto { moto, .. } => format!("http://{}", moto.addr),
        }
    }

    fn counts(&self) -> Counts {
        match self {
            Backend::Memory(m) => m.counts(),
            Backend::Moto { proxy, .. } => proxy.counts(),
        }
    }

    fn log_since(&self, since: Instant) -> Vec<Logged> {
        match self {
            Backend::Memory(m) => m.log_since(since),
            Backend::Moto { proxy, .. } => proxy.log_since(since),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Memory(_) => "in-memory S3 (s3s)",
            Backend::Moto { .. } => "moto behind the latency proxy",
        }
    }
}

/// One measured contender.
struct Row {
    name: String,
    seconds: f64,
    cpu_s: Option<f64>,
    peak_rss: Option<u64>,
    requests: Counts,
}

fn total(c: &Counts) -> u64 {
    c.values().sum()
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Log-uniform sizes in [1 KiB, 256 KiB], deterministic (a fixed LCG), so every run seeds
/// the same bytes.
fn object_sizes(n: u32) -> Vec<u64> {
    let mut state: u64 = 0x5eed_5eed_1234_5678;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            (1024.0 * 2f64.powf(u * 8.0)) as u64
        })
        .collect()
}

fn client(endpoint: &str) -> Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(REGION))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            ACCESS_KEY, SECRET_KEY, None, None, "bench",
        ))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    Client::from_conf(config)
}

/// Test credentials and a clean AWS environment for a child process (no profile, config file,
/// session token or metadata service can leak in).
fn apply_env(cmd: &mut Command, endpoint: &str, dir: &std::path::Path) {
    for var in [
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    ] {
        cmd.env_remove(var);
    }
    let d = |p: &str| dir.join(p).display().to_string();
    cmd.envs([
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_ENDPOINT_URL_S3", endpoint.to_string()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
        ("AWS_REGION", REGION.to_string()),
        ("AWS_DEFAULT_REGION", REGION.to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ("AWS_CONFIG_FILE", d("no-aws-config")),
        ("AWS_SHARED_CREDENTIALS_FILE", d("no-aws-credentials")),
        ("QUILT_DISABLE_USAGE_METRICS", "true".to_string()),
        ("QUILT_DISABLE_CACHE", "true".to_string()),
        ("QUILT_MINIMIZE_STDOUT", "true".to_string()),
        ("XDG_DATA_HOME", d("xdg/data")),
        ("XDG_CACHE_HOME", d("xdg/cache")),
        ("XDG_CONFIG_HOME", d("xdg/config")),
    ]);
}

/// `s3quilt create` of the bench's source into `bench/s3quilt-<mode>`, through the delay.
fn create_command(
    exe: &std::path::Path,
    endpoint: &str,
    dir: &std::path::Path,
    concurrency: u16,
    mode: &str,
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args([
        "create",
        &format!("s3://{SOURCE_BUCKET}/{SOURCE_PREFIX}"),
        &format!("bench/s3quilt-{mode}"),
        "--registry",
        &format!("s3://{S3QUILT_REGISTRY}"),
        "--message",
        "bench",
        "--json",
        "--endpoint-url",
        endpoint,
        "--concurrency",
        &concurrency.to_string(),
        "--object-metadata",
        mode,
    ]);
    apply_env(&mut cmd, endpoint, dir);
    cmd
}

/// Runs one `s3quilt create` (see [`create_command`]) and checks its outcome's `status` and, for a new
/// version, that it holds `objects` entries.
async fn measured_create(
    cmd: Command,
    what: &'static str,
    want_status: &str,
    objects: usize,
) -> anyhow::Result<Measured> {
    let run: Measured = blocking(move || run_measured(cmd, what)).await?;
    let outcome: serde_json::Value = serde_json::from_str(&run.stdout)
        .with_context(|| format!("{what} printed no JSON:\n{}", run.stdout))?;
    let status = outcome["status"].as_str().unwrap_or_default();
    if status != want_status {
        bail!(
            "{what}: status {status:?}, expected {want_status:?}:\n{}",
            run.stdout
        );
    }
    let packaged = outcome["package"]["objects"].as_u64();
    if status == "created" && packaged != u64::try_from(objects).ok() {
        bail!(
            "{what}: packaged {packaged:?} objects, expected {objects}:\n{}",
            run.stdout
        );
    }
    Ok(run)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// Runs the benchmark and prints the table (and, with `--json`, a JSON line last).
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if !args.finalizer.is_empty() || !args.planner.is_empty() {
        return scale::run(&args.finalizer, &args.planner, args.json).await;
    }
    if args.object_size.is_some() && args.server != ServerKind::Memory {
        bail!("--object-size needs --server memory (moto would have to hold every byte)");
    }
    let python = if args.no_quilt3 || args.quilt3_concurrency.is_empty() {
        None
    } else {
        Some(tools::find_python(args.python.as_deref())?)
    };
    let dir = tempfile::Builder::new()
        .prefix("s3quilt-bench-")
        .tempdir()?;
    let latency = Duration::from_millis(args.latency_ms);
    let backend = match args.server {
        ServerKind::Memory => {
            eprintln!("bench: starting the in-memory S3");
            Backend::Memory(MemoryServer::start(latency, ACCESS_KEY, SECRET_KEY)?)
        }
        ServerKind::Moto => {
            let moto_bin = tools::find_moto(args.moto.as_deref())?;
            eprintln!("bench: starting {}", moto_bin.display());
            let moto = Moto::start(&moto_bin, &dir.path().join("moto.log")).await?;
            let proxy = LatencyProxy::start(moto.addr, latency)?;
            Backend::Moto { moto, proxy }
        }
    };
    let endpoint = backend.endpoint();

    // Seed directly (no delay): untimed.
    let direct = client(&backend.direct_endpoint());
    for bucket in [
        SOURCE_BUCKET,
        FLOOR_BUCKET,
        S3QUILT_REGISTRY,
        QUILT3_REGISTRY,
    ] {
        direct
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .with_context(|| format!("creating bucket {bucket}"))?;
    }
    let sizes = match args.object_size {
        Some(size) => vec![size; args.objects as usize],
        None => object_sizes(args.objects),
    };
    let keys: Vec<String> = (0..args.objects)
        .map(|i| format!("{SOURCE_PREFIX}part-{:02}/obj-{i:07}.bin", i % 16))
        .collect();
    let bytes: u64 = sizes.iter().sum();
    eprintln!(
        "bench: seeding {} objects, {:.1} MB, into the {}",
        args.objects,
        mb(bytes),
        backend.name()
    );
    let seeded = Instant::now();
    match (&backend, args.object_size) {
        (Backend::Memory(m), Some(_)) => {
            for (key, size) in keys.iter().zip(&sizes) {
                m.store.insert_fill(
                    SOURCE_BUCKET,
                    key,
                    (key.len() % 251) as u8,
                    *size,
                    "application/octet-stream",
                );
            }
        }
        _ => seed(&direct, &keys, &sizes).await?,
    }
    eprintln!("bench: seeded in {:.1} s", seeded.elapsed().as_secs_f64());

    // (1) The floor: only the copy requests, through the delay, per concurrency.
    let via_proxy = client(&endpoint);
    let mut sweep: Vec<(u16, f64, Counts)> = Vec::new();
    for &conc in &args.concurrency {
        let dest = format!("c{conc}/");
        let before = backend.counts();
        let start = Instant::now();
        floor_copies(&via_proxy, &keys, &sizes, &dest, usize::from(conc)).await?;
        let secs = start.elapsed().as_secs_f64();
        let requests = diff(&before, &backend.counts());
        eprintln!("bench: floor at concurrency {conc}: {secs:.2} s");
        sweep.push((conc, secs, requests));
        // Free the server's memory before the next contender (direct, untimed).
        delete_prefix(&direct, FLOOR_BUCKET, &dest).await?;
    }
    let (best_conc, floor_s, floor_requests) = sweep
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .cloned()
        .context("no floor concurrency given")?;

    // (2) s3quilt, end to end, as a child process, once per metadata mode.
    let exe = std::env::current_exe().context("locating the s3quilt executable")?;
    let mut ours_runs: Vec<(String, Measured, Counts, Phases)> = Vec::new();
    for mode in &args.s3quilt_modes {
        let cmd = create_command(&exe, &endpoint, dir.path(), best_conc, mode);
        eprintln!("bench: s3quilt create --object-metadata {mode} at concurrency {best_conc}");
        let before = backend.counts();
        let ours = measured_create(cmd, "s3quilt create", "created", keys.len()).await?;
        let requests = diff(&before, &backend.counts());
        let phases = Phases::from_log(&backend.log_since(ours.started), &ours);
        ours_runs.push((mode.clone(), ours, requests, phases));
    }
    if ours_runs.is_empty() {
        bail!("--s3quilt-modes is empty: give full, listing or both");
    }

    // (3) quilt3 8.0.0: set_dir + push to another registry, once per thread count.
    let mut quilt3_runs: Vec<Quilt3Run> = Vec::new();
    let mut quilt3_version = None;
    if let Some((python, version)) = python {
        for threads in &args.quilt3_concurrency {
            let mut cmd = Command::new(&python);
            let package = format!("bench/q3-{threads}");
            cmd.args([
                "-c",
                QUILT3_SCRIPT,
                &format!("s3://{SOURCE_BUCKET}/{SOURCE_PREFIX}"),
                &format!("s3://{QUILT3_REGISTRY}"),
                &package,
            ]);
            apply_env(&mut cmd, &endpoint, dir.path());
            let label = if threads == "default" {
                cmd.env_remove("QUILT_TRANSFER_MAX_CONCURRENCY");
                "quilt3 default".to_string()
            } else {
                let n: u32 = threads.parse().with_context(|| {
                    format!("--quilt3-concurrency {threads}: not `default` or a number")
                })?;
                cmd.env("QUILT_TRANSFER_MAX_CONCURRENCY", n.to_string());
                format!("quilt3 threads={n}")
            };
            eprintln!("bench: {label} ({version}) set_dir + push");
            let before = backend.counts();
            let theirs: Measured = blocking(move || run_measured(cmd, "quilt3 push")).await?;
            let requests = diff(&before, &backend.counts());
            let phases = Phases::from_log(&backend.log_since(theirs.started), &theirs);
            let last = theirs.stdout.lines().last().unwrap_or("");
            let report: serde_json::Value = serde_json::from_str(last).with_context(|| {
                format!(
                    "the quilt3 script printed no JSON:\n{}\n{}",
                    theirs.stdout, theirs.stderr
                )
            })?;
            if report["entries"].as_u64() != Some(u64::from(args.objects)) {
                bail!(
                    "quilt3 pushed {} entries, expected {}",
                    report["entries"],
                    args.objects
                );
            }
            quilt3_runs.push(Quilt3Run {
                threads: threads.clone(),
                process_s: theirs.wall.as_secs_f64(),
                phases,
                row: Row {
                    name: label,
                    seconds: report["seconds"].as_f64().unwrap_or(f64::NAN),
                    cpu_s: Some(theirs.cpu.as_secs_f64()),
                    peak_rss: Some(theirs.peak_rss),
                    requests,
                },
            });
        }
        quilt3_version = Some(version);
    }
    // (4) The second version, after a small change to the source (`--incremental`).
    let incremental = if args.incremental {
        let changes = ChangeSet::choose(keys.len())?;
        let memory = match (&backend, args.object_size) {
            (Backend::Memory(m), Some(_)) => Some(m.store.as_ref()),
            _ => None,
        };
        changes.apply(&direct, memory, &keys, &sizes).await?;
        let (mode, plain, plain_requests, _) = &ours_runs[0];
        let mut runs = Vec::new();
        for (what, status) in [
            ("s3quilt create (incremental)", "created"),
            ("s3quilt create (up to date)", "up_to_date"),
        ] {
            let cmd = create_command(&exe, &endpoint, dir.path(), best_conc, mode);
            eprintln!("bench: {what}, --object-metadata {mode}");
            let before = backend.counts();
            let run = measured_create(cmd, what, status, changes.objects_after(keys.len())).await?;
            runs.push(RunFigures::of(&run, diff(&before, &backend.counts())));
        }
        let up_to_date = runs.pop().context("two runs")?;
        let incremental = runs.pop().context("two runs")?;
        Some(IncrementalReport {
            objects: keys.len(),
            changes,
            plain: RunFigures::of(plain, plain_requests.clone()),
            incremental,
            up_to_date,
        })
    } else {
        None
    };
    let server = backend.name();
    drop(backend);

    let floor = Row {
        name: format!("floor (c={best_conc})"),
        seconds: floor_s,
        cpu_s: None,
        peak_rss: None,
        requests: floor_requests,
    };
    let ours_rows: Vec<Row> = ours_runs
        .iter()
        .map(|(mode, measured, requests, _)| Row {
            name: format!("s3quilt {mode} (c={best_conc})"),
            seconds: measured.wall.as_secs_f64(),
            cpu_s: Some(measured.cpu.as_secs_f64()),
            peak_rss: Some(measured.peak_rss),
            requests: requests.clone(),
        })
        .collect();
    // The first mode given (by default `full`, s3quilt's default) is the headline figure, and
    // the first quilt3 run (by default quilt3's own thread count) its comparison.
    let ours_row = &ours_rows[0];
    let quilt3_row = quilt3_runs.first().map(|q| &q.row);
    let peak_rss = ours_runs
        .iter()
        .map(|(_, m, _, _)| m.peak_rss)
        .max()
        .unwrap_or(0);
    let ratio_floor = ours_row.seconds / floor.seconds;
    let ratio_quilt3 = quilt3_row.map(|q| q.seconds / ours_row.seconds);

    // The table.
    let sizes_text = match args.object_size {
        Some(size) => format!("{:.1} MiB each", size as f64 / f64::from(1u32 << 20)),
        None => "1 KiB–256 KiB each".to_string(),
    };
    println!(
        "\n{} objects, {:.1} MB ({sizes_text}), +{} ms per request, on the {server}",
        args.objects,
        mb(bytes),
        args.latency_ms
    );
    println!(
        "floor sweep: {}",
        sweep
            .iter()
            .map(|(c, s, _)| format!("c={c} {s:.2} s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "{:<26} {:>9} {:>8} {:>8} {:>10} {:>8} {:>12} {:>9}",
        "", "wall s", "× floor", "CPU s", "objects/s", "MB/s", "peak RSS MB", "requests"
    );
    let quilt3_rows = quilt3_runs.iter().map(|q| &q.row);
    for row in std::iter::once(&floor).chain(&ours_rows).chain(quilt3_rows) {
        println!(
            "{:<26} {:>9.2} {:>8.2} {:>8} {:>10.0} {:>8.1} {:>12} {:>9}",
            row.name,
            row.seconds,
            row.seconds / floor.seconds,
            row.cpu_s
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "n/a".into()),
            f64::from(args.objects) / row.seconds,
            mb(bytes) / row.seconds,
            row.peak_rss
                .map(|b| format!("{:.0}", mb(b)))
                .unwrap_or_else(|| "n/a".into()),
            total(&row.requests)
        );
    }
    for row in &ours_rows {
        let name = row.name.split(" (").next().unwrap_or(&row.name);
        println!("{name} / floor: {:.2}", row.seconds / floor.seconds);
        if quilt3_runs.is_empty() {
            println!("quilt3 / {name}: n/a (--no-quilt3)");
        }
        for q in &quilt3_runs {
            println!(
                "{} / {name}: {:.2}",
                q.row.name,
                q.row.seconds / row.seconds
            );
        }
    }
    let by_op = |c: &Counts| {
        c.iter()
            .map(|(op, n)| format!("{op} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for row in ours_rows.iter().chain(quilt3_runs.iter().map(|q| &q.row)) {
        println!("requests, {}: {}", row.name, by_op(&row.requests));
    }
    for (mode, _, _, phases) in &ours_runs {
        println!(
            "phases, s3quilt {mode}: {}",
            phases.describe(args.latency_ms)
        );
    }
    for q in &quilt3_runs {
        println!(
            "phases, {}: {}",
            q.row.name,
            q.phases.describe(args.latency_ms)
        );
    }
    if let Some(q) = quilt3_runs.first() {
        println!(
            "quilt3 time is set_dir+push inside Python; the whole process (interpreter, imports) took {:.2} s \
             and its CPU s are the whole process's. s3quilt time and CPU are its whole process. \
             The floor runs in this process (RSS and CPU not measured).",
            q.process_s
        );
    }

    if let Some(report) = &incremental {
        report.print();
    }

    if args.json {
        let row_json = |r: &Row| {
            json!({
                "seconds": r.seconds,
                "cpu_s": r.cpu_s,
                "peak_rss_mb": r.peak_rss.map(mb),
                "requests": total(&r.requests),
                "requests_by_op": r.requests,
            })
        };
        let doc = json!({
            "server": format!("{:?}", args.server).to_lowercase(),
            "objects": args.objects,
            "bytes": bytes,
            "object_size": args.object_size,
            "latency_ms": args.latency_ms,
            "floor_s": floor.seconds,
            "floor_concurrency": best_conc,
            "floor_sweep": sweep.iter().map(|(c, s, _)| json!({"concurrency": c, "seconds": s})).collect::<Vec<_>>(),
            "s3quilt_s": ours_row.seconds,
            "s3quilt_mode": ours_runs[0].0,
            "s3quilt_runs": ours_runs.iter().zip(&ours_rows).map(|((mode, _, _, phases), row)| json!({
                "object_metadata": mode,
                "seconds": row.seconds,
                "cpu_s": row.cpu_s,
                "over_floor": row.seconds / floor.seconds,
                "quilt3_over": quilt3_row.map(|q| q.seconds / row.seconds),
                "peak_rss_mb": row.peak_rss.map(mb),
                "requests": total(&row.requests),
                "requests_by_op": row.requests,
                "phases": phases.to_json(),
            })).collect::<Vec<_>>(),
            "quilt3_runs": quilt3_runs.iter().map(|q| json!({
                "threads": q.threads,
                "seconds": q.row.seconds,
                "cpu_s": q.row.cpu_s,
                "process_s": q.process_s,
                "over_floor": q.row.seconds / floor.seconds,
                "peak_rss_mb": q.row.peak_rss.map(mb),
                "requests": total(&q.row.requests),
                "requests_by_op": q.row.requests,
                "phases": q.phases.to_json(),
            })).collect::<Vec<_>>(),
            "quilt3_s": quilt3_row.map(|q| q.seconds),
            "quilt3_process_s": quilt3_runs.first().map(|q| q.process_s),
            "quilt3_version": quilt3_version,
            "peak_rss_mb": mb(peak_rss),
            "quilt3_peak_rss_mb": quilt3_row.and_then(|q| q.peak_rss).map(mb),
            "s3quilt_over_floor": ratio_floor,
            "quilt3_over_s3quilt": ratio_quilt3,
            "floor": row_json(&floor),
            "s3quilt": row_json(ours_row),
            "quilt3": quilt3_row.map(row_json),
            "s3quilt_phases": ours_runs[0].3.to_json(),
            "quilt3_phases": quilt3_runs.first().map(|q| q.phases.to_json()),
            "incremental": incremental.as_ref().map(IncrementalReport::to_json),
        });
        println!("{doc}");
    }
    Ok(())
}

/// One timed quilt3 push.
struct Quilt3Run {
    /// `default` or the `QUILT_TRANSFER_MAX_CONCURRENCY` given.
    threads: String,
    /// The whole Python process's wall time.
    process_s: f64,
    phases: Phases,
    row: Row,
}

/// Seeds the small-object dataset over HTTP (bytes the size of each object).
async fn seed(direct: &Client, keys: &[String], sizes: &[u64]) -> anyhow::Result<()> {
    let mut puts = futures::stream::iter(keys.iter().zip(sizes).map(|(key, size)| {
        let direct = direct.clone();
        async move {
            let body = vec![(key.len() % 251) as u8; usize::try_from(*size)?];
            direct
                .put_object()
                .bucket(SOURCE_BUCKET)
                .key(key)
                .content_type("application/octet-stream")
                .metadata("bench", "1")
                .body(body.into())
                .send()
                .await
                .with_context(|| format!("seeding {key}"))?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(32);
    while let Some(r) = puts.next().await {
        r?;
    }
    Ok(())
}

/// The floor: every object copied to `FLOOR_BUCKET/dest` with only the requests a copy needs,
/// `concurrency` requests in flight. An object under 8 MiB is one CopyObject (SHA-256
/// checksum, metadata copied); a larger one is a multipart upload whose parts (Quilt's chunk
/// layout, as s3quilt copies them) share the request budget with every other object's.
async fn floor_copies(
    c: &Client,
    keys: &[String],
    sizes: &[u64],
    dest: &str,
    concurrency: usize,
) -> anyhow::Result<()> {
    let slots = tokio::sync::Semaphore::new(concurrency.max(1));
    // Every object is in progress at once; the slots bound the requests.
    let mut copies = futures::stream::iter(
        keys.iter()
            .zip(sizes)
            .map(|(k, s)| floor_copy(c, &slots, k, *s, dest)),
    )
    .buffer_unordered(concurrency.max(1) * 2);
    while let Some(r) = copies.next().await {
        r?;
    }
    Ok(())
}

/// One object of the floor (see [`floor_copies`]).
async fn floor_copy(
    c: &Client,
    slots: &tokio::sync::Semaphore,
    key: &str,
    size: u64,
    dest: &str,
) -> anyhow::Result<()> {
    use s3quilt_core::quilt::checksum::{chunk_count, chunk_size, is_multipart};
    {
        let dst = format!("{dest}{key}");
        let source = format!("{SOURCE_BUCKET}/{key}");
        if !is_multipart(size) {
            let _slot = slots.acquire().await?;
            c.copy_object()
                .copy_source(&source)
                .bucket(FLOOR_BUCKET)
                .key(&dst)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .metadata_directive(MetadataDirective::Copy)
                .send()
                .await
                .with_context(|| format!("floor: copying {key}"))?;
            return anyhow::Ok(());
        }
        let upload = {
            let _slot = slots.acquire().await?;
            c.create_multipart_upload()
                .bucket(FLOOR_BUCKET)
                .key(&dst)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .send()
                .await
                .with_context(|| format!("floor: starting the upload of {key}"))?
        };
        let id = upload.upload_id().context("no upload id")?;
        let chunk = chunk_size(size);
        let parts = futures::future::try_join_all((0..chunk_count(size)).map(|i| {
            let (dst, source) = (&dst, &source);
            async move {
                let first = i * chunk;
                let last = (first + chunk).min(size) - 1;
                let _slot = slots.acquire().await?;
                let out = c
                    .upload_part_copy()
                    .copy_source(source)
                    .copy_source_range(format!("bytes={first}-{last}"))
                    .bucket(FLOOR_BUCKET)
                    .key(dst)
                    .upload_id(id)
                    .part_number(i as i32 + 1)
                    .send()
                    .await
                    .with_context(|| format!("floor: copying part {} of {key}", i + 1))?;
                let result = out.copy_part_result();
                anyhow::Ok(
                    aws_sdk_s3::types::CompletedPart::builder()
                        .part_number(i as i32 + 1)
                        .set_e_tag(result.and_then(|r| r.e_tag()).map(str::to_string))
                        .set_checksum_sha256(
                            result.and_then(|r| r.checksum_sha256()).map(str::to_string),
                        )
                        .build(),
                )
            }
        }))
        .await?;
        let _slot = slots.acquire().await?;
        c.complete_multipart_upload()
            .bucket(FLOOR_BUCKET)
            .key(&dst)
            .upload_id(id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .with_context(|| format!("floor: completing {key}"))?;
        Ok(())
    }
}

/// A child's run split by the proxy's log: before its first copy request (startup, listing,
/// planning), the copies, and after its last copy answer (finalizing).
struct Phases {
    before_s: f64,
    before_requests: usize,
    copying_s: f64,
    copying_requests: usize,
    after_s: f64,
    after_requests: usize,
}

impl Phases {
    fn from_log(log: &[Logged], run: &Measured) -> Phases {
        let end = run.started + run.wall;
        let is_copy = |op: &str| op == "CopyObject" || op == "UploadPartCopy";
        let first = log.iter().filter(|l| is_copy(l.2)).map(|l| l.0).min();
        let last = log.iter().filter(|l| is_copy(l.2)).map(|l| l.1).max();
        let (first, last) = (first.unwrap_or(end), last.unwrap_or(end));
        let secs = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64();
        Phases {
            before_s: secs(run.started, first),
            before_requests: log.iter().filter(|l| l.0 < first).count(),
            copying_s: secs(first, last),
            copying_requests: log.iter().filter(|l| l.0 >= first && l.1 <= last).count(),
            after_s: secs(last, end),
            after_requests: log.iter().filter(|l| l.1 > last).count(),
        }
    }

    fn describe(&self, latency_ms: u64) -> String {
        let rtts = |s: f64| {
            if latency_ms == 0 {
                String::new()
            } else {
                format!(", ~{:.0} round trips", s * 1000.0 / latency_ms as f64)
            }
        };
        format!(
            "before first copy {:.2} s ({} requests{}), copying {:.2} s ({} requests), after last copy {:.2} s ({} requests{})",
            self.before_s,
            self.before_requests,
            rtts(self.before_s),
            self.copying_s,
            self.copying_requests,
            self.after_s,
            self.after_requests,
            rtts(self.after_s)
        )
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "before_first_copy_s": self.before_s,
            "before_first_copy_requests": self.before_requests,
            "copying_s": self.copying_s,
            "copying_requests": self.copying_requests,
            "after_last_copy_s": self.after_s,
            "after_last_copy_requests": self.after_requests,
        })
    }
}

/// Deletes every object under `prefix` (directly on moto; not part of any timing).
async fn delete_prefix(c: &Client, bucket: &str, prefix: &str) -> anyhow::Result<()> {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    let mut pages = c
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let ids = page?
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<Result<Vec<_>, _>>()?;
        if ids.is_empty() {
            continue;
        }
        c.delete_objects()
            .bucket(bucket)
            .delete(
                Delete::builder()
                    .set_objects(Some(ids))
                    .quiet(true)
                    .build()?,
            )
            .send()
            .await
            .context("cleaning up the floor's copies")?;
    }
    Ok(())
}

/// quilt3's side: `Package().set_dir('', SRC)` then `push(..., registry=REG, force=True)`,
/// timed inside Python; prints one JSON line.
const QUILT3_SCRIPT: &str = r#"
import json, sys, time
import quilt3
src, registry, name = sys.argv[1], sys.argv[2], sys.argv[3]
t = time.perf_counter()
pkg = quilt3.Package().set_dir('', src)
pkg.push(name, registry=registry, force=True, message='bench')
seconds = time.perf_counter() - t
entries = sum(1 for _ in pkg.walk())
print(json.dumps({'seconds': seconds, 'entries': entries}))
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_deterministic_small_and_mixed() {
        let sizes = object_sizes(5000);
        assert_eq!(sizes, object_sizes(5000));
        assert!(sizes.iter().all(|s| (1024..=256 * 1024).contains(s)));
        assert!(sizes.iter().any(|s| *s < 4 * 1024));
        assert!(sizes.iter().any(|s| *s > 128 * 1024));
    }

    #[test]
    fn counts_diff_keeps_new_requests_only() {
        let before = Counts::from([("CopyObject", 2), ("HeadObject", 1)]);
        let after = Counts::from([("CopyObject", 5), ("HeadObject", 1), ("PutObject", 1)]);
        assert_eq!(
            diff(&before, &after),
            Counts::from([("CopyObject", 3), ("PutObject", 1)])
        );
        assert_eq!(total(&after), 7);
    }
}
