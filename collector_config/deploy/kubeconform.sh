#!/usr/bin/env bash
# Installs kubeconform and the Kubernetes JSON schemas it validates kubernetes*.yaml against,
# without reaching anything but the Go module proxy and PyPI.
#
# kubeconform fetches its schemas from the internet by default. Here they come from the PyPI
# package kubernetes-validate, which ships "local-strict" schemas (additionalProperties: false)
# generated from each Kubernetes release's OpenAPI document. Its schemas point at their shared
# definitions by the absolute reference /api/_definitions.json (resolved against an $id on
# kubernetes.io); the copy made here points at the _definitions.json beside them instead, so
# kubeconform reads them from disk.
#
# Everything lands in ${OTEL_GPU_CACHE:-$HOME/.cache/otel-gpu}/kubeconform/<key>/: the binary,
# and schemas/v<version>-standalone-strict/ for each of KUBERNETES_VERSIONS, laid out as
# kubeconform's -schema-location template
#   <dir>/schemas/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json
# expects. A second run with the same versions only prints the path.
#
# Progress goes to stderr; stdout gets one line, the binary's absolute path:
#   OTEL_GPU_KUBECONFORM="$(collector_config/deploy/kubeconform.sh)"
# With --cached it installs nothing: it prints the path if it is cached and exits 3 if not.
set -euo pipefail

cached_only=false
case "${1:-}" in
    --cached) cached_only=true ;;
    "") ;;
    *) echo "usage: $0 [--cached]" >&2; exit 2 ;;
esac

KUBECONFORM_VERSION=v0.8.0
SCHEMA_PACKAGE=kubernetes-validate
SCHEMA_PACKAGE_VERSION=1.37.0
# The oldest release the manifests are meant for (native sidecars are on by default from 1.29)
# and the newest the schema package ships.
KUBERNETES_VERSIONS="1.29.0 1.37.0"

cache="${OTEL_GPU_CACHE:-$HOME/.cache/otel-gpu}"
key="$KUBECONFORM_VERSION-$SCHEMA_PACKAGE-$SCHEMA_PACKAGE_VERSION-${KUBERNETES_VERSIONS// /-}"
dir="$cache/kubeconform/$key"
binary="$dir/kubeconform"

log() { printf '[kubeconform.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

mkdir -p "$cache/kubeconform"
exec 9>"$cache/kubeconform/.lock"
flock 9

if [[ -x "$binary" && -f "$dir/schemas/.complete" ]]; then
    log "cached $key"
    echo "$binary"
    exit 0
fi
if $cached_only; then
    log "kubeconform $key is not in $cache"
    exit 3
fi

command -v go >/dev/null || { log "go is not on PATH; install Go 1.24 or later"; exit 1; }
command -v python3 >/dev/null || { log "python3 is not on PATH"; exit 1; }

tmp="$dir.tmp"
rm -rf "$tmp"
mkdir -p "$tmp/wheel"

log "installing kubeconform $KUBECONFORM_VERSION with $(go env GOVERSION)"
GOBIN="$tmp" go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"

log "downloading $SCHEMA_PACKAGE $SCHEMA_PACKAGE_VERSION for its schemas"
pip=(python3 -m pip)
if ! python3 -m pip --version >/dev/null 2>&1; then
    python3 -m venv "$tmp/venv"
    pip=("$tmp/venv/bin/python" -m pip)
fi
"${pip[@]}" download -q --no-deps --only-binary=:all: -d "$tmp/wheel" \
    "$SCHEMA_PACKAGE==$SCHEMA_PACKAGE_VERSION" >&2

python3 - "$tmp/wheel" "$tmp/schemas" $KUBERNETES_VERSIONS <<'EOF'
import glob
import json
import os
import sys
import zipfile

wheel_dir, out, *versions = sys.argv[1:]
(wheel,) = glob.glob(os.path.join(wheel_dir, "*.whl"))
with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    for version in versions:
        prefix = f"kubernetes_validate/kubernetes-json-schema/v{version}-local-strict/"
        members = [n for n in names if n.startswith(prefix) and n.endswith(".json")]
        if not members:
            sys.exit(f"{os.path.basename(wheel)} has no schemas for Kubernetes {version}")
        target = os.path.join(out, f"v{version}-standalone-strict")
        os.makedirs(target)
        for name in members:
            text = archive.read(name).decode()
            schema = json.loads(text.replace('"/api/_definitions.json#', '"_definitions.json#'))
            schema.pop("$id", None)
            with open(os.path.join(target, name[len(prefix):]), "w") as f:
                json.dump(schema, f)
EOF
rm -rf "$tmp/wheel" "$tmp/venv"
touch "$tmp/schemas/.complete"
rm -rf "$dir" && mv "$tmp" "$dir"
log "kubeconform and schemas for Kubernetes $KUBERNETES_VERSIONS in $dir"

for old in "$cache"/kubeconform/*/; do
    [[ "${old%/}" == "$dir" ]] || rm -rf "$old"
done

echo "$binary"
