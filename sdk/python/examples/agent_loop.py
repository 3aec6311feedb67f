"""An agent loop without a model: a list of commands stands in for the
model's choices; each command's output is fed back into the transcript
that would be the model's next prompt."""

import os

from spinup import Spinup

ENV = os.environ.get("SPINUP_TEST_ENV", "busybox")

plan = [
    "mkdir -p /work && cd /work && echo 'print(1 + 1)' > main.txt",
    "ls -l /work",
    "wc -c /work/main.txt",
    "cat /work/missing.txt",  # fails: the agent sees the error and moves on
    "echo done",
]

with Spinup() as client, client.sandboxes.create(env=ENV, timeout_s=600, labels={"example": "agent-loop"}) as sbx:
    transcript = []
    for step, cmd in enumerate(plan, 1):
        # A real agent would ask its model for `cmd`, given `transcript`.
        r = sbx.exec(cmd, timeout_ms=30_000, on_stdout=lambda s: print(s, end=""))
        transcript.append({"cmd": cmd, "exit_code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr})
        if not r.ok:
            print(f"[step {step} failed with {r.exit_code}: {r.stderr.strip()}]")
    failed = [t["cmd"] for t in transcript if t["exit_code"] != 0]
    print(f"{len(transcript)} steps, failed: {failed}")
    assert failed == ["cat /work/missing.txt"]
