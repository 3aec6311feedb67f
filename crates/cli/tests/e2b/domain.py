"""E2B_DOMAIN mode over TLS (run by crates/cli/tests/e2b.rs inside a
private mount namespace whose /etc/hosts is the file argv[2]): the SDK
reaches https://api.DOMAIN and https://49983-ID.DOMAIN, trusting the
test's CA through SSL_CERT_FILE."""

import sys

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
assert sbx.get_host(8080).startswith(f"8080-{sbx.sandbox_id}.spinup.test")
assert sbx.kill() is True
print("DOMAIN PASSED", flush=True)
