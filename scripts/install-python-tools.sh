#!/usr/bin/env bash
# Installs the Python tools the test suite uses, outside the repository, in
# a venv at ${SPINUP_PY_VENV:-/var/tmp/spinup-py/venv}:
#   - the Spinup Python SDK's own dependencies (httpx, websockets) and the
#     build backend it is installed with (setuptools, wheel): the SDK
#     itself is installed from the repo at test time, with
#     `pip install --no-deps --no-build-isolation --force-reinstall ./sdk/python`,
#     so the tests run the tree under test through its real packaging;
#   - pytest and pytest-asyncio (the SDK's tests);
#   - mcp (the official MCP Python SDK: the MCP front end's tests);
#   - schemathesis (property tests of the OpenAPI document).
# Idempotent: what is installed is left alone unless --upgrade is given or
# its last check is more than a day old (a stamp file in the venv). A
# failed daily re-check keeps what is installed (with a warning); a failed
# first install fails the script. Prints the versions at the end.
# `python3-venv` is installed with apt only when missing.
set -euo pipefail

venv=${SPINUP_PY_VENV:-/var/tmp/spinup-py/venv}
max_age_min=$((24 * 60))
pkgs=(httpx websockets setuptools wheel pytest pytest-asyncio mcp schemathesis)
upgrade=
for a in "$@"; do
    case "$a" in
    --upgrade) upgrade=1 ;;
    -h | --help)
        sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
        echo "usage: $0 [--upgrade]"
        exit 0
        ;;
    *)
        echo "unknown argument: $a (usage: $0 [--upgrade])" >&2
        exit 2
        ;;
    esac
done

say() { echo "python-tools: $*"; }

apt_install() {
    say "installing from apt: $*"
    if [ "$(id -u)" != 0 ]; then
        echo "python-tools: need root to apt-get install $* (or install them yourself)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

stamp=$venv/.spinup-py-checked
due() {
    [ -n "$upgrade" ] && return 0
    [ -f "$stamp" ] || return 0
    [ -n "$(find "$stamp" -mmin +"$max_age_min" 2>/dev/null)" ]
}

command -v python3 >/dev/null || apt_install python3 python3-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
    say "creating the Python venv $venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
fi

# Whether every package is installed.
installed() {
    "$venv/bin/python" - "${pkgs[@]}" <<'EOF' 2>/dev/null
import importlib.metadata as m, sys
for p in sys.argv[1:]:
    m.version(p)
EOF
}
pip_install() { "$venv/bin/python" -m pip install --disable-pip-version-check -q --upgrade "${pkgs[@]}"; }

if ! installed; then
    say "installing: pip install --upgrade ${pkgs[*]} (in $venv)"
    pip_install
    touch "$stamp"
elif due; then
    say "checking for newer releases: pip install --upgrade ${pkgs[*]} (in $venv)"
    if pip_install; then
        touch "$stamp"
    else
        say "warning: the upgrade check failed; keeping what is installed" >&2
    fi
else
    say "tools present in $venv (checked within a day; --upgrade to force)"
fi

"$venv/bin/python" - "${pkgs[@]}" <<'EOF'
import importlib.metadata as m, sys
print("python-tools: " + ", ".join(f"{p} {m.version(p)}" for p in sys.argv[1:]))
EOF
