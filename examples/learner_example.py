"""A stand-in learner for ``trainer.learner_command``: reads the batch, writes the next weights version.

orch runs it once per step with ``ORCH_BATCH`` (the batch JSONL: prompt, response, reward, advantage,
tokens), ``ORCH_WEIGHTS_IN`` (the weights the engines serve now; may be empty) and ``ORCH_WEIGHTS_OUT``
(the directory to write). A real learner (verl, OpenRLHF, TRL...) takes a gradient step here; this one
only checks the batch and writes ``version`` = the previous version + 1, the file the fake engine reads.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> int:
    batch = Path(os.environ["ORCH_BATCH"])
    rows = [json.loads(line) for line in batch.read_text().splitlines() if line.strip()]
    for row in rows:
        missing = {"prompt", "response", "reward", "advantage", "tokens"} - row.keys()
        if missing:
            print(f"{batch}: a row without {sorted(missing)}", file=sys.stderr)
            return 1
    weights_in = os.environ.get("ORCH_WEIGHTS_IN", "")
    version_file = Path(weights_in) / "version" if weights_in else None
    previous = int(version_file.read_text()) if version_file and version_file.exists() else 0
    out = Path(os.environ["ORCH_WEIGHTS_OUT"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "version").write_text(f"{previous + 1}\n")
    mean = sum(row["advantage"] for row in rows) / len(rows) if rows else 0.0
    print(f"learner: {len(rows)} rows, mean advantage {mean:+.3f}, weights v{previous} -> v{previous + 1}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
