"""schemathesis hooks for scripts/schemathesis.sh.

Each hook carries a rule the OpenAPI document cannot, and says which:

- JSON Schema counts 34.0 as an integer, so schemathesis sends integral
  floats where the document says "integer". Spinup's request types are
  Rust integers, and serde (like most typed servers) reads `34.0` as a
  float and refuses it with a clear 400. That is a choice, not a bug, so
  the generated bodies carry such numbers as integers.
- A CIDR in a network policy has zero host bits (`10.1.2.0/24`, not
  `10.1.2.3/24`, which is refused as the typo it almost always is, as
  Docker refuses it); no pattern says so, so such cases are not sent.
- A secret mount's `hosts` are only for a proxy-mode secret, and the mode
  is the stored secret's, not the request's: create bodies that give hosts
  are not sent (attach's answers allow the 400, see schemathesis.toml).
- Not a rule but a workaround: CPython 3.11 (Debian 12's Python) can
  raise "SystemError: AST constructor recursion depth mismatch" when
  ast.parse runs deep in a stack (a CPython bug fixed in later
  releases); hypothesis parses a module's source to describe a lambda
  filter, so the error would abort one operation's coverage phase. The
  parse is retried on a fresh thread, whose stack is shallow.
- Forks of at most 4 children: 64 are valid, but each generated fork
  would then make 32 sandboxes on average, and two minutes of fuzzing
  leave a thousand for the clean-up to remove. Counts the API refuses
  (0, 65, ...) are still sent.
- No microVM sandboxes: here a microVM boots under TCG emulation (tens of
  seconds each), so a generated `fork {count: 60, driver: microvm}` runs
  past any request timeout. The microVM driver has its own conformance
  tests.
"""

import ipaddress
import threading
from typing import Any

import schemathesis
from hypothesis.internal import lambda_sources

_describe = lambda_sources._lambda_description


def _describe_on_a_fresh_stack(f: Any) -> str:
    try:
        return _describe(f)
    except SystemError:
        out = ["lambda: <unknown>"]

        def run() -> None:
            try:
                out[0] = _describe(f)
            except Exception:  # noqa: BLE001 - a description is cosmetic
                pass

        t = threading.Thread(target=run)
        t.start()
        t.join()
        return out[0]


lambda_sources._lambda_description = _describe_on_a_fresh_stack


def _ints(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**63:
        return int(v)
    if isinstance(v, dict):
        return {k: _ints(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_ints(x) for x in v]
    return v


def _host_bits(policy: Any) -> bool:
    """Whether a network policy names a CIDR with host bits set."""
    if not isinstance(policy, dict) or not isinstance(policy.get("allow"), list):
        return False
    for e in policy["allow"]:
        if isinstance(e, str) and "/" in e:
            try:
                ipaddress.IPv4Network(e, strict=True)
            except ValueError as err:
                if "host bits" in str(err):
                    return True
    return False


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    return _ints(body)


@schemathesis.hook
def map_query(context: Any, query: Any) -> Any:
    return _ints(query)


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    body = case.body
    if not isinstance(body, dict):
        return True
    path, method = case.operation.path, case.method.upper()
    if method == "POST" and (path == "/v1/sandboxes" or path.endswith("/fork")):
        if body.get("driver") == "microvm":
            return False
    if method == "POST" and path.endswith("/fork"):
        count = body.get("count")
        if isinstance(count, int) and 4 < count <= 64:
            return False
    if method == "POST" and path == "/v1/sandboxes":
        secrets = body.get("secrets")
        if isinstance(secrets, list) and any(isinstance(m, dict) and m.get("hosts") for m in secrets):
            return False
        if _host_bits(body.get("network")):
            return False
    if method == "PUT" and path.endswith("/network") and _host_bits(body):
        return False
    return True
