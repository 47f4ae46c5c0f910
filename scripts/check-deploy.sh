#!/usr/bin/env bash
# Validates the deployment files offline: the Kubernetes manifests (base and every overlay, rendered with
# `kubectl kustomize`) strictly against Kubernetes' schemas (kubernetes-validate, from PyPI: unknown fields and
# wrong types fail), and the shell scripts the pods run for syntax. Part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
K8S_VERSION=1.32.0
DEPLOY=deploy/kubernetes
if ! command -v kubernetes-validate >/dev/null; then
    echo "check-deploy: installing kubernetes-validate" >&2
    python3 -m pip install -q kubernetes-validate 2>/dev/null \
        || python3 -m pip install -q --break-system-packages kubernetes-validate
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
if command -v kubectl >/dev/null; then
    for dir in "$DEPLOY/base" "$DEPLOY"/overlays/*; do
        name=$(basename "$dir")
        kubectl kustomize "$dir" >"$out/$name.yaml"
        kubernetes-validate --strict --quiet -k "$K8S_VERSION" "$out/$name.yaml"
        echo "check-deploy: $dir: $(grep -c '^kind:' "$out/$name.yaml") resources valid for Kubernetes $K8S_VERSION"
    done
else
    # Without kubectl the overlays cannot be rendered; the base's files are complete resources on their own.
    echo "check-deploy: kubectl not found: validating the base only, not the overlays" >&2
    for f in "$DEPLOY"/base/*.yaml; do
        [ "$(basename "$f")" = kustomization.yaml ] && continue
        kubernetes-validate --strict --quiet -k "$K8S_VERSION" "$f"
    done
    cp "$DEPLOY/base/configmap.yaml" "$out/base.yaml"
fi
# The scripts embedded in the ConfigMap: POSIX sh syntax (and shellcheck's opinion where it is installed).
python3 - "$out/base.yaml" "$out" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "synod-config":
        for key, text in doc["data"].items():
            if key.endswith(".sh"):
                open(f"{sys.argv[2]}/{key}", "w").write(text)
PY
for script in "$out"/*.sh; do
    sh -n "$script"
    if command -v shellcheck >/dev/null; then shellcheck -s sh "$script"; fi
done
echo "check-deploy: $(ls "$out"/*.sh | wc -l) pod scripts parse"
