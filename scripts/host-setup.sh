#!/usr/bin/env bash
# Prepare a Debian 12 host (CI machine or dev VM) for nslib's test suite. Run as root.
# Idempotent: installs only what is missing, starts the system dockerd only if it does
# not answer, builds the test image only if it is missing or outdated.
#
#   sudo scripts/host-setup.sh
#
# The tests themselves run their own private dockerd (tests/dockerd.py); the system
# daemon and its copy of the test image are for manual experiments and for tests that
# use the host daemon.
set -euo pipefail

log() { printf 'host-setup: %s\n' "$*"; }
die() { printf 'host-setup: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
apt_updated=
apt_install() {
    log "installing $*"
    if [[ -z $apt_updated ]]; then apt-get update -qq; apt_updated=1; fi
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------- apt packages
missing=()
# docker-ce hosts already have the binaries (and docker.io would conflict with them).
if ! { command -v dockerd && command -v containerd && command -v docker; } >/dev/null; then
    # apparmor: docker.io only recommends it, but on an AppArmor kernel (Debian's
    # default) containers cannot start without apparmor_parser.
    missing+=(docker.io apparmor)
fi
installed busybox-static || missing+=(busybox-static)
# CNI reference plugins (/usr/lib/cni), podman and util-linux's nsenter/lsns: the
# CNI, podman/containerd and namespace-kind tests drive them for real.
installed containernetworking-plugins || missing+=(containernetworking-plugins)
command -v podman >/dev/null || missing+=(podman)
{ command -v nsenter && command -v lsns; } >/dev/null || missing+=(util-linux)
command -v ip >/dev/null || missing+=(iproute2)
command -v gcc >/dev/null || missing+=(gcc)
py_include() { "$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])'; }
if command -v "$python" >/dev/null; then
    [[ -f $(py_include)/Python.h ]] || missing+=(python3-dev)
else
    missing+=(python3 python3-dev)  # bare minimal install
fi

if ((${#missing[@]})); then
    apt_install "${missing[@]}"
    [[ -f $(py_include)/Python.h ]] || log "warning: $(py_include)/Python.h still" \
        "missing (python3-dev only serves Debian's python3)"
else
    log "apt packages present"
fi

# ---------------------------------------------------------------- python SDK
# Only needed here to build the test image; the test environment itself installs
# the project's dependencies (docker>=7.0) with pip.
if ! "$python" -c 'import docker' 2>/dev/null; then
    if "$python" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'
    then  # Debian's own python3 refuses pip installs (PEP 668)
        apt_install python3-docker
    else
        log "installing the docker python SDK with pip"
        "$python" -m pip install -q 'docker>=7.0'
    fi
fi

# ---------------------------------------------------------------- system dockerd
if docker info >/dev/null 2>&1; then
    log "system dockerd answers"
else
    if [[ -d /run/systemd/system ]] && systemctl start docker 2>/dev/null; then
        log "started docker.service"
    else
        # No systemd (containers, firecracker VMs): run it by hand, detached.
        log "starting dockerd (log: /var/log/nslib-dockerd.log)"
        setsid dockerd >>/var/log/nslib-dockerd.log 2>&1 </dev/null &
        disown
    fi
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 \
        || die "dockerd did not answer within 30 s; see /var/log/nslib-dockerd.log"
    log "system dockerd answers"
fi

# ---------------------------------------------------------------- test image
"$python" "$repo/tests/dockerd.py" build-image
log "done"
