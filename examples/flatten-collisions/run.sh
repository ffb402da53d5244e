#!/usr/bin/env bash
# Flatten a folder tree (logical keys = base names). Two files called readings.csv collide: the
# first run is refused with exit code 2 and a report naming both keys, before anything is
# written. The second run leaves one of them out and succeeds.
#
# Environment (all optional):
#   S3QUILT           the s3quilt binary                      (default: s3quilt on PATH)
#   SOURCE_BUCKET     bucket holding the data                 (default: demo-source)
#   SOURCE_PREFIX     folder to flatten                       (default: data)
#   REGISTRY_BUCKET   Quilt registry the package goes to      (default: demo-registry)
#   PACKAGE           package name                            (default: examples/flat)
#   AWS_ENDPOINT_URL  an S3-compatible server instead of AWS; AWS_PROFILE, AWS_REGION, ... as usual
set -euo pipefail

S3QUILT="${S3QUILT:-s3quilt}"
SOURCE_BUCKET="${SOURCE_BUCKET:-demo-source}"
SOURCE_PREFIX="${SOURCE_PREFIX:-data}"
REGISTRY_BUCKET="${REGISTRY_BUCKET:-demo-registry}"
PACKAGE="${PACKAGE:-examples/flat}"

SOURCE="s3://$SOURCE_BUCKET/$SOURCE_PREFIX"
echo "== $SOURCE -> $PACKAGE in s3://$REGISTRY_BUCKET, flattened (S3: ${AWS_ENDPOINT_URL:-AWS})"

echo "== 1. flatten everything: 2024/readings.csv and 2025/readings.csv both become readings.csv"
if "$S3QUILT" create "$SOURCE" "$PACKAGE" --registry "s3://$REGISTRY_BUCKET" --flatten; then
  echo "expected a collision report (exit 2), but the package was created" >&2
  exit 1
else
  code=$?
fi
if [ "$code" -ne 2 ]; then
  echo "expected exit 2 (objects that cannot be packaged), got $code" >&2
  exit 1
fi
echo "== refused with exit $code: nothing was written (\`s3quilt plan --flatten\` reports the same)"

echo "== 2. leave out 2024's readings.csv (a glob with a / is anchored at the prefix)"
"$S3QUILT" create "$SOURCE" "$PACKAGE" --registry "s3://$REGISTRY_BUCKET" --flatten \
  --exclude '2024/readings.csv' \
  --message "latest readings, flattened"
