#!/usr/bin/env bash
# Starts the deployed s3quilt state machine with the AWS CLI and waits for the outcome:
# `aws stepfunctions start-execution --input file://request.json`, then `describe-execution`
# every POLL_SECONDS until the execution is no longer running.
#
# Environment:
#   STATE_MACHINE_ARN  (required) the s3quilt stack's StateMachineArn output
#   REQUEST            the execution input                  (default: request.json here)
#   EXECUTION_NAME     execution name; reuse it to retry a start safely (default: examples-<UTC time>)
#   POLL_SECONDS       seconds between polls                (default: 10)
#   SOURCE_BUCKET, REGISTRY_BUCKET  use these buckets instead of the file's (needs python3)
#   AWS_ENDPOINT_URL   another Step Functions endpoint; AWS_PROFILE, AWS_REGION, ... as usual
# Needs the AWS CLI (v2, or v1 >= 1.29 for AWS_ENDPOINT_URL).
set -euo pipefail

: "${STATE_MACHINE_ARN:?set STATE_MACHINE_ARN to the s3quilt stack output StateMachineArn}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REQUEST="${REQUEST:-$HERE/request.json}"
EXECUTION_NAME="${EXECUTION_NAME:-examples-$(date -u +%Y%m%dT%H%M%SZ)}"
POLL_SECONDS="${POLL_SECONDS:-10}"

INPUT="$REQUEST"
if [ -n "${SOURCE_BUCKET:-}${REGISTRY_BUCKET:-}" ]; then
  INPUT="$(mktemp)"
  trap 'rm -f "$INPUT"' EXIT
  python3 - "$REQUEST" >"$INPUT" <<'PY'
import json, os, sys

with open(sys.argv[1], encoding="utf-8") as f:
    doc = json.load(f)
req = doc["request"] if "request" in doc else doc
if os.environ.get("SOURCE_BUCKET"):
    req["source_bucket"] = os.environ["SOURCE_BUCKET"]
if os.environ.get("REGISTRY_BUCKET"):
    req["target_registry"] = "s3://" + os.environ["REGISTRY_BUCKET"].removeprefix("s3://")
json.dump(doc, sys.stdout, indent=2)
PY
fi

echo "== starting $EXECUTION_NAME on $STATE_MACHINE_ARN with $INPUT"
EXECUTION_ARN="$(aws stepfunctions start-execution \
  --state-machine-arn "$STATE_MACHINE_ARN" \
  --name "$EXECUTION_NAME" \
  --input "file://$INPUT" \
  --query executionArn --output text)"
echo "== execution $EXECUTION_ARN"

while :; do
  STATUS="$(aws stepfunctions describe-execution --execution-arn "$EXECUTION_ARN" \
    --query status --output text)"
  case "$STATUS" in
    RUNNING | PENDING_REDRIVE)
      echo "   $STATUS"
      sleep "$POLL_SECONDS"
      ;;
    *) break ;;
  esac
done

echo "== $STATUS"
# Output ({"status": "created", "plan": {...}, "package": {...}}) or error and cause.
aws stepfunctions describe-execution --execution-arn "$EXECUTION_ARN" \
  --query '{status: status, output: output, error: error, cause: cause}' --output json
[ "$STATUS" = SUCCEEDED ]
