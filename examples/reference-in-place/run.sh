#!/usr/bin/env bash
# Package objects where they are: no copies, the manifest's physical keys point at the source
# bucket (pinned to the object versions when the source bucket is versioned).
#
# Environment (all optional):
#   S3QUILT           the s3quilt binary                      (default: s3quilt on PATH)
#   SOURCE_BUCKET     bucket holding the data                 (default: demo-source)
#   SOURCE_PREFIX     folder to package                       (default: reports)
#   REGISTRY_BUCKET   Quilt registry the manifest goes to     (default: demo-registry)
#   PACKAGE           package name                            (default: examples/in-place)
#   AWS_ENDPOINT_URL  an S3-compatible server instead of AWS; AWS_PROFILE, AWS_REGION, ... as usual
set -euo pipefail

S3QUILT="${S3QUILT:-s3quilt}"
SOURCE_BUCKET="${SOURCE_BUCKET:-demo-source}"
SOURCE_PREFIX="${SOURCE_PREFIX:-reports}"
REGISTRY_BUCKET="${REGISTRY_BUCKET:-demo-registry}"
PACKAGE="${PACKAGE:-examples/in-place}"

echo "== s3://$SOURCE_BUCKET/$SOURCE_PREFIX -> $PACKAGE in s3://$REGISTRY_BUCKET, referenced in place (S3: ${AWS_ENDPOINT_URL:-AWS})"
"$S3QUILT" create "s3://$SOURCE_BUCKET/$SOURCE_PREFIX" "$PACKAGE" \
  --registry "s3://$REGISTRY_BUCKET" \
  --no-copy \
  --message "reports, referenced where they are"
