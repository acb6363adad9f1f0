"""Validate rendered manifests against the Kubernetes schemas (run with the k8s tool environment).

Operator resources (ScyllaCluster, CloudNativePG Cluster, cert-manager, the
Prometheus Operator's ServiceMonitor) have no schema vendored here; they are
skipped by kind, and named in the output.
"""

import sys

import kubernetes_validate
import yaml

OPERATOR_KINDS = {"ScyllaCluster", "Cluster", "Certificate", "Issuer", "ServiceMonitor"}


def main(version: str, paths: list[str]) -> int:
    failures = 0
    for path in paths:
        with open(path) as fh:
            for doc in yaml.safe_load_all(fh):
                if not doc:
                    continue
                name = f"{doc['kind']}/{doc['metadata']['name']}"
                if doc["kind"] in OPERATOR_KINDS:
                    print(f"skipped {name}: operator CRD, no vendored schema")
                    continue
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    failures += 1
                    print(f"INVALID {path} {name}: {exc.message} at {list(exc.path)}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2:]))
