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
