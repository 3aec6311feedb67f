"""A connected client across a daemon kill -9 and restart (run by
crates/cli/tests/e2b.rs): prints READY, waits for a line on stdin (the
test restarts the daemon meanwhile), then goes on with the same objects."""

import sys

from e2b import Sandbox

sbx = Sandbox.create(sys.argv[1], timeout=300)
sbx.files.write("kept.txt", "kept")
bg = sbx.commands.run("sleep 300", background=True, timeout=0)
print("READY", sbx.sandbox_id, flush=True)
sys.stdin.readline()

assert sbx.commands.run("echo after").stdout == "after\n"
assert sbx.files.read("kept.txt") == "kept"
assert bg.pid in [p.pid for p in sbx.commands.list()], "the background command survived"
assert sbx.get_info().state.value == "running"
assert sbx.sandbox_id in [s.sandbox_id for s in Sandbox.list().next_items()]
assert sbx.commands.kill(bg.pid) is True
assert sbx.kill() is True
print("RESTART PASSED", flush=True)
