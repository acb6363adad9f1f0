"""The manifests match the code: every setting a service reads is set (or deliberately defaulted),
and every entry point the image and the manifests name exists.

Reads what `make k8s-check` rendered into .state/k8s (it runs before the tests in `make test`).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest
import yaml

from latchkit.settings import REPO_ROOT

RENDERED = REPO_ROOT / ".state" / "k8s"
OVERLAYS = ("single-node", "production")
SERVICES = {"permissions": "LATCHKEY_PERMISSIONS", "access": "LATCHKEY_ACCESS", "audit": "LATCHKEY_AUDIT"}
SHARED = ("settings.py", "bus.py", "logs.py", "secrets.py", "revocation.py")
SCYLLA_USERS = {"access", "audit"}
# Read by the code, deliberately left to their defaults in the manifests.
DEFAULTED = {
    "LATCHKEY_CERTS_DIR": "every TLS path is set explicitly (<PREFIX>_TLS_*)",
    "LATCHKEY_CREDENTIAL_HMAC_KEY": "the key is mounted as a file (LATCHKEY_CREDENTIAL_HMAC_KEY_FILE)",
    "LATCHKEY_ACCESS_WORKER_INDEX": "set by the access service itself for the worker processes it starts",
    "LATCHKEY_NATS_DUPLICATE_WINDOW_SECONDS": "the 10-minute default covers any relay retry",
    "LATCHKEY_OUTBOX_BATCH": "tuning; default 256",
    "LATCHKEY_OUTBOX_POLL_SECONDS": "tuning; default 0.5 s (NOTIFY wakes the relay sooner)",
    "LATCHKEY_PERMISSIONS_DB_POOL_SIZE": "tuning; default 20",
    "LATCHKEY_ACCESS_CACHE_TTL_SECONDS": "default 300 s",
    "LATCHKEY_ACCESS_NEGATIVE_TTL_SECONDS": "default 30 s",
    "LATCHKEY_ACCESS_MIN_REVISION_WAIT_SECONDS": "default 2 s",
    "LATCHKEY_ACCESS_MAX_DEADLINE_SECONDS": "default 30 s",
    "LATCHKEY_ACCESS_THROTTLE_WINDOW_SECONDS": "default 60 s",
    "LATCHKEY_ACCESS_THROTTLE_CREDENTIAL_DENIALS": "default 10",
    "LATCHKEY_ACCESS_THROTTLE_DOOR_DENIALS": "default 100",
    "LATCHKEY_AUDIT_INGEST_BATCH": "tuning; default 512",
}


def names_in(paths) -> set[str]:
    found = set()
    for path in paths:
        text = path.read_text()
        found |= set(re.findall(r"\"(LATCHKEY_[A-Z0-9_]+)\"", text))
    return found


def server_suffixes() -> set[str]:
    text = (REPO_ROOT / "latchkit" / "settings.py").read_text() + (REPO_ROOT / "latchkit" / "endpoints.py").read_text()
    return set(re.findall(r"\{(?:prefix|self\.env_prefix)\}_([A-Z_]+)", text))


def required(service: str) -> set[str]:
    files = [REPO_ROOT / "latchkit" / f for f in SHARED] + list((REPO_ROOT / "services" / service).rglob("*.py"))
    if service in SCYLLA_USERS:
        files.append(REPO_ROOT / "latchkit" / "scylla.py")
    names = {n for n in names_in(files) if not any(n.startswith(p + "_") for s, p in SERVICES.items()
                                                     if s != service)}
    names |= {f"{SERVICES[service]}_{suffix}" for suffix in server_suffixes()}
    names -= {"LATCHKEY_CLIENT"}
    return names - set(DEFAULTED)


def documents(overlay: str) -> list[dict]:
    path = RENDERED / f"{overlay}.yaml"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make k8s-check` first (make test does)")
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_setting_is_set_in_every_service_container(overlay):
    docs = documents(overlay)
    config = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    missing = {}
    for name in SERVICES:
        deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        present = {e["name"] for e in container.get("env", [])}
        for source in container.get("envFrom", []):
            present |= set(config[source["configMapRef"]["name"]])
        absent = required(name) - present
        if absent:
            missing[name] = sorted(absent)
    assert missing == {}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_entry_points_named_by_the_manifests_exist(overlay):
    for doc in documents(overlay):
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            args = container.get("args") or []
            if args and args[0].startswith("services."):
                assert importlib.util.find_spec(args[0] + ".__main__"), args[0]
            command = " ".join(container.get("command") or [])
            for match in re.findall(r"latchkey ([a-z-]+(?: [a-z-]+)?)", command):
                assert latchkey_help(match.split()) == 0, match


def latchkey_help(words: list[str]) -> int:
    return subprocess.run([sys.executable, "-c", "from latchkit.cli import main; main()", *words, "--help"],
                          cwd=REPO_ROOT, capture_output=True).returncode


def test_dockerfile_entrypoint_and_default_command_exist():
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m"]' in text
    default = re.search(r'CMD \["([a-z.]+)"\]', text).group(1)
    assert importlib.util.find_spec(default + ".__main__")


def test_production_differs_only_where_an_overlay_should():
    single, production = documents("single-node"), documents("production")
    image = {d["spec"]["template"]["spec"]["containers"][0]["image"]
             for docs in (single, production) for d in docs
             if d["kind"] == "Deployment" and d["metadata"]["name"] in SERVICES}
    assert len(image) == 1
    keys = [set(next(d for d in docs if d["metadata"]["name"] == "latchkey-config")["data"])
            for docs in (single, production)]
    assert keys[0] == keys[1]
    scylla = next(d for d in production if d["kind"] == "ScyllaCluster")
    assert len(scylla["spec"]["datacenter"]["racks"]) == 3
    certs = {d["metadata"]["name"]: d["spec"]["uris"] for d in production if d["kind"] == "Certificate"}
    assert certs == {f"latchkey-{s}": [f"spiffe://latchkey/service/{s}"] for s in SERVICES}
    nats = next(d for d in production if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "nats-config")
    assert "sync_interval: always" in nats["data"]["nats.conf"]
