#!/usr/bin/env bash
# make k8s-check: render every overlay, validate the output against the
# Kubernetes schemas, scan it (and the Dockerfile) with policy checkers.
# Tools are pinned in tools/k8s/requirements.txt and installed into their own
# environment (.state/tools/k8s), not taken from the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=.state/tools/uv/bin/uv
tools=.state/tools/k8s
stamp="$tools/.installed-$(sha256sum tools/k8s/requirements.txt | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  rm -rf "$tools"
  "$uv" venv --quiet --python 3.11 "$tools"
  "$uv" pip install --quiet --python "$tools/bin/python" -r tools/k8s/requirements.txt
  touch "$stamp"
fi
out=.state/k8s
mkdir -p "$out"
# Operator CRDs (production) have no vendored schema: scripts/k8s_validate.py
# skips them by kind and says so; tests/deploy checks their essential fields.
for overlay in single-node production; do
  "$tools/bin/kubectl" kustomize "deploy/k8s/overlays/$overlay" > "$out/$overlay.yaml"
  "$tools/bin/python" scripts/k8s_validate.py 1.33.0 "$out/$overlay.yaml"
  "$tools/bin/checkov" --quiet --compact --framework kubernetes --file "$out/$overlay.yaml" \
    --config-file deploy/k8s/checkov.yaml --skip-download
  echo "k8s-check: $overlay rendered, valid, and clean"
done
"$tools/bin/hadolint" Dockerfile
echo "k8s-check: Dockerfile clean"
