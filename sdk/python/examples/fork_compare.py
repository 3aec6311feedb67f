"""Fork a prepared sandbox and try two approaches side by side, then keep
the one that worked: each child starts from the parent's exact state."""

import os

from spinup import Spinup

ENV = os.environ.get("SPINUP_TEST_ENV", "busybox")

with Spinup() as client, client.sandboxes.create(env=ENV, labels={"example": "fork"}) as parent:
    # Expensive setup, done once.
    parent.exec("mkdir -p /app && seq 1 1000 > /app/numbers", check=True)

    fork = parent.fork(count=2)
    a, b = fork.children
    try:
        approaches = {
            a: "awk '{s += $1} END {print s}' /app/numbers",
            b: "n=0; while read x; do n=$((n + x)); done < /app/numbers; echo $n",
        }
        results = {}
        for child, cmd in approaches.items():
            r = child.exec(cmd, check=True)
            child.files.write("/app/answer", r.stdout)
            results[child.id] = r.stdout.strip()
            # What did this approach change, compared with the fork point?
            print(child.id, results[child.id], child.diff().paths())
        assert set(results.values()) == {"500500"}, results
        print("both approaches agree:", results)
    finally:
        for child in fork.children:
            child.kill()
