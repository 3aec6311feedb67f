"""E2B's code interpreter through the official `e2b-code-interpreter`
package, unmodified. Run by crates/cli/tests/e2b.rs against a real daemon:

    code_interpreter.py TEMPLATE

E2B_API_KEY, E2B_API_URL and E2B_SANDBOX_URL point the SDK at the daemon.
Each step prints "ok <step>"; the first failure raises (exit code 1).
"""

import sys

from e2b import NotFoundException, TimeoutException
from e2b_code_interpreter import Sandbox

TEMPLATE = sys.argv[1]


def ok(step):
    print(f"ok {step}", flush=True)


with Sandbox.create(TEMPLATE, timeout=900) as sbx:
    ok(f"create {TEMPLATE}: {sbx.sandbox_id}")
    seen = []
    ex = sbx.run_code("x = 40\nprint('side')\nx + 2", on_stdout=lambda m: seen.append(m.line))
    assert ex.text == "42", ex
    assert ex.logs.stdout == ["side\n"] and seen == ["side\n"], (ex.logs, seen)
    assert ex.error is None and ex.execution_count == 1, ex
    ok("run_code: result, stdout, execution_count")
    assert sbx.run_code("x").text == "40"
    ok("run_code keeps state")
    ex = sbx.run_code("import sys\nprint('oops', file=sys.stderr)\n1/0")
    assert ex.logs.stderr == ["oops\n"], ex.logs
    assert ex.error is not None and ex.error.name == "ZeroDivisionError", ex.error
    assert ex.error.value == "division by zero" and "ZeroDivisionError" in ex.error.traceback, ex.error
    ok("run_code: stderr and error")
    ex = sbx.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
    pngs = [r.png for r in ex.results if r.png]
    assert pngs and pngs[0].startswith("iVBORw0KGgo"), ex.results
    ok("run_code: a matplotlib chart is a png")
    ex = sbx.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2]})")
    assert ex.results and "<table" in (ex.results[0].html or ""), ex.results
    ok("run_code: a DataFrame is html")
    ex = sbx.run_code("import os\nos.environ['ONLY']", envs={"ONLY": "here"})
    assert ex.text == "'here'", ex
    ok("run_code with envs")
    ex = sbx.run_code("const a = 20; a * 2", language="js")
    assert ex.text == "40", ex
    ok("run_code javascript")
    ex = sbx.run_code("echo $((6 * 7))", language="bash")
    assert ex.logs.stdout == ["42\n"], ex.logs
    ok("run_code bash")
    ctx = sbx.create_code_context(cwd="/tmp")
    assert ctx.cwd == "/tmp" and ctx.language == "python", vars(ctx)
    assert sbx.run_code("import os\nos.getcwd()", context=ctx).text == "'/tmp'"
    assert ctx.id in [c.id for c in sbx.list_code_contexts()]
    sbx.restart_code_context(ctx)
    assert sbx.run_code("os", context=ctx).error.name == "NameError"
    sbx.remove_code_context(ctx)
    try:
        sbx.run_code("1", context=ctx)
        raise AssertionError("a removed context should be gone")
    except NotFoundException:
        pass
    ok("contexts: create, list, restart, remove")
    try:
        sbx.run_code("while True: pass", timeout=3)
        raise AssertionError("run_code should time out")
    except TimeoutException:
        pass
    assert sbx.run_code("x").text == "40"
    ok("a client's timeout interrupts the kernel, and the context keeps its state")
print("SCENARIO PASSED", flush=True)
