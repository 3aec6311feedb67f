#!/usr/bin/env bash
# Did the test suite leave the host as it found it?
#
#   scripts/host-check.sh snapshot FILE   before the suite: what is there now
#   scripts/host-check.sh compare FILE    after it: exit 1, listing each
#                                         leftover, when anything is new
#
# Test daemons live in /tmp/spinup-test-* with cgroups under spinup-test/;
# what counts as left behind: a process in a test cgroup or naming a test
# data dir, a network namespace, link or nftables table that was not there
# before, a mount under a test data dir or a loop device on a file in one,
# a test cgroup, a test data dir.
# The daemon a user runs (/var/lib/spinup, cgroup spinup) is not looked at.
set -uo pipefail
mode=${1:?snapshot|compare}
file=${2:?state file}

state() {
    ip netns list 2>/dev/null | awk '{print "netns " $1}'
    ip -o link show 2>/dev/null | awk -F': ' '{split($2, n, "@"); print "link " n[1]}'
    nft list tables 2>/dev/null | awk '{print "nft " $2 " " $3}'
    # A cgroup a daemon made outside its --cgroup-parent (as the runtime
    # probe once did, under `spinup`).
    find /sys/fs/cgroup -mindepth 1 -maxdepth 2 -type d -name 'spinup*' 2>/dev/null | sed 's/^/cgroup /'
}

case "$mode" in
snapshot)
    state | sort -u >"$file"
    ;;
compare)
    left=()
    # The suite's own cgroup parents go first when nothing is left in them
    # (reported below otherwise).
    for cg in /sys/fs/cgroup/spinup-test /sys/fs/cgroup/*/spinup-test; do
        [ -d "$cg" ] && rmdir "$cg" 2>/dev/null
    done
    while read -r l; do
        [[ "$l" == "cgroup "*/spinup-test ]] || left+=("$l")
    done < <(comm -13 "$file" <(state | sort -u))
    # A process still on its way out when the suite ends (its memory is
    # gone, so its cmdline reads empty; it may be a zombie for a moment)
    # gets up to 15 s to finish; what remains is reported with its state,
    # parent and name.
    procs=()
    for _ in $(seq 30); do
        procs=()
        for p in /proc/[0-9]*; do
            pid=${p#/proc/}
            [ "$pid" = $$ ] && continue
            cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
            if [[ "$cmd" == */tmp/spinup-test-* ]] || grep -qs ':/spinup-test/' "$p/cgroup"; then
                # /proc/PID/stat: pid (comm) state ppid ...; comm may hold spaces.
                stat=$(cat "$p/stat" 2>/dev/null) || continue
                comm=${stat#*(}
                comm=${comm%)*}
                set -- ${stat##*) }
                procs+=("process $pid (${comm}, state ${1:-?}, parent ${2:-?}): ${cmd:-<no cmdline>}")
            fi
        done
        ((${#procs[@]})) || break
        sleep 0.5
    done
    left+=("${procs[@]}")
    while read -r mp; do left+=("mount $mp"); done < <(awk '$5 ~ "^/tmp/spinup-test-" {print $5}' /proc/self/mountinfo)
    # A sandbox disk's loop device outlives its (lazy) unmount only while a
    # process holds the filesystem; it has gone by now.
    while read -r l; do left+=("loop device $l"); done < <(losetup -a 2>/dev/null | grep '/tmp/spinup-test-')
    for cg in /sys/fs/cgroup/spinup-test /sys/fs/cgroup/*/spinup-test; do
        [ -d "$cg" ] && left+=("cgroup $cg: $(find "$cg" -mindepth 1 -type d | head -5 | tr '\n' ' ')")
    done
    for d in /tmp/spinup-test-*; do
        [ -e "$d" ] && left+=("data dir $d ($(du -sh "$d" 2>/dev/null | cut -f1))")
    done
    if ((${#left[@]})); then
        echo "host check: the test suite left ${#left[@]} thing(s) behind:"
        printf '  %s\n' "${left[@]}"
        exit 1
    fi
    echo "host check: the test suite left nothing behind"
    ;;
*)
    echo "usage: $0 snapshot|compare FILE" >&2
    exit 2
    ;;
esac
