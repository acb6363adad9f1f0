"""The manifests match the code: every setting a service reads is set (or deliberately defaulted),
and every entry point the image and the manifests name exists.

Reads what `scripts/k8s-check.sh` (`make k8s-check`, run before the tests by `make test`)
rendered into .state/k8s; if a rendering is missing, renders it with the pinned kubectl that
script installs into .state/tools/k8s. Needs no cluster and no running stack.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import tomllib

import pytest
import yaml

from latchkit.settings import REPO_ROOT

RENDERED = REPO_ROOT / ".state" / "k8s"
KUBECTL = REPO_ROOT / ".state" / "tools" / "k8s" / "bin" / "kubectl"
OVERLAYS = ("single-node", "production")
SERVICES = {"permissions": "LATCHKEY_PERMISSIONS", "access": "LATCHKEY_ACCESS", "audit": "LATCHKEY_AUDIT"}
SHARED = ("settings.py", "bus.py", "logs.py", "secret_hash.py", "revocation.py", "tracing.py", "health.py")
SCYLLA_USERS = {"access", "audit"}
TLS_DIR = "/etc/latchkey/tls"

# The settings the deployment must decide, whatever the code happens to read today
# (docs/architecture.md, "Settings"); the code scan below adds anything newer.
SET_EVERYWHERE = (
    "LATCHKEY_STATE_DIR", "LATCHKEY_LOG_LEVEL", "LATCHKEY_NATS_URL", "LATCHKEY_NATS_REPLICAS",
)
SET_FOR = {
    "permissions": ("LATCHKEY_POSTGRES_DSN", "LATCHKEY_CREDENTIAL_HMAC_KEY_FILE"),
    "access": (
        "LATCHKEY_REDIS_URL", "LATCHKEY_CREDENTIAL_HMAC_KEY_FILE", "LATCHKEY_ACCESS_WORKERS",
        "LATCHKEY_VIEW_BACKEND", "LATCHKEY_SCYLLA_HOSTS", "LATCHKEY_SCYLLA_KEYSPACE",
        "LATCHKEY_SCYLLA_LOCAL_DC",
    ),
    "audit": (
        "LATCHKEY_AUDIT_STORE", "LATCHKEY_SCYLLA_HOSTS", "LATCHKEY_SCYLLA_KEYSPACE",
        "LATCHKEY_SCYLLA_LOCAL_DC", "LATCHKEY_AUDIT_RETENTION_DAYS",
    ),
}
SERVER_SUFFIXES = (
    "HOST", "PORT", "METRICS_PORT", "GRACE_SECONDS", "MAX_MESSAGE_BYTES", "MAX_CONCURRENT_RPCS",
    "TLS_CA", "TLS_CERT", "TLS_KEY",
)
PORTS = {"permissions": (7401, 9401), "access": (7402, 9402), "audit": (7403, 9403)}

# Read by the code, deliberately left to their defaults in the manifests.
DEFAULTED = {
    "LATCHKEY_CERTS_DIR": "every TLS path is set explicitly (<PREFIX>_TLS_*)",
    "LATCHKEY_CREDENTIAL_HMAC_KEY": "the key is a Secret mounted as a file (LATCHKEY_CREDENTIAL_HMAC_KEY_FILE), "
                                    "so it never shows in the environment of a process listing",
    "LATCHKEY_ACCESS_WORKER_INDEX": "set by the access service itself for the worker processes it starts",
    "LATCHKEY_NATS_DUPLICATE_WINDOW_SECONDS": "the 10-minute default covers any relay retry",
    "LATCHKEY_OUTBOX_BATCH": "tuning; default 256",
    "LATCHKEY_OUTBOX_POLL_SECONDS": "tuning; default 0.5 s (NOTIFY wakes the relay sooner)",
    "LATCHKEY_OUTBOX_RELAY": "default process: the relay runs in a child of the permissions process, "
                             "in the same container",
    "LATCHKEY_PERMISSIONS_PARENT_PID": "set by the permissions service itself for the relay process it starts",
    "LATCHKEY_PERMISSIONS_RELAY_STARTED_FD": "set by the permissions service itself for the relay process it starts",
    "LATCHKEY_PERMISSIONS_DB_POOL_SIZE": "tuning; default 20",
    "LATCHKEY_ACCESS_CACHE_TTL_SECONDS": "default 300 s",
    "LATCHKEY_ACCESS_NEGATIVE_TTL_SECONDS": "default 30 s",
    "LATCHKEY_ACCESS_LOCAL_CACHE_ENTRIES": "tuning; default 200,000 entries per process",
    "LATCHKEY_ACCESS_MIN_REVISION_WAIT_SECONDS": "default 1 s (never past the caller's deadline)",
    "LATCHKEY_ACCESS_REDIS_LEASE_SECONDS": "default 1 s",
    "LATCHKEY_ACCESS_MAX_DEADLINE_SECONDS": "default 30 s",
    "LATCHKEY_ACCESS_THROTTLE_WINDOW_SECONDS": "default 60 s",
    "LATCHKEY_ACCESS_THROTTLE_CREDENTIAL_DENIALS": "default 10",
    "LATCHKEY_ACCESS_THROTTLE_DOOR_DENIALS": "default 100",
    "LATCHKEY_ACCESS_DECISION_LINGER_SECONDS": "tuning; default 0.02 s (a crash loses at most this much)",
    "LATCHKEY_AUDIT_INGEST_BATCH": "tuning; default 512",
    "LATCHKEY_ACCESS_PARENT_PID": "set by the access service itself for the worker processes it starts",
    "LATCHKEY_ACCESS_DECISION_DURABILITY": "default acked: Unlock answers only once its decision is acknowledged "
                                           "by JetStream or fsynced in the spool",
    "LATCHKEY_ACCESS_PROJECTOR_STALL_SECONDS": "default 10 s before a stalled projector is restarted",
    "LATCHKEY_SCYLLA_REQUEST_TIMEOUT_SECONDS": "default 2 s per CQL request",
    "LATCHKEY_SCYLLA_REPLICATION_FACTOR": "only for `latchkey migrate` in development; production applies the CQL "
                                          "schemas with the migrate-cql Job (`migrate-cql --rf 3`)",
    "LATCHKEY_SCYLLA_TLS_CERT": "the cluster requires no client certificate: CQL clients authenticate with a password",
    "LATCHKEY_SCYLLA_TLS_KEY": "the cluster requires no client certificate: CQL clients authenticate with a password",
    # Single-node has no CQL store to log in to; in production every pod that speaks CQL must have both,
    # from a Secret (test_production_cql_is_encrypted_and_authenticated).
    "LATCHKEY_SCYLLA_USERNAME": "single-node has no CQL store; production: from the Secret latchkey-scylla-auth",
    "LATCHKEY_SCYLLA_PASSWORD": "single-node has no CQL store; production: from the Secret latchkey-scylla-auth",
}


def names_in(paths) -> set[str]:
    found = set()
    for path in paths:
        text = path.read_text()
        found |= set(re.findall(r"\"(LATCHKEY_[A-Z0-9_]+)\"", text))
    return found


def server_suffixes() -> set[str]:
    text = (REPO_ROOT / "latchkit" / "settings.py").read_text() + (REPO_ROOT / "latchkit" / "endpoints.py").read_text()
    return set(re.findall(r"\{(?:prefix|self\.env_prefix)\}_([A-Z_]+)", text)) | set(SERVER_SUFFIXES)


def required(service: str) -> set[str]:
    """What the service's code reads (its package, the shared modules) plus the floor above."""
    files = [REPO_ROOT / "latchkit" / f for f in SHARED] + list((REPO_ROOT / "services" / service).rglob("*.py"))
    if service in SCYLLA_USERS:
        files.append(REPO_ROOT / "latchkit" / "scylla.py")
    names = {n for n in names_in(files) if not any(n.startswith(p + "_") for s, p in SERVICES.items()
                                                     if s != service)}
    names |= {f"{SERVICES[service]}_{suffix}" for suffix in server_suffixes()}
    names |= set(SET_EVERYWHERE) | set(SET_FOR[service])
    names -= {"LATCHKEY_CLIENT"}
    # <SVC>_TARGET is what clients dial; only the probe (latchkey health) reads it in a pod.
    return names - set(DEFAULTED)


@functools.cache
def documents(overlay: str) -> list[dict]:
    path = RENDERED / f"{overlay}.yaml"
    if path.exists():
        text = path.read_text()
    else:
        assert KUBECTL.exists(), f"{path} and {KUBECTL} are missing: run scripts/k8s-check.sh (make k8s-check)"
        text = subprocess.run([str(KUBECTL), "kustomize", str(REPO_ROOT / "deploy/k8s/overlays" / overlay)],
                              check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def find(docs: list[dict], kind: str, name: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


WORKLOAD_KIND = {"permissions": "Deployment", "access": "StatefulSet", "audit": "Deployment"}


def workload(docs: list[dict], name: str) -> dict:
    """A service's Deployment (access: its StatefulSet, for the per-pod spool volume)."""
    return find(docs, WORKLOAD_KIND[name], name)


def container_env(docs: list[dict], container: dict) -> dict[str, object]:
    """The container's effective environment: envFrom ConfigMaps, then env (which wins)."""
    config = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    env: dict[str, object] = {}
    for source in container.get("envFrom", []):
        env.update(config[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def service_container(docs: list[dict], name: str) -> dict:
    return workload(docs, name)["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_setting_is_set_in_every_service_container(overlay):
    docs = documents(overlay)
    missing = {}
    for name in SERVICES:
        absent = required(name) - set(container_env(docs, service_container(docs, name)))
        if absent:
            missing[name] = sorted(absent)
    assert missing == {}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servers_listen_on_all_interfaces_with_the_mounted_certificates(overlay):
    docs = documents(overlay)
    for name, prefix in SERVICES.items():
        pod = workload(docs, name)["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = container_env(docs, container)
        grpc_port, metrics_port = PORTS[name]
        assert env[f"{prefix}_HOST"] == "0.0.0.0", name  # 127.0.0.1 (the default) is unreachable in a pod
        assert (int(env[f"{prefix}_PORT"]), int(env[f"{prefix}_METRICS_PORT"])) == (grpc_port, metrics_port)
        assert {p["containerPort"] for p in container["ports"]} == {grpc_port, metrics_port}
        assert [env[f"{prefix}_TLS_{k}"] for k in ("CA", "CERT", "KEY")] == [
            f"{TLS_DIR}/ca.crt", f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key"]
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == TLS_DIR)
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == f"latchkey-{name}-tls"
        # The probe dials the pod itself as the pod's own identity (the server is mTLS-only).
        # Readiness follows the truth; liveness only asks that the server answers (a pod
        # restarted because its database is down brings nothing back).
        assert container["readinessProbe"]["exec"]["command"] == ["latchkey", "health", "--only", name]
        assert container["livenessProbe"]["exec"]["command"] == ["latchkey", "health", "--only", name, "--liveness"]
        assert env[f"{prefix}_TARGET"] == f"localhost:{grpc_port}"
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
        assert security["capabilities"]["drop"] == ["ALL"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_credential_key_comes_from_a_secret_file(overlay):
    docs = documents(overlay)
    for name in ("permissions", "access"):
        pod = workload(docs, name)["spec"]["template"]["spec"]
        path = container_env(docs, pod["containers"][0])["LATCHKEY_CREDENTIAL_HMAC_KEY_FILE"]
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == "latchkey-hmac"


def latchkey_help(words: list[str]) -> int:
    return subprocess.run([sys.executable, "-c", "from ops.cli import main; main()", *words, "--help"],
                          cwd=REPO_ROOT, capture_output=True).returncode


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_entry_points_named_by_the_manifests_exist(overlay):
    for doc in documents(overlay):
        if doc["kind"] not in ("Deployment", "StatefulSet", "Job", "CronJob"):
            continue
        spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
        for container in spec["template"]["spec"]["containers"]:
            if not container["image"].startswith("ghcr.io/latchkey/"):
                continue  # data stores: not ours
            args = container.get("args") or []
            if args and args[0].startswith("services."):
                main = REPO_ROOT / args[0].replace(".", "/") / "__main__.py"
                assert main.exists(), f"{doc['metadata']['name']}: {main} is missing"
            command = " ".join(container.get("command") or [])
            for match in re.findall(r"latchkey ([a-z-]+(?: [a-z-]+)?)", command):
                assert latchkey_help(match.split()) == 0, match


def test_dockerfile_entrypoint_and_default_command_exist():
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m"]' in text
    assert re.search(r"^USER 10001", text, re.M)
    default = re.search(r'CMD \["([a-z.]+)"\]', text).group(1)
    assert (REPO_ROOT / default.replace(".", "/") / "__main__.py").exists(), default
    for service in SERVICES:
        assert (REPO_ROOT / "services" / service / "__main__.py").exists(), service
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["latchkey"] == "ops.cli:main"


def test_the_image_lists_every_command_the_manifests_use():
    """Job commands and probes need nothing the Dockerfile does not install."""
    for words in (["migrate"], ["health"], ["access", "migrate-cql"], ["audit", "migrate-cql"],
                  ["access", "rebuild-view"]):
        assert latchkey_help(words) == 0, words


def test_production_differs_only_where_an_overlay_should():
    single, production = documents("single-node"), documents("production")
    image = {service_container(docs, name)["image"] for docs in (single, production) for name in SERVICES}
    assert len(image) == 1
    keys = [set(find(docs, "ConfigMap", "latchkey-config")["data"]) for docs in (single, production)]
    assert keys[0] == keys[1]


def test_single_node_uses_embedded_stores_on_volumes():
    docs = documents("single-node")
    config = find(docs, "ConfigMap", "latchkey-config")["data"]
    assert (config["LATCHKEY_VIEW_BACKEND"], config["LATCHKEY_AUDIT_STORE"]) == ("embedded", "embedded")
    assert not any(d["kind"] in ("ScyllaCluster", "HorizontalPodAutoscaler") for d in docs)
    assert not any(d["kind"] == "Job" and d["metadata"]["name"] == "migrate-cql" for d in docs)
    for name in SERVICES:
        assert workload(docs, name)["spec"]["replicas"] == 1
    audit = workload(docs, "audit")["spec"]["template"]["spec"]
    state = next(v for v in audit["volumes"] if v["name"] == "state")
    assert state["persistentVolumeClaim"]["claimName"] == "audit-state" and "emptyDir" not in state
    # Access keeps the embedded view on its pod's own volume; the rebuild job writes there too.
    access = workload(docs, "access")["spec"]
    assert [t["metadata"]["name"] for t in access["volumeClaimTemplates"]] == ["state"]
    assert access["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert not any(v["name"] == "state" for v in access["template"]["spec"]["volumes"])
    rebuild = find(docs, "CronJob", "rebuild-view")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    state = next(v for v in rebuild["volumes"] if v["name"] == "state")
    assert state["persistentVolumeClaim"]["claimName"] == "state-access-0"
    nats = find(docs, "ConfigMap", "nats-config")["data"]["nats.conf"]
    assert "sync_interval: always" in nats


def test_production_data_tier():
    docs = documents("production")
    config = find(docs, "ConfigMap", "latchkey-config")["data"]
    assert (config["LATCHKEY_VIEW_BACKEND"], config["LATCHKEY_AUDIT_STORE"]) == ("scylla", "scylla")
    assert config["LATCHKEY_NATS_REPLICAS"] == "3"
    scylla = next(d for d in docs if d["kind"] == "ScyllaCluster")
    assert scylla["apiVersion"] == "scylla.scylladb.com/v1"
    assert len(scylla["spec"]["datacenter"]["racks"]) == 3
    assert config["LATCHKEY_SCYLLA_LOCAL_DC"] == scylla["spec"]["datacenter"]["name"]
    assert config["LATCHKEY_SCYLLA_HOSTS"] == f"{scylla['metadata']['name']}-client"
    migrate_cql = " ".join(find(docs, "Job", "migrate-cql")["spec"]["template"]["spec"]["containers"][0]["command"])
    assert "--rf 3" in migrate_cql
    # The audit migration creates the shared keyspace, as a vnode keyspace (its fence needs LWT).
    assert migrate_cql.index("latchkey audit migrate-cql") < migrate_cql.index("latchkey access migrate-cql")
    postgres = next(d for d in docs if d["kind"] == "Cluster")
    assert postgres["apiVersion"] == "postgresql.cnpg.io/v1" and postgres["spec"]["instances"] == 3
    assert postgres["spec"]["postgresql"]["synchronous"]["number"] >= 1
    dsn = container_env(docs, service_container(docs, "permissions"))["LATCHKEY_POSTGRES_DSN"]
    assert dsn == {"secretKeyRef": {"name": f"{postgres['metadata']['name']}-app", "key": "uri"}}
    certs = {d["metadata"]["name"]: d["spec"].get("uris") for d in docs if d["kind"] == "Certificate"}
    # The services' identities; ScyllaDB's serving certificate and Prometheus' client one are none.
    assert certs == {**{f"latchkey-{s}": [f"spiffe://latchkey/service/{s}"] for s in SERVICES},
                     "latchkey-scylla": None, "latchkey-prometheus": None}
    nats_conf = find(docs, "ConfigMap", "nats-config")["data"]["nats.conf"]
    assert "sync_interval: always" in nats_conf
    assert find(docs, "StatefulSet", "nats")["spec"]["replicas"] == 3
    redis = find(docs, "Deployment", "redis")["spec"]["template"]["spec"]["containers"][0]
    assert redis["args"][:4] == ["--save", "", "--appendonly", "no"]  # a cache: nothing persisted
    for name in ("permissions", "access"):
        assert workload(docs, name)["spec"]["replicas"] > 1
        scaler = find(docs, "HorizontalPodAutoscaler", name)["spec"]
        assert scaler["minReplicas"] > 1 and scaler["scaleTargetRef"]["kind"] == WORKLOAD_KIND[name]
    for name in SERVICES:
        spread = workload(docs, name)["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert "topology.kubernetes.io/zone" in {c["topologyKey"] for c in spread}
    # Each access pod's decision spool is on a volume of its own, kept across reschedules.
    access = workload(docs, "access")["spec"]
    assert [t["metadata"]["name"] for t in access["volumeClaimTemplates"]] == ["state"]
    assert access["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    mounts = {m["name"]: m["mountPath"] for m in access["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["state"] == "/var/lib/latchkey"


def pod_specs(docs: list[dict]):
    """(name, pod spec) of every workload that runs the image, Jobs and CronJobs included."""
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet", "Job", "CronJob"):
            continue
        spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
        pod = spec["template"]["spec"]
        if pod["containers"][0]["image"].startswith("ghcr.io/latchkey/"):
            yield doc["metadata"]["name"], pod


def speaks_cql(container: dict) -> bool:
    """The access and audit services and their `latchkey access|audit ...` commands; nothing else."""
    args = container.get("args") or []
    command = " ".join(container.get("command") or [])
    return (bool(args) and args[0] in ("services.access", "services.audit")) or bool(
        re.search(r"latchkey (access|audit) ", command))


def mounted_file(pod: dict, container: dict, path: str) -> tuple[str, str]:
    """(Secret name, key) of the file at `path`, which must come from a mounted Secret."""
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    key = path[len(mount["mountPath"]) + 1:]
    items = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
    assert not items or key in items, f"{path} is not among the mounted items"
    return volume["secret"]["secretName"], items[key] if items else key


def test_production_cql_is_encrypted_and_authenticated():
    docs = documents("production")
    cql_pods = {}
    for name, pod in pod_specs(docs):
        container = pod["containers"][0]
        env = container_env(docs, container)
        if not speaks_cql(container):
            # Least privilege: the ScyllaDB role's password goes only where CQL is spoken.
            assert "LATCHKEY_SCYLLA_PASSWORD" not in env, name
            continue
        cql_pods[name] = env
        assert env["LATCHKEY_SCYLLA_HOSTS"] and env["LATCHKEY_SCYLLA_PORT"] == "9042", name
        # TLS on, verified with the CA that issues the nodes' certificate, mounted from a Secret.
        assert env["LATCHKEY_SCYLLA_TLS_CA"] == f"{TLS_DIR}/ca.crt", name
        secret, key = mounted_file(pod, container, env["LATCHKEY_SCYLLA_TLS_CA"])
        assert secret in {f"latchkey-{s}-tls" for s in SERVICES} and key == "ca.crt", name
        # The password role, from a Secret: never a plain value in the manifests.
        for variable, key in (("LATCHKEY_SCYLLA_USERNAME", "username"), ("LATCHKEY_SCYLLA_PASSWORD", "password")):
            assert env.get(variable) == {"secretKeyRef": {"name": "latchkey-scylla-auth", "key": key}}, (name, variable)
    assert set(cql_pods) == {"access", "audit", "migrate-cql", "rebuild-view"}

    # The nodes: a certificate from the project's CA, TLS required on every CQL port, passwords required.
    certificate = find(docs, "Certificate", "latchkey-scylla")["spec"]
    assert certificate["issuerRef"] == {"name": "latchkey-ca", "kind": "Issuer"}
    assert certificate["usages"] == ["server auth"]
    scylla = next(d for d in docs if d["kind"] == "ScyllaCluster")
    client_service = f"{scylla['metadata']['name']}-client"
    assert {client_service, f"{client_service}.latchkey.svc"} <= set(certificate["dnsNames"])
    # The driver checks that name, not each node's IP (which no certificate can list).
    for name, env in cql_pods.items():
        assert env["LATCHKEY_SCYLLA_TLS_SERVER_NAME"] in certificate["dnsNames"], name
    for rack in scylla["spec"]["datacenter"]["racks"]:
        config = yaml.safe_load(find(docs, "ConfigMap", rack["scyllaConfig"])["data"]["scylla.yaml"])
        assert config["authenticator"] == "PasswordAuthenticator", rack["name"]
        assert config["authorizer"] == "CassandraAuthorizer", rack["name"]
        encryption = config["client_encryption_options"]
        assert encryption["enabled"] is True and encryption["require_client_auth"] is False, rack["name"]
        # A TLS port equal to the plain one makes that port TLS-only; a different one (the
        # operator's automatic 9142) would leave 9042 in plain text.
        assert config["native_transport_port_ssl"] == config["native_transport_port"] == 9042, rack["name"]
        assert (config["native_shard_aware_transport_port_ssl"] == config["native_shard_aware_transport_port"]
                == 19042), rack["name"]
        for path, key in ((encryption["certificate"], "tls.crt"), (encryption["keyfile"], "tls.key")):
            mount = next(m for m in rack["volumeMounts"] if path == f"{m['mountPath']}/{key}")
            volume = next(v for v in rack["volumes"] if v["name"] == mount["name"])
            assert volume["secret"]["secretName"] == certificate["secretName"], rack["name"]


def test_production_prometheus_scrapes_every_service_over_mtls():
    docs = documents("production")
    client = find(docs, "Certificate", "latchkey-prometheus")["spec"]
    assert client["usages"] == ["client auth"] and "uris" not in client
    assert client["issuerRef"] == {"name": "latchkey-ca", "kind": "Issuer"}
    secret = client["secretName"]
    for name in SERVICES:
        monitor = find(docs, "ServiceMonitor", name)
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        service = find(docs, "Service", name)
        # It selects the service's Service, on the port the metrics listen on.
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        [endpoint] = monitor["spec"]["endpoints"]
        port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
        assert port["port"] == PORTS[name][1]
        # Over https, presenting the client certificate, checking the name the server's certificate carries.
        tls = endpoint["tlsConfig"]
        assert endpoint["scheme"] == "https"
        assert tls["ca"] == {"secret": {"name": secret, "key": "ca.crt"}}
        assert tls["cert"] == {"secret": {"name": secret, "key": "tls.crt"}}
        assert tls["keySecret"] == {"name": secret, "key": "tls.key"}
        assert tls["serverName"] in find(docs, "Certificate", f"latchkey-{name}")["spec"]["dnsNames"]
        # And the NetworkPolicy lets the monitoring namespace reach that port.
        policy = find(docs, "NetworkPolicy", name)["spec"]["ingress"]
        assert any({"protocol": "TCP", "port": port["port"]} in rule["ports"] and any(
            peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            == "monitoring" for peer in rule.get("from", [])) for rule in policy), name
