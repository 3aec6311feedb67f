# Timed by `spinup bench --e2b`: the official E2B Python SDK against
# Spinup's E2B listener. argv: TEMPLATE CREATES EXECS. Prints one JSON line
# of durations in ms. Imports and the first connection are warmed first.
import json
import sys
import time

from e2b import Sandbox

template, creates, execs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
warm = Sandbox.create(template)
warm.commands.run("true")
create_run = []
for _ in range(creates):
    t = time.perf_counter()
    s = Sandbox.create(template)
    s.commands.run("true")
    create_run.append((time.perf_counter() - t) * 1000)
    s.kill()
run = []
for i in range(execs + 5):
    t = time.perf_counter()
    warm.commands.run("true")
    if i >= 5:
        run.append((time.perf_counter() - t) * 1000)
warm.kill()
print(json.dumps({"create_run_ms": create_run, "run_ms": run}))
