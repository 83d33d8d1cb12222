#!/usr/bin/env bash
# Fails if regenerating the TypeScript from proto/ would change what is committed in gen/.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
node_modules/.bin/buf lint
node_modules/.bin/buf generate --output "$tmp"
node_modules/.bin/buf build -o "$tmp/gen/descriptors.binpb"
if ! diff -r gen "$tmp/gen" >/dev/null; then
  echo "gen/ is stale: run 'npm run gen' and commit the result." >&2
  diff -r gen "$tmp/gen" | head -40 >&2
  exit 1
fi
echo "gen/ is up to date."
