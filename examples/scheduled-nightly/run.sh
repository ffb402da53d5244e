#!/usr/bin/env bash
# Checks the nightly request before it is deployed: the request in request.json (the schedule's
# execution input) is turned into `s3quilt plan` arguments and planned against the source, a
# dry run that lists and selects exactly what a scheduled execution would, and writes nothing.
# Deploying the schedule itself is `aws cloudformation deploy` (see README.md).
#
# Environment (all optional):
#   S3QUILT           the s3quilt binary                          (default: s3quilt on PATH)
#   REQUEST           the request file                            (default: request.json here)
#   SOURCE_BUCKET     use this source bucket instead of the file's
#   REGISTRY_BUCKET   use this registry bucket instead of the file's
#   AWS_ENDPOINT_URL  an S3-compatible server instead of AWS; AWS_PROFILE, AWS_REGION, ... as usual
# Needs python3 (to read the JSON).
set -euo pipefail

S3QUILT="${S3QUILT:-s3quilt}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REQUEST="${REQUEST:-$HERE/request.json}"

ARGS_FILE="$(mktemp)"
trap 'rm -f "$ARGS_FILE"' EXIT

# `s3quilt plan` takes flags, not a request file: map each request field to its flag.
python3 - "$REQUEST" >"$ARGS_FILE" <<'PY'
import json, os, sys

path = sys.argv[1]
with open(path, encoding="utf-8") as f:
    req = json.load(f)
if "request" in req:  # the wrapped form {"request": {...}, "max_concurrency": N}
    req = req["request"]
known = {"source_bucket", "source_prefix", "package_name", "target_registry", "target_bucket",
         "description", "include_patterns", "exclude_patterns", "preserve_structure",
         "metadata", "copy", "dry_run", "hash_type", "overwrite_existing"}
unknown = sorted(set(req) - known)
if unknown:
    sys.exit(f"{path}: unknown request fields {unknown}; the planner would refuse them")


def bucket(env, value):
    return (os.environ.get(env) or value).removeprefix("s3://").rstrip("/")


args = [
    f"s3://{bucket('SOURCE_BUCKET', req['source_bucket'])}/{req.get('source_prefix', '')}",
    req["package_name"],
    "--registry", "s3://" + bucket("REGISTRY_BUCKET", req["target_registry"]),
]
if req.get("target_bucket"):
    args += ["--target-bucket", req["target_bucket"]]
if req.get("description") is not None:
    args += ["--message", req["description"]]
for pattern in req.get("include_patterns", []):
    args += ["--include", pattern]
for pattern in req.get("exclude_patterns", []):
    args += ["--exclude", pattern]
if not req.get("preserve_structure", True):
    args.append("--flatten")
if req.get("metadata") is not None:
    args += ["--meta", json.dumps(req["metadata"])]
if not req.get("copy", True):
    args.append("--no-copy")
if req.get("hash_type"):
    args += ["--hash-type", req["hash_type"]]
if req.get("overwrite_existing"):
    args.append("--overwrite-existing")
sys.stdout.write("".join(a + "\0" for a in args))
PY
mapfile -d '' -t ARGS <"$ARGS_FILE"

echo "== dry run of $REQUEST (S3: ${AWS_ENDPOINT_URL:-AWS})"
echo "   $(printf '%q ' "$S3QUILT" plan "${ARGS[@]}")"
"$S3QUILT" plan "${ARGS[@]}"
