#!/usr/bin/env bash
# Package only the CSV and JSON files of a bucket, leaving out one folder: a dry run with
# `s3quilt plan` first (lists and selects, writes nothing), then `s3quilt create`.
#
# Environment (all optional):
#   S3QUILT           the s3quilt binary                      (default: s3quilt on PATH)
#   SOURCE_BUCKET     bucket holding the data                 (default: demo-source)
#   SOURCE_PREFIX     folder inside it, "" = the whole bucket (default: "")
#   REGISTRY_BUCKET   Quilt registry the package goes to      (default: demo-registry)
#   PACKAGE           package name                            (default: examples/csv-and-json)
#   AWS_ENDPOINT_URL  an S3-compatible server instead of AWS; AWS_PROFILE, AWS_REGION, ... as usual
set -euo pipefail

S3QUILT="${S3QUILT:-s3quilt}"
SOURCE_BUCKET="${SOURCE_BUCKET:-demo-source}"
SOURCE_PREFIX="${SOURCE_PREFIX:-}"
REGISTRY_BUCKET="${REGISTRY_BUCKET:-demo-registry}"
PACKAGE="${PACKAGE:-examples/csv-and-json}"

# Globs are matched against keys relative to the prefix, gitignore-like: `*.csv` matches at any
# depth, `data/2024` is that folder from the top; --exclude wins over --include.
SELECT=(--include '*.csv' --include '*.json' --exclude 'data/2024')

echo "== s3://$SOURCE_BUCKET/$SOURCE_PREFIX -> $PACKAGE in s3://$REGISTRY_BUCKET (S3: ${AWS_ENDPOINT_URL:-AWS})"

echo "== 1. dry run: what would be packaged (nothing is written)"
"$S3QUILT" plan "s3://$SOURCE_BUCKET/$SOURCE_PREFIX" "$PACKAGE" \
  --registry "s3://$REGISTRY_BUCKET" "${SELECT[@]}"

echo "== 2. create the package (server-side copies into the registry)"
"$S3QUILT" create "s3://$SOURCE_BUCKET/$SOURCE_PREFIX" "$PACKAGE" \
  --registry "s3://$REGISTRY_BUCKET" "${SELECT[@]}" \
  --message "CSV and JSON files, 2024 left out" \
  --meta '{"recipe": "include-exclude"}'
