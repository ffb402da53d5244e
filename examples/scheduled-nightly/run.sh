#!/usr/bin/env bash
# Checks the nightly request before it is deployed: `s3quilt plan --request request.json` plans
# the schedule's execution input as is (the same JSON, validated with the same errors), a dry
# run that lists and selects exactly what a scheduled execution would, and writes nothing.
# Deploying the schedule itself is `aws cloudformation deploy` (see README.md).
#
# Environment (all optional):
#   S3QUILT           the s3quilt binary                          (default: s3quilt on PATH)
#   REQUEST           the request file                            (default: request.json here)
#   SOURCE_BUCKET     use this source bucket instead of the file's    (needs python3)
#   REGISTRY_BUCKET   use this registry bucket instead of the file's  (needs python3)
#   AWS_ENDPOINT_URL  an S3-compatible server instead of AWS; AWS_PROFILE, AWS_REGION, ... as usual
set -euo pipefail

S3QUILT="${S3QUILT:-s3quilt}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REQUEST="${REQUEST:-$HERE/request.json}"

INPUT="$REQUEST"
if [ -n "${SOURCE_BUCKET:-}${REGISTRY_BUCKET:-}" ]; then
  # The same request against other buckets: a copy of the file with the buckets replaced.
  INPUT="$(mktemp)"
  trap 'rm -f "$INPUT"' EXIT
  python3 - "$REQUEST" >"$INPUT" <<'PY'
import json, os, sys

with open(sys.argv[1], encoding="utf-8") as f:
    doc = json.load(f)
req = doc["request"] if "request" in doc else doc  # the wrapped form {"request": {...}, ...}
if os.environ.get("SOURCE_BUCKET"):
    req["source_bucket"] = os.environ["SOURCE_BUCKET"]
if os.environ.get("REGISTRY_BUCKET"):
    req["target_registry"] = "s3://" + os.environ["REGISTRY_BUCKET"].removeprefix("s3://")
json.dump(doc, sys.stdout, indent=2)
PY
fi

echo "== dry run of $REQUEST (S3: ${AWS_ENDPOINT_URL:-AWS})"
echo "   $(printf '%q ' "$S3QUILT" plan --request "$INPUT")"
"$S3QUILT" plan --request "$INPUT"
