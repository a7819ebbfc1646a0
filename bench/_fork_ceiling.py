"""One worker of bench/tool_burst.py's ceiling: a warm interpreter that forks a child per call, and the child
runs the snippet with no isolation at all and exits: the cheapest thing that still gives every call a fresh
process. Nothing per call but the fork, the snippet, the exit and reading its output back.

    python -I -S -B _fork_ceiling.py CODES_JSON INDEX_FD SLOT CPU_SECONDS PRELOAD

CODES_JSON: a file holding the list of snippets. INDEX_FD: the read end of a pipe that all workers share
and that holds 4-byte big-endian snippet indices (written in whole pages, so every read of 4 bytes gets
one whole index): a worker takes the next index whenever its last call ended, so the load spreads as in a
pool. SLOT: which of the allowed CPUs to stay on (as orch's zygotes do). CPU_SECONDS: RLIMIT_CPU of each
child (a snippet that loops forever must end somewhere). PRELOAD: comma-separated modules imported once,
as orch's zygote does, so a snippet's imports cost the same on both sides. The worker writes "ready\\n"
once set up and, at end of the index pipe, a JSON object of answers by verdict, then exits. Standard
library only: snippets see no orch code here either.
"""

from __future__ import annotations

import builtins
import gc
import json
import os
import resource
import signal
import sys
import traceback

SNIPPET = "<snippet>"


def run(code: str) -> int:
    """In the child: run ``code`` as a fresh ``__main__``; its exit status."""
    try:
        exec(compile(code, SNIPPET, "exec"), {"__name__": "__main__", "__builtins__": builtins})
        status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return status


def verdict(status: int) -> str:
    if os.WIFSIGNALED(status):
        return "timeout" if os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL) else "killed"
    return "ok" if os.WEXITSTATUS(status) == 0 else "error"


def main(argv: list[str]) -> None:
    with open(argv[1], encoding="utf-8") as file:
        codes: list[str] = json.load(file)
    index_fd, slot, cpu = int(argv[2]), int(argv[3]), int(argv[4])
    for name in filter(None, argv[5].split(",")):
        __import__(name)
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[slot % len(cpus)]})
    output = os.memfd_create("output")  # the child's stdout and stderr; it shares our file offset
    compile("print(sum(i * i for i in range(3)))", SNIPPET, "exec")  # a process's first compile costs ~1.6 ms
    answers: dict[str, int] = {}
    gc.collect()
    gc.freeze()
    os.write(1, b"ready\n")
    while len(head := os.read(index_fd, 4)) == 4:
        pid = os.fork()
        if pid == 0:
            os.dup2(output, 1)
            os.dup2(output, 2)
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            os._exit(run(codes[int.from_bytes(head, "big")]))
        _, status = os.waitpid(pid, 0)
        os.pread(output, os.lseek(output, 0, os.SEEK_CUR), 0)  # the answer's text, as a service reads it
        os.ftruncate(output, 0)
        os.lseek(output, 0, os.SEEK_SET)
        key = verdict(status)
        answers[key] = answers.get(key, 0) + 1
    os.write(1, json.dumps(answers).encode())


if __name__ == "__main__":
    main(sys.argv)
