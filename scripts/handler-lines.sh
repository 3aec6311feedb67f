#!/usr/bin/env bash
# Lines per HTTP handler: every top-level `async fn` (pub or not) in the
# given files, from its signature to its closing brace. Prints the count,
# the mean, the median and the largest.
#   scripts/handler-lines.sh crates/frontends/http/src/{handlers,exec}.rs
#   git show REV:crates/daemon/src/api.rs | scripts/handler-lines.sh -
set -euo pipefail
cat "$@" | awk '
    /^(pub(\([a-z]+\))? )?async fn / { name = $0; sub(/\(.*/, "", name); sub(/.*fn /, "", name); n = 0; inside = 1 }
    inside { n++ }
    inside && /^}/ { print n, name; inside = 0 }
' | sort -n | awk '
    { v[NR] = $1; sum += $1; line[NR] = $0 }
    END {
        if (NR == 0) { print "no handlers"; exit 1 }
        med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "handlers %d, lines mean %.1f, median %s, max %s (%s)\n", NR, sum / NR, med, v[NR], line[NR]
    }'
