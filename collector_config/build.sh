#!/usr/bin/env bash
# Builds otelcol-gpu from builder-config.yaml with the OpenTelemetry Collector Builder.
#
# The binary is cached in ${OTEL_GPU_CACHE:-$HOME/.cache/otel-gpu}/otelcol-gpu/<key>/, where <key>
# hashes the manifest (comments aside), the builder version and the Go version; a second run with
# the same inputs only prints the path. Go's module and build caches stay in their default places
# (go env GOMODCACHE GOCACHE), so a rebuild after a manifest change is incremental.
#
# Progress goes to stderr; stdout gets one line, the binary's absolute path:
#   OTEL_GPU_COLLECTOR="$(collector_config/build.sh)"
# With --cached it builds nothing: it prints the path if this manifest's build is cached and
# exits 3 if not.
set -euo pipefail

cached_only=false
case "${1:-}" in
    --cached) cached_only=true ;;
    "") ;;
    *) echo "usage: $0 [--cached]" >&2; exit 2 ;;
esac

BUILDER_VERSION=v0.161.0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
manifest="$here/builder-config.yaml"
cache="${OTEL_GPU_CACHE:-$HOME/.cache/otel-gpu}"

log() { printf '[build.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

command -v go >/dev/null || { log "go is not on PATH; install Go 1.24 or later"; exit 1; }
go_version="$(go env GOVERSION)"

key="$(
    {
        grep -v '^[[:space:]]*#' "$manifest"
        echo "$BUILDER_VERSION" "$go_version"
        go env GOOS GOARCH
    } | sha256sum | cut -c1-16
)"
dist="$cache/otelcol-gpu/$key"
binary="$dist/otelcol-gpu"

mkdir -p "$cache/otelcol-gpu"
exec 9>"$cache/otelcol-gpu/.lock"
flock 9

if [[ -x "$binary" ]]; then
    log "cached build $key"
    echo "$binary"
    exit 0
fi
if $cached_only; then
    log "no cached build for this manifest in $cache"
    exit 3
fi

builder_dir="$cache/builder/$BUILDER_VERSION"
if [[ ! -x "$builder_dir/builder" ]]; then
    log "installing the collector builder $BUILDER_VERSION with $go_version"
    GOBIN="$builder_dir" go install "go.opentelemetry.io/collector/cmd/builder@$BUILDER_VERSION"
fi

work="$cache/otelcol-gpu/work-$key"
rm -rf "$work"
mkdir -p "$work"
cp "$manifest" "$work/builder-config.yaml"

start=$SECONDS
# Neither our stdout (a caller's $(...) would wait for it) nor the lock (fd 9) stays with it.
(
    exec 9>&-
    trap 'kill "$!" 2>/dev/null; exit 0' TERM
    while true; do
        sleep 60 & wait "$!"
        log "still building ($((SECONDS - start)) s)"
    done
) >/dev/null &
heartbeat=$!
trap 'kill "$heartbeat" 2>/dev/null || true; wait "$heartbeat" 2>/dev/null || true' EXIT

log "building otelcol-gpu $key in $work (a cold build downloads and compiles for minutes)"
# -e: `go mod tidy` goes on past modules that only components' tests import and the Go module
# proxy does not serve (see builder-config.yaml); anything the binary needs still fails the build.
(cd "$work" && GOFLAGS="$(go env GOFLAGS) -e" "$builder_dir/builder" --config=builder-config.yaml) >&2

mkdir -p "$dist.tmp"
mv "$work/otelcol-gpu/otelcol-gpu" "$dist.tmp/otelcol-gpu"
cp "$manifest" "$dist.tmp/builder-config.yaml"
rm -rf "$dist" && mv "$dist.tmp" "$dist"
rm -rf "$work"
log "built in $((SECONDS - start)) s"

for old in "$cache"/otelcol-gpu/*/; do
    [[ "${old%/}" == "$dist" ]] || rm -rf "$old"
done

echo "$binary"
