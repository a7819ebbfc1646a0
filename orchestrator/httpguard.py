"""Who may call orch's HTTP endpoints: the checks every server (tool service, router, controller, agent)
applies to a request before it reaches a handler. Pure functions over headers; standard library only.

- A request carrying ``Origin`` or ``Sec-Fetch-Site`` comes from a browser; orch has no browser clients, so it
  is refused 403 (a web page must not run code through the tool service: CSRF).
- A ``Host`` that is not an IP literal, a loopback name, the bound host or an ``--allowed-host`` is refused
  403 (DNS rebinding always presents the attacker's host *name*; kubelet probes and Prometheus use pod IPs).
- With a token configured, every path but the open ones (health/readiness probes: kubelet cannot send a
  token) needs ``Authorization: Bearer <token>``, else 401. Open paths reveal nothing sensitive without it.
- A server bound to anything but loopback refuses to start without a token (``guard_config``).

Clients (``client_token``, ``bearer``, ``unauthorized``): orch's own callers of these endpoints send the token
from ``$ORCH_<X>_TOKEN`` or the file ``$ORCH_<X>_TOKEN_FILE`` names, and turn a 401 into one ``Unauthorized``
line naming the variable to set. Never a run spec field: specs are stored in the database.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import OrchError

__all__ = [
    "GuardConfig",
    "InsecureEndpoint",
    "Refusal",
    "Unauthorized",
    "authenticated",
    "bearer",
    "check_request",
    "client_token",
    "guard_config",
    "is_loopback",
    "read_token",
    "unauthorized",
]

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


class InsecureEndpoint(OrchError):
    """An endpoint would listen beyond loopback without a token, or its token cannot be read."""

    exit_code = 2


class Unauthorized(OrchError):
    """An orch endpoint answered 401 to one of orch's own clients: it sent no token, or not that one."""

    exit_code = 2


@dataclass(frozen=True)
class GuardConfig:
    """What one server accepts: its bound host, its token (None: no token), extra Host names, open paths."""

    host: str = "127.0.0.1"
    token: str | None = None
    allowed_hosts: frozenset[str] = frozenset()
    open_paths: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Refusal:
    """An answer instead of the handler's: status, a one-line reason, extra headers."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(env_name: str, token_file: str | os.PathLike[str] | None) -> str | None:
    """The token from ``token_file`` (when given) or ``$env_name``; None when neither is set."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as error:
            raise InsecureEndpoint(f"--token-file: cannot read {token_file} ({error.strerror})") from None
        if not token:
            raise InsecureEndpoint(f"--token-file: {token_file} is empty; put the bearer token in it")
        return token
    token = os.environ.get(env_name, "").strip()
    return token or None


def client_token(env_name: str) -> str | None:
    """The token a client sends to an endpoint guarded by ``env_name``: the contents of the file
    ``$<env_name>_FILE`` names when set, else ``$<env_name>``; None when neither is set."""
    file_env = env_name + "_FILE"
    path = os.environ.get(file_env, "").strip()
    if not path:
        return os.environ.get(env_name, "").strip() or None
    try:
        token = Path(path).read_text().strip()
    except OSError as error:
        raise Unauthorized(f"{file_env}: cannot read {path} ({error.strerror})") from None
    if not token:
        raise Unauthorized(f"{file_env}: {path} is empty; put the bearer token in it")
    return token


def bearer(token: str | None) -> dict[str, str]:
    """The ``Authorization`` header carrying ``token`` (none without one)."""
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def unauthorized(url: str, env_name: str, token: str | None) -> Unauthorized:
    """The one-line error for a 401 from ``url``, naming the variable that holds its token."""
    if token is None:
        return Unauthorized(
            f"{url} answered 401: it requires a bearer token; set {env_name} (or {env_name}_FILE) to it"
        )
    return Unauthorized(f"{url} answered 401: the token in {env_name} (or {env_name}_FILE) is not its token")


def guard_config(
    host: str,
    token: str | None,
    *,
    env_name: str,
    allowed_hosts: Iterable[str] = (),
    open_paths: Iterable[str] = (),
) -> GuardConfig:
    """A validated config: a host beyond loopback needs a token (``InsecureEndpoint`` otherwise)."""
    if token is None and not is_loopback(host):
        raise InsecureEndpoint(
            f"--host {host or '0.0.0.0'} is reachable from other machines: set {env_name} or --token-file "
            "so callers must authenticate, or listen on 127.0.0.1"
        )
    names = frozenset(_host_name(name) for name in allowed_hosts if name.strip())
    return GuardConfig(host, token, names, frozenset(open_paths))


def check_request(path: str, headers: Mapping[str, str], config: GuardConfig) -> Refusal | None:
    """Why this request is refused (403 browser or foreign Host, 401 token), or None to serve it.

    ``headers`` must look names up case-insensitively (aiohttp's and http.server's headers do)."""
    if headers.get("Origin") is not None or headers.get("Sec-Fetch-Site") is not None:
        return Refusal(403, "browser requests are refused: orch's endpoints have no browser clients")
    host = headers.get("Host")
    if host is not None and not _host_allowed(_host_name(host), config):
        return Refusal(403, f"Host {host!r} is not this server's; add it with --allowed-host if it is")
    if config.token is None or path in config.open_paths or authenticated(headers, config):
        return None
    return Refusal(401, "a bearer token is required", (("WWW-Authenticate", 'Bearer realm="orch"'),))


def authenticated(headers: Mapping[str, str], config: GuardConfig) -> bool:
    """Whether the request carries the configured token (always True when none is configured)."""
    if config.token is None:
        return True
    scheme, _, given = (headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), config.token.encode())


def _host_name(host: str) -> str:
    """``Host`` without its port, lower-cased; IPv6 literals keep no brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def _host_allowed(name: str, config: GuardConfig) -> bool:
    if name in LOOPBACK_NAMES or name in config.allowed_hosts or name == _host_name(config.host):
        return True
    try:
        ipaddress.ip_address(name)  # an IP literal cannot be rebound to another address
    except ValueError:
        return False
    return True
