#!/usr/bin/env bash
# make k8s-check: render every overlay, validate the output against the
# Kubernetes schemas, scan it (and the Dockerfile) with policy checkers.
# Tools are pinned in tools/k8s/requirements.txt (compiled for Python 3.11)
# and installed into their own environment (.state/tools/k8s), not taken from
# the machine and never mixed with the services' .venv. Safe to run again: the
# environment is rebuilt only when the pins or the interpreter change.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=.state/tools/k8s
out=.state/k8s
k8s_version=1.33.0
uv=.state/tools/uv/bin/uv # the pinned uv `make setup` installs; optional here

key=$({ cat tools/k8s/requirements.txt; python3 -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)
stamp="$tools/.installed-$key"
if [[ ! -f "$stamp" ]]; then
  echo "k8s-check: installing the pinned tools into $tools"
  rm -rf "$tools"
  if [[ -x "$uv" ]]; then
    # uv finds (or fetches) the 3.11 the pins were compiled for.
    "$uv" venv --quiet --python 3.11 "$tools"
    "$uv" pip install --quiet --python "$tools/bin/python" -r tools/k8s/requirements.txt
  else
    python3 -m venv "$tools"
    "$tools/bin/python" -m pip install --quiet --disable-pip-version-check -r tools/k8s/requirements.txt
  fi
  touch "$stamp"
fi
for tool in kubectl checkov hadolint; do
  [[ -x "$tools/bin/$tool" ]] || { echo "k8s-check: $tools/bin/$tool missing after install" >&2; exit 1; }
done

mkdir -p "$out"
for overlay in single-node production; do
  # Render to a temporary file first, so tests/deploy never reads a half-written rendering.
  "$tools/bin/kubectl" kustomize "deploy/k8s/overlays/$overlay" > "$out/$overlay.yaml.tmp"
  mv "$out/$overlay.yaml.tmp" "$out/$overlay.yaml"
  # Operator CRDs (ScyllaCluster, CloudNativePG Cluster, cert-manager Issuer and
  # Certificate, Prometheus Operator ServiceMonitor) have no schema vendored here (their CRDs live in the operators'
  # GitHub releases, which this machine cannot reach): scripts/k8s_validate.py
  # skips them by kind and names each one; tests/deploy checks their key fields.
  "$tools/bin/python" scripts/k8s_validate.py "$k8s_version" "$out/$overlay.yaml"
  # Zero failed checks; the few skipped are listed with reasons in
  # deploy/k8s/checkov.yaml (whole rendering) or a checkov.io/skip annotation.
  "$tools/bin/checkov" --quiet --compact --framework kubernetes --file "$out/$overlay.yaml" \
    --config-file deploy/k8s/checkov.yaml --skip-download
  echo "k8s-check: $overlay rendered, valid, and clean"
done
"$tools/bin/hadolint" Dockerfile
echo "k8s-check: Dockerfile clean"
