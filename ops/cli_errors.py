"""How the `latchkey` command ends: one clear line for every user-facing failure, and an exit code per kind.

| code | meaning |
|---|---|
| 0 | done |
| 1 | a check found a problem (`audit verify`: the chain is broken; `health`: a service is not SERVING) |
| 2 | the command line or an input is wrong (a bad option, an unknown service, a file that does not exist) |
| 3 | the local environment failed (the stack, the CQL engine, a setting) |
| 4 | a service refused the request (its gRPC status and message are printed) |
| 5 | a service could not be reached (not running, or not answering in time) |

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

OK, CHECK_FAILED, USAGE, ENVIRONMENT, REFUSED, UNREACHABLE = 0, 1, 2, 3, 4, 5


def fail(message: str, code: int) -> None:
    print(f"latchkey: {message}", file=sys.stderr)
    raise SystemExit(code)


def run(app: Callable[[], object]) -> None:
    """Call the typer app, translating the failures a user can cause or meet into one line each."""
    import grpc

    from latchkit.settings import EnvironmentProblem
    from latchkit.tls import MissingCertificateError

    try:
        app()
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
        name = code.name if code is not None else "UNKNOWN"
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            fail(f"the service did not answer ({name}: {details}); is it running? (`latchkey health`)", UNREACHABLE)
        fail(f"the service refused the request: {name}: {details}", REFUSED)
    except (EnvironmentProblem, MissingCertificateError) as exc:
        fail(str(exc), ENVIRONMENT)
    except ModuleNotFoundError as exc:
        if exc.name != "devstack":
            raise
        # The image ships the operator's commands only (ops/), not the development tooling.
        fail("this command needs a development checkout (the local stack and dev CA are not installed here)",
             ENVIRONMENT)
    except FileNotFoundError as exc:
        fail(f"no such file: {exc.filename}", USAGE)
