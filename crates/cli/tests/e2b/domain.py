"""E2B_DOMAIN mode over TLS (run by crates/cli/tests/e2b.rs inside a
private mount namespace whose /etc/hosts is the file argv[2]): the SDK
reaches https://api.DOMAIN and https://49983-ID.DOMAIN, trusting the
test's CA through SSL_CERT_FILE."""

import os
import ssl
import sys
import urllib.error
import urllib.request

from e2b import Sandbox

template, hosts = sys.argv[1], sys.argv[2]
sbx = Sandbox.create(template)
with open(hosts, "a") as f:
    # What wildcard DNS would answer.
    f.write(f"127.0.0.1 49983-{sbx.sandbox_id}.spinup.test\n")
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
assert sbx.get_host(8080).startswith(f"8080-{sbx.sandbox_id}.spinup.test")
assert sbx.kill() is True
print("DOMAIN PASSED", flush=True)
