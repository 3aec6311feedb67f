"""schemathesis hooks for scripts/schemathesis.sh.

JSON Schema counts 34.0 as an integer, so schemathesis sends integral
floats where the document says "integer". Spinup's request types are Rust
integers, and serde (like most typed servers) reads `34.0` as a float and
refuses it with a clear 400. That is a choice, not a bug, so the generated
bodies carry such numbers as integers; every other value is sent as
generated.
"""

from typing import Any

import schemathesis


def _ints(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**63:
        return int(v)
    if isinstance(v, dict):
        return {k: _ints(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_ints(x) for x in v]
    return v


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    return _ints(body)


@schemathesis.hook
def map_query(context: Any, query: Any) -> Any:
    return _ints(query)
