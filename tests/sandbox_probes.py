"""Snippets that try the ways a probe escaped the sandbox's weak mode, and the checks that they were
contained; without pytest, so that a test can run them as nobody with the system Python."""

from __future__ import annotations

import os
import sys

from orchestrator.tools import sandbox, zygote
from orchestrator.tools.sandbox import SandboxPool

SECRET = "hunter2-isolation-secret"
POSTGRES = ["/run/postgresql/.s.PGSQL.5432", "/var/run/postgresql/.s.PGSQL.5432"]

# Each probe prints one line the checks below read.
PROBES = {
    "processes": (
        "import os, time\nchild = os.fork()\nif child == 0:\n    time.sleep(5)\n    os._exit(0)\n"
        "seen = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "print(seen == sorted([os.getpid(), child]), seen)"
    ),
    # (a) a program started through _posixsubprocess, as the weak mode's probe did, connects to the host
    "program_network": (
        "import _posixsubprocess, subprocess\n"
        "code = 'import socket; socket.create_connection((\"127.0.0.1\", {port}), timeout=2); '\n"
        "code += 'print(\"connected\")'\n"
        # the real interpreter (resolved outside): a virtualenv's under /tmp is hidden by the call's /tmp
        "run = subprocess.run([{python!r}, '-c', code], capture_output=True, text=True)\n"
        "print('connected' in run.stdout, run.stderr.strip().splitlines()[-1:])"
    ),
    # (b) PostgreSQL's Unix socket, where it lives on this machine
    "postgres": (
        "import socket\nfor path in {paths!r}:\n    try:\n"
        "        socket.socket(socket.AF_UNIX).connect(path)\n"
        "        print('connected', path)\n        break\n"
        "    except OSError as error:\n        pass\nelse:\n    print('refused')"
    ),
    # (c) any process's environment: the service's holds the secret
    "environ": (
        "import glob\nfound = []\nfor path in glob.glob('/proc/[0-9]*/environ'):\n    try:\n"
        "        found.append({secret!r}.encode() in open(path, 'rb').read())\n"
        "    except OSError:\n        pass\n"
        "print(any(found))"
    ),
    # (d) the service's own package files
    "package": (
        "import os\nfor path in {paths!r}:\n    try:\n        open(path, 'a').write('# escaped\\n')\n"
        "        print('rewrote', path)\n        break\n    except OSError as error:\n        pass\nelse:\n"
        "    print('refused')"
    ),
}


async def probe_all(pool: SandboxPool, port: int) -> dict[str, str]:
    """Each probe's first stdout line (or its stderr's last), by name."""
    package = [zygote.__file__, sandbox.__file__]
    codes = {
        name: code.format(
            port=port,
            paths=POSTGRES if name == "postgres" else package,
            secret=SECRET,
            python=os.path.realpath(sys.executable),
        )
        for name, code in PROBES.items()
    }
    found = {}
    for name, code in codes.items():
        result = await pool.execute(code)
        lines = result.stdout.splitlines() or result.stderr.splitlines()[-1:] or [result.verdict]
        found[name] = lines[0]
    return found


def check_contained(found: dict[str, str]) -> None:
    assert found["processes"].startswith("True "), found
    assert found["program_network"].startswith("False "), found
    assert "unreachable" in found["program_network"], found
    assert found["postgres"] == "refused", found
    assert found["environ"] == "False", found
    assert found["package"] == "refused", found
