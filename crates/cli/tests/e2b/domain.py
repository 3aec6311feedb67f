"""E2B_DOMAIN mode over TLS (run by crates/cli/tests/e2b.rs inside a
private mount namespace whose /etc/hosts the test controls): the SDK
reaches https://api.DOMAIN and https://49983-ID.DOMAIN, trusting the
test's CA through SSL_CERT_FILE.

    domain.py create TEMPLATE   prints "ID <sandbox id>"
    domain.py use ID            (once the test has added 49983-ID to hosts)

Two processes, because the SDK's resolver reads the hosts file once, when
it starts: the second one finds the sandbox's name, as wildcard DNS would.
"""

import os
import ssl
import sys
import urllib.error
import urllib.request

from e2b import Sandbox

if sys.argv[1] == "create":
    sbx = Sandbox.create(sys.argv[2])
    print("ID", sbx.sandbox_id, flush=True)
    sys.exit(0)

sbx = Sandbox.connect(sys.argv[2])
r = sbx.commands.run("echo over-tls; whoami")
assert r.stdout == "over-tls\nuser\n", r
sbx.files.write("t.txt", "tls")
assert sbx.files.read("t.txt") == "tls"
# A signed download URL works without any header (as a browser would
# fetch it), and only for the path it was signed for.
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
url = sbx.download_url("t.txt", use_signature_expiration=60)
assert urllib.request.urlopen(url, context=ctx, timeout=10).read() == b"tls"
try:
    urllib.request.urlopen(url.replace("t.txt", "other.txt"), context=ctx, timeout=10)
    raise AssertionError("a URL signed for one path opened another")
except urllib.error.HTTPError as e:
    assert e.code == 401, e
host = sbx.get_host(8080)
assert host.startswith(f"8080-{sbx.sandbox_id}.spinup.test"), host
assert sbx.kill() is True
print("DOMAIN PASSED", flush=True)
