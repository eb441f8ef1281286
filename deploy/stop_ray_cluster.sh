#!/usr/bin/env bash
# Stops exactly one Ray cluster's processes on this machine: those of the nodes started with
# `ray start ... --temp-dir TEMP_DIR` (GCS, raylets, monitors, the dashboard), the head's client
# server (it names the head's port), and their children (agents, workers). `ray stop` would stop
# every Ray process of the machine, other clusters' and other users' studies' included.
#
#   deploy/stop_ray_cluster.sh TEMP_DIR HEAD_PORT [GRACE_S]
#
# SIGTERM first; whatever is left after GRACE_S seconds (default 15) gets SIGKILL. Returns once none
# of them runs any more (a zombie left for its parent to reap runs nothing).
set -u
if [ $# -lt 2 ]; then
    echo "usage: $0 TEMP_DIR HEAD_PORT [GRACE_S]" >&2
    exit 2
fi
temp_dir=${1%/}
port=$2
grace=${3:-15}
roots=$( { pgrep -f -- "$temp_dir/"; pgrep -f -- "--address=[^ ]*:$port( |\$)"; } | sort -u )
if [ -z "$roots" ]; then
    echo "no Ray process of $temp_dir (port $port) runs here"
    exit 0
fi
running() {  # PID exists and is not a zombie
    local state
    if [ ! -d /proc/self ]; then  # no procfs (macOS): a zombie counts as running
        kill -0 "$1" 2>/dev/null
        return
    fi
    state=$(sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}
still_running() {
    local pid out=""
    for pid in $pids; do
        running "$pid" && out="$out $pid"
    done
    echo "$out"
}
pids=$roots
for pid in $roots; do
    pids="$pids $(pgrep -P "$pid")"
done
kill -TERM $pids 2>/dev/null
for _ in $(seq "$grace"); do
    [ -z "$(still_running)" ] && break
    sleep 1
done
alive=$(still_running)
if [ -n "$alive" ]; then
    kill -KILL $alive 2>/dev/null
    for _ in $(seq 50); do  # SIGKILL is not instant: the kernel still tears each process down
        [ -z "$(still_running)" ] && break
        sleep 0.1
    done
fi
echo "stopped the Ray cluster of $temp_dir (port $port): $(echo $pids | wc -w) processes"
