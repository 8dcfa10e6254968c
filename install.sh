#!/usr/bin/env bash
# Install kvfs and everything it needs on a Debian machine, then either mount a demo volume
# or run the whole test suite.  Run as root from a clone of the repository.
#
#   ./install.sh mount   install, format an embedded volume, mount it, print where
#   ./install.sh test    install, then run every test (unit, contract, model-based,
#                        filesystem API, real mounts, posix-tests/)
#   ./install.sh deps    install only
set -euo pipefail
cd "$(dirname "$0")"
mode=${1:-mount}

log() { printf '==> %s\n' "$*" >&2; }

install_system() {
	if [ "$(id -u)" != 0 ]; then
		echo "install.sh: run as root (it installs packages and mounts FUSE)" >&2
		exit 1
	fi
	log "installing system packages"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends \
		fuse3 libfuse3-dev pkg-config gcc python3-venv attr procps psmisc \
		etcd-server etcd-client iproute2 fio >/dev/null
	# nginx is for the shared-/etc test, which runs its own nginx processes with their own
	# configs, and prometheus for its promtool (the metrics test checks a mount's metrics
	# with it): a fresh install must not start (or enable) the system's nginx on port 80
	# nor a Prometheus server.
	local pkg
	for pkg in nginx prometheus; do
		dpkg -s "$pkg" >/dev/null 2>&1 && continue
		local deny=""
		if [ ! -e /usr/sbin/policy-rc.d ]; then
			deny=/usr/sbin/policy-rc.d
			printf '#!/bin/sh\nexit 101\n' >"$deny" && chmod 755 "$deny"
		fi
		apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null || { rm -f $deny; exit 1; }
		[ -z "$deny" ] || rm -f "$deny"
		if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
			systemctl disable -q "$pkg" || true
		fi
	done
}

install_python() {
	log "installing kvfs into .venv"
	[ -x .venv/bin/python ] || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -e '.[test]'
	ln -sf "$PWD/.venv/bin/kvfs" /usr/local/bin/kvfs
	# mount(8) runs /sbin/mount.fuse.kvfs for fstab lines of type fuse.kvfs (and
	# /sbin/mount.kvfs for -t kvfs) with no PATH: link the venv's helper there by its
	# absolute path.
	ln -sf "$PWD/.venv/bin/mount.kvfs" /sbin/mount.fuse.kvfs
	ln -sf "$PWD/.venv/bin/mount.kvfs" /sbin/mount.kvfs
}

demo_mount() {
	local store=/var/lib/kvfs/demo mnt=/mnt/kvfs
	mkdir -p "$store" "$mnt"
	if ! kvfs status "$store" >/dev/null 2>&1; then
		kvfs format "$store" demo
	fi
	if mountpoint -q "$mnt"; then
		log "$mnt is already mounted"
	else
		kvfs mount -d --log /var/log/kvfs.log "$store" "$mnt"
	fi
	log "kvfs volume 'demo' (embedded store in $store) is mounted at:"
	echo "$mnt"
}

run_tests() {
	log "checking the code with ruff and mypy"
	.venv/bin/ruff check kvfs tests posix-tests
	.venv/bin/mypy kvfs tests
	log "running the test suite"
	.venv/bin/pytest -q -p no:cacheprovider tests
	log "running posix-tests/ on a real mount"
	.venv/bin/python posix-tests/run.py --keep-going
	log "running posix-tests/ on a real mount of an etcd volume"
	.venv/bin/python posix-tests/run.py --keep-going --engine etcd
	log "running posix-tests/ on a real mount of a three-member Raft store volume"
	.venv/bin/python posix-tests/run.py --keep-going --engine raft
}

case "$mode" in
	deps) install_system; install_python ;;
	mount) install_system; install_python; demo_mount ;;
	test) install_system; install_python; run_tests ;;
	*) echo "usage: $0 mount|test|deps" >&2; exit 2 ;;
esac
