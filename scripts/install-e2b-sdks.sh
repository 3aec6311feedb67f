#!/usr/bin/env bash
# Installs the official E2B SDKs that the test suite drives Spinup with,
# outside the repository:
#   Python: a venv at ${SPINUP_E2B_VENV:-/var/tmp/spinup-e2b/venv} with the
#           latest `e2b` and `e2b-code-interpreter` packages (pip install
#           --upgrade e2b e2b-code-interpreter);
#   JS/TS:  an npm project at ${SPINUP_E2B_NODE:-/var/tmp/spinup-e2b/node}
#           with the latest `e2b` package (npm install e2b@latest).
# Idempotent: an SDK already installed is left alone unless --upgrade is
# given or its last check is more than a day old (a stamp file in its
# dir), so CI picks up new releases daily without reinstalling every run.
# A failed daily re-check keeps the installed SDK (with a warning); a
# failed first install fails the script. Prints the versions at the end.
# Node.js and npm come from the host; Debian's `nodejs npm` (and
# `python3-venv`) are installed with apt only when missing.
set -euo pipefail

venv=${SPINUP_E2B_VENV:-/var/tmp/spinup-e2b/venv}
node_dir=${SPINUP_E2B_NODE:-/var/tmp/spinup-e2b/node}
max_age_min=$((24 * 60))
upgrade=
for a in "$@"; do
    case "$a" in
    --upgrade) upgrade=1 ;;
    -h | --help)
        sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
        echo "usage: $0 [--upgrade]"
        exit 0
        ;;
    *)
        echo "unknown argument: $a (usage: $0 [--upgrade])" >&2
        exit 2
        ;;
    esac
done

say() { echo "e2b-sdks: $*"; }

apt_install() {
    say "installing from apt: $*"
    if [ "$(id -u)" != 0 ]; then
        echo "e2b-sdks: need root to apt-get install $* (or install them yourself)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Whether the SDK in $1 (its stamp file) is due for a (re)install.
due() {
    local stamp=$1/.spinup-e2b-checked
    [ -n "$upgrade" ] && return 0
    [ -f "$stamp" ] || return 0
    [ -n "$(find "$stamp" -mmin +"$max_age_min" 2>/dev/null)" ]
}

stamp() { touch "$1/.spinup-e2b-checked"; }

# --- Python
command -v python3 >/dev/null || apt_install python3 python3-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
    say "creating the Python venv $venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
fi
py_installed() { "$venv/bin/python" -c 'import importlib.metadata as m; m.version("e2b"); m.version("e2b-code-interpreter")' 2>/dev/null; }
if ! py_installed; then
    say "installing the Python SDK: pip install --upgrade e2b e2b-code-interpreter (in $venv)"
    "$venv/bin/python" -m pip install --disable-pip-version-check -q --upgrade e2b e2b-code-interpreter
    stamp "$venv"
elif due "$venv"; then
    say "checking for a newer Python SDK: pip install --upgrade e2b e2b-code-interpreter (in $venv)"
    if "$venv/bin/python" -m pip install --disable-pip-version-check -q --upgrade e2b e2b-code-interpreter; then
        stamp "$venv"
    else
        say "warning: the upgrade check failed; keeping the installed Python SDK" >&2
    fi
else
    say "Python SDK present in $venv (checked within a day; --upgrade to force)"
fi

# --- JavaScript / TypeScript
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm
fi
say "using node $(node --version), npm $(npm --version)"
mkdir -p "$node_dir"
if [ ! -f "$node_dir/package.json" ]; then
    say "creating the npm project $node_dir"
    printf '{\n  "name": "spinup-e2b-sdks",\n  "private": true\n}\n' >"$node_dir/package.json"
fi
js_version() {
    (cd "$node_dir" && node -e 'console.log(JSON.parse(require("fs").readFileSync("node_modules/e2b/package.json")).version)') 2>/dev/null
}
npm_install() { (cd "$node_dir" && npm install --no-audit --no-fund --loglevel=error e2b@latest); }
if ! js_version >/dev/null; then
    say "installing the JS SDK: npm install e2b@latest (in $node_dir)"
    npm_install
    stamp "$node_dir"
elif due "$node_dir"; then
    say "checking for a newer JS SDK: npm install e2b@latest (in $node_dir)"
    if npm_install; then
        stamp "$node_dir"
    else
        say "warning: the upgrade check failed; keeping the installed JS SDK" >&2
    fi
else
    say "JS SDK present in $node_dir (checked within a day; --upgrade to force)"
fi

say "python e2b $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("e2b"), "e2b-code-interpreter", m.version("e2b-code-interpreter"))') ($venv)"
say "js e2b $(js_version) ($node_dir)"
