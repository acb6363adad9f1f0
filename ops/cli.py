"""`latchkey`: one command line for the local stack, certificates and admin tasks.

Services add their own command groups in `_service_commands` below; nothing
here connects to anything until a command runs.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from latchkit import settings as lk_settings

app = typer.Typer(help="Latchkey: access-control backend. Exit codes: see `ops/cli_errors.py`.",
                  no_args_is_help=True)
console = Console()

certs_app = typer.Typer(help="Development CA and mTLS certificates.", no_args_is_help=True)
stack_app = typer.Typer(help="The local PostgreSQL, Redis and NATS JetStream.", no_args_is_help=True)
app.add_typer(certs_app, name="certs")
app.add_typer(stack_app, name="stack")


def _certs_dir() -> Path:
    return Path(lk_settings.env_str("LATCHKEY_CERTS_DIR", str(lk_settings.state_dir() / "certs")))


@certs_app.command("init")
def certs_init() -> None:
    """Create the dev CA and the built-in identities' certificates (idempotent)."""
    from devstack import certs

    issued = certs.ensure_dev_certs(_certs_dir())
    for cert in issued:
        console.print(f"issued {cert.uri} -> {cert.cert_file}")
    console.print(f"certificates in {_certs_dir()}")


@certs_app.command("issue")
def certs_issue(
    kind: str = typer.Argument(..., help="door, role or service"),
    name: str = typer.Argument(..., help="door id, role (admin/auditor) or service name"),
    days: float = typer.Option(365, help="validity in days"),
    out: Path = typer.Option(None, help="output directory (default: the certs directory)"),
) -> None:
    """Issue a certificate for spiffe://latchkey/<kind>/<name> from the dev CA."""
    from devstack import certs

    _check_identity(kind, name)
    try:
        cert = certs.issue(_certs_dir(), out or _certs_dir(), kind, name, days=days)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(f"{cert.uri}\n  cert: {cert.cert_file}\n  key:  {cert.key_file}")


KNOWN_NAMES = {"role": ("admin", "auditor"), "service": ("permissions", "access", "audit")}


def _check_identity(kind: str, name: str) -> None:
    """Refuse identities no server would ever accept (latchkit/authz.py): they can only mislead."""
    import uuid

    if kind == "door":
        try:
            uuid.UUID(name)
        except ValueError:
            raise typer.BadParameter(f"{name!r} is not a door id: door ids are UUIDs, as CreateDoor returns them",
                                     param_hint="NAME") from None
    elif kind in KNOWN_NAMES and name not in KNOWN_NAMES[kind]:
        raise typer.BadParameter(f"no {kind} {name!r}; use one of {', '.join(KNOWN_NAMES[kind])}", param_hint="NAME")
    elif kind not in ("door", *KNOWN_NAMES):
        raise typer.BadParameter(f"{kind!r} is not an identity kind; use door, role or service", param_hint="KIND")


@certs_app.command("revoke")
def certs_revoke(
    cert_file: Path = typer.Argument(..., help="the PEM certificate to revoke"),
    note: str = typer.Option("", help="why, kept next to the serial"),
) -> None:
    """Refuse a certificate from now on (servers re-read the list without a restart)."""
    from latchkit.revocation import REVOKED

    if not cert_file.is_file():
        raise typer.BadParameter(f"{cert_file} is not a file", param_hint="CERT_FILE")
    try:
        serial = REVOKED.revoke(cert_file.read_bytes(), note)
    except ValueError as exc:
        raise typer.BadParameter(f"{cert_file} is not a PEM certificate ({exc})", param_hint="CERT_FILE") from None
    console.print(f"revoked serial {serial:x} in {REVOKED.path}")


def _stack():
    from devstack.stack import Stack

    return Stack(lk_settings.state_dir())


@stack_app.command("up")
def stack_up(
    cql: bool = typer.Option(None, "--cql/--no-cql",
                             help="also run the CQL engine (Apache Cassandra 5.0) and keep the unlock view and "
                                  "the audit log in it; default: as this state directory was last started"),
) -> None:
    """Start (or keep) the local stack; prints its URLs."""
    stack = _stack()
    if cql is False and stack.cql_enabled:
        stack.cql_engine.stop()
    stack.up(cql=cql)
    urls = stack.urls()
    console.print(f"postgres {urls.postgres_dsn}\nredis    {urls.redis_url}\nnats     {urls.nats_url}")
    if stack.cql_enabled:
        console.print(f"cql      {stack.cql_engine.address}:{stack.ports.cql} (Apache Cassandra, CQL as ScyllaDB)")


@stack_app.command("down")
def stack_down() -> None:
    """Stop the local stack (data stays under the state directory)."""
    _stack().down()
    console.print("stack stopped")


@stack_app.command("status")
def stack_status() -> None:
    """Show each component: running or not, its port and pid (exit 1 if any enabled one is down)."""
    from rich.table import Table

    stack = _stack()
    table = Table(title=f"local stack in {stack.state_dir}")
    for column in ("component", "state", "port", "pid"):
        table.add_column(column)
    down = False
    for name, info in stack.status().items():
        if not info.get("enabled", True):
            table.add_row(name, "off (latchkey stack up --cql turns it on)", str(info["port"]), "")
            continue
        down |= not info["running"]
        table.add_row(name, "running" if info["running"] else "[red]stopped[/red]", str(info["port"]),
                      str(info.get("pid") or ""))
    console.print(table)
    raise typer.Exit(1 if down else 0)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            console.print(f"latchkey {version('latchkey')}")
        except PackageNotFoundError:
            console.print("latchkey (not installed as a package)")
        raise typer.Exit()


@app.callback()
def _root(_version_flag: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                             help="print the version and exit")) -> None:
    """Latchkey: access-control backend."""


@app.command("migrate")
def migrate() -> None:
    """Apply database migrations and store schemas for every service."""
    from ops.run import migrate_all

    migrate_all()


@app.command("run")
def run() -> None:
    """Start all three services against the local stack; Ctrl-C stops them."""
    from ops.run import run_all

    raise typer.Exit(run_all(console))


@app.command("health")
def health_cmd(
    only: str = typer.Option("", help="check just this service (permissions, access, audit)"),
    output: str = typer.Option("text", help="text, or json (one object per service, its dependencies included)"),
    liveness: bool = typer.Option(False, "--liveness",
                                  help="succeed if the service answers at all, SERVING or not (the liveness probe)"),
) -> None:
    """Check the services' gRPC health over mTLS, with each dependency a service reports (the Kubernetes probes).

    Exit 0 when every service is SERVING, 1 when one is not (a required dependency is down),
    5 when one does not answer. A service that is SERVING with a dependency down is degraded."""
    from latchkit import endpoints
    from ops.run import check_health

    names = [e.service for e in endpoints.ALL]
    if only and only not in names:
        raise typer.BadParameter(f"{only!r} is not a service; use one of {', '.join(names)}", param_hint="--only")
    if output not in ("text", "json"):
        raise typer.BadParameter(f"{output!r} is not an output; use text or json", param_hint="--output")
    raise typer.Exit(check_health(console, only=only, output=output, liveness=liveness))


def _service_commands() -> None:
    """Each service's own command group (`services/<svc>/cli.py`), composed here above the services."""
    from services.access import cli as access
    from services.audit import cli as audit
    from services.permissions import cli as permissions

    app.add_typer(access.app, name="access")
    app.add_typer(audit.app, name="audit")
    app.add_typer(permissions.app, name="permissions")


def main() -> None:
    from ops import cli_errors

    _service_commands()
    cli_errors.run(app)
