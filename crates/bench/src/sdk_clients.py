# Timed by `spinup bench --clients`: the Python SDK's create -> first exec.
# argv: ENV. One line on stdin per round; answers the round's ms on a line.
# The first create (imports, the client's connection) happens before.
import sys
import time

import spinup

env = sys.argv[1]
client = spinup.Spinup()
client.sandboxes.create(env=env).kill()
for _ in sys.stdin:
    t = time.perf_counter()
    s = client.sandboxes.create(env=env)
    s.exec(["/bin/true"])
    ms = (time.perf_counter() - t) * 1000
    s.kill()
    print(f"{ms:.3f}", flush=True)
