"""Who may call orch's HTTP endpoints: the checks every server (tool service, router, controller, agent)
applies to a request before it reaches a handler. Pure functions over headers; standard library only.

- A request carrying ``Origin`` or ``Sec-Fetch-Site`` comes from a browser; orch has no browser clients, so it
  is refused 403 (a web page must not run code through the tool service: CSRF).
- A ``Host`` that is not an IP literal, a loopback name, the bound host or an ``--allowed-host`` is refused
  403 (DNS rebinding always presents the attacker's host *name*; kubelet probes and Prometheus use pod IPs).
- With a token configured, every path but the open ones (health/readiness probes: kubelet cannot send a
  token) needs ``Authorization: Bearer <token>``, else 401. Open paths reveal nothing sensitive without it.
- A server bound to anything but loopback refuses to start without a token (``guard_config``).
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
    "authenticated",
    "check_request",
    "guard_config",
    "is_loopback",
    "read_token",
]

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


class InsecureEndpoint(OrchError):
    """An endpoint would listen beyond loopback without a token, or its token cannot be read."""

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
