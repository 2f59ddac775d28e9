#!/usr/bin/env bash
# Make sure a Docker engine answers `docker info`; start dockerd in the background if not.
#
# Idempotent: does nothing when an engine is already reachable. Tries a default dockerd
# first, then progressively more conservative options for restricted environments
# (no iptables / no bridge, then the vfs storage driver). Logs to /tmp/dockerd.log.
# Exits non-zero with a one-line reason when no engine can be started.
set -u

LOG=/tmp/dockerd.log
WAIT_SECONDS=${DOCKER_ENGINE_WAIT:-60}

say() { echo "docker-engine: $*" >&2; }

if docker info >/dev/null 2>&1; then
    say "engine already running"
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        say "dockerd is not installed and we are not root; install docker.io first"
        exit 1
    fi
    say "installing docker.io with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2 || true
    if ! apt-get install -y -q docker.io >&2; then
        say "apt-get install docker.io failed"
        exit 1
    fi
fi

if [ "$(id -u)" != 0 ]; then
    say "no engine reachable and not root, so dockerd cannot be started here"
    exit 1
fi

# Wait up to $1 seconds for `docker info`; fail early if the dockerd pid $2 has exited.
wait_for_engine() {
    local limit=$1 pid=$2 i
    for ((i = 0; i < limit; i++)); do
        if docker info >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        sleep 1
    done
    return 1
}

stop_dockerd() {
    local pid=$1 i
    kill "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 20; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f /var/run/docker.pid
}

# A stale pid file from a dead dockerd stops a new one from starting.
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
fi

attempts=(
    ""
    "--iptables=false --ip6tables=false --bridge=none"
    "--iptables=false --ip6tables=false --bridge=none --storage-driver=vfs"
)
: >"$LOG"
for opts in "${attempts[@]}"; do
    say "starting dockerd ${opts:-(default options)}"
    echo "=== dockerd $opts ($(date -u +%FT%TZ))" >>"$LOG"
    # shellcheck disable=SC2086
    setsid nohup dockerd $opts >>"$LOG" 2>&1 </dev/null &
    pid=$!
    if wait_for_engine "$WAIT_SECONDS" "$pid"; then
        echo "$opts" >/tmp/dockerd.options
        say "engine is up (pid $pid${opts:+, options: $opts}); log in $LOG"
        exit 0
    fi
    say "dockerd ${opts:-(default options)} did not come up; last log lines:"
    tail -n 5 "$LOG" | sed 's/^/    /' >&2
    stop_dockerd "$pid"
done

say "could not start a Docker engine with any option set; see $LOG"
exit 1
