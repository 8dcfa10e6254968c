#!/usr/bin/env bash
# One nginx configuration shared by many hosts through kvfs: every host mounts the same
# volume, `kvfs watch` on every host runs `nginx -t` and, only if it passes, reloads nginx
# whenever the tree changes on any host, and `kvfs deploy` replaces the whole tree in one
# rename, so no host ever sees half a deploy.  docs/shared-etc.md is the operator's guide.
#
#   shared-etc-nginx.sh demo [N]           one machine, N emulated hosts (default 3): the
#                                          whole scenario, then everything is cleaned up
#   shared-etc-nginx.sh host NAME META_URL on each real host: mount, start nginx, watch
#                                          (stays in the foreground; Ctrl-C stops it all)
#   shared-etc-nginx.sh deploy GEN [broken]   on any real host: deploy a sample config
#   (then `kvfs log $MNT/nginx/nginx.conf`, `kvfs restore $MNT/nginx --at REV|TIME`)
#
# Run as root with `kvfs` on PATH (./install.sh deps), nginx installed (apt-get install
# nginx) and, for the demo, iproute2 and curl.  Nothing here touches the system's nginx:
# each host's nginx runs from the shared tree with its pid file, logs and temporary files
# under a state directory of its own ($STATE), and serves on port $PORT.
#
# Real hosts.  First run an engine with one member per host -- a 3-member etcd cluster, or
# kvfs's Raft store (`kvfs raft serve` under examples/kvfs-raft@.service, see
# docs/raft.md) -- then, once, from any host:
#
#   kvfs format raft://10.0.0.1:7379,10.0.0.2:7379,10.0.0.3:7379/shared-etc shared-etc
#
# On every host (its own member first in the URL, so it keeps working while another
# host's member is down):
#
#   shared-etc-nginx.sh host web-1 raft://10.0.0.1:7379,10.0.0.2:7379,10.0.0.3:7379/shared-etc
#
# and from any host, `shared-etc-nginx.sh deploy 2`, then `kvfs status $MNT` for what every
# host applied.  In production the mount is an fstab line or examples/kvfs-mount@.service,
# the watcher a service of its own, and nginx the system's (`nginx -t`, `systemctl reload
# nginx`): docs/shared-etc.md shows those.
set -euo pipefail

MNT=${MNT:-/srv/shared-etc}                    # where a host mounts the volume
STATE=${STATE:-/var/lib/shared-etc-nginx}      # this host's nginx prefix: pid, logs, temp
PORT=${PORT:-8080}                             # nginx listens here on every address
SUBNET=${SUBNET:-10.199.77}                    # demo only: the emulated hosts' /24

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'shared-etc-nginx.sh: %s\n' "$*" >&2; exit 1; }

need() {
	for tool in "$@"; do
		command -v "$tool" >/dev/null || die "$tool is missing (see the comments at the top)"
	done
	[ "$(id -u)" = 0 ] || die "run as root (FUSE mounts, nginx, network namespaces)"
}

# A complete nginx configuration of generation GEN in DIR.  Every path in it is relative:
# includes to the file's own directory, the pid file, logs and temporary files to nginx's
# -p prefix, which each host chooses -- so one tree serves every host.  "broken" adds a
# directive nginx does not know, which `nginx -t` rejects.
write_config() {
	local dir=$1 gen=$2 broken=${3:-}
	mkdir -p "$dir/conf.d"
	cat >"$dir/nginx.conf" <<-EOF
		# generation $gen
		worker_processes 1;
		error_log logs/error.log;
		pid logs/nginx.pid;
		events { worker_connections 64; }
		http {
		    access_log off;
		    client_body_temp_path tmp/body;
		    proxy_temp_path tmp/proxy;
		    fastcgi_temp_path tmp/fastcgi;
		    uwsgi_temp_path tmp/uwsgi;
		    scgi_temp_path tmp/scgi;
		    include conf.d/*.conf;
		}
	EOF
	cat >"$dir/conf.d/site.conf" <<-EOF
		# generation $gen
		server {
		    listen $PORT;
		    ${broken:+no_such_directive on;}
		    location / {
		        default_type text/plain;
		        return 200 "generation $gen from \$server_addr\n";
		    }
		}
	EOF
}

# nginx for one host: STATE_DIR is its prefix, CONF the configuration file.
nginx_cmd() {
	local state=$1 conf=$2
	printf 'nginx -p %s/ -e %s/logs/error.log -c %s' "$state" "$state" "$conf"
}

# Everything one host runs besides its engine member.  WRAP (may be empty) runs a command
# "on the host": the demo's `nsenter --net=...`, which keeps the mount namespace, so the
# mount is visible everywhere on this machine.  The watcher runs in the background; its
# PID is left in $WATCHER.
start_host() {
	local name=$1 url=$2 mnt=$3 state=$4; shift 4
	local wrap=("$@") nginx
	mkdir -p "$mnt" "$state/logs" "$state/tmp"
	if ! mountpoint -q "$mnt"; then
		# -d returns once the mount is live.  Its META_URL is the mount's source, which is
		# how `kvfs watch` and `kvfs status` find the volume's engine.
		"${wrap[@]}" kvfs mount -d --log "$state/kvfs-mount.log" "$url" "$mnt"
	fi
	[ -e "$mnt/nginx/nginx.conf" ] || die "$mnt/nginx holds no config yet: deploy one first"
	nginx=$(nginx_cmd "$state" "$mnt/nginx/nginx.conf")
	[ -s "$state/logs/nginx.pid" ] && kill -0 "$(cat "$state/logs/nginx.pid")" 2>/dev/null ||
		"${wrap[@]}" $nginx
	# The check sees the tree at $KVFS_WATCH_PATH as this host's mount shows it, at the
	# revision in $KVFS_WATCH_REVISION; the reload runs only after a passing check.
	"${wrap[@]}" kvfs watch "$mnt/nginx" --host "$name" --quiet-ms 200 \
		--check "$nginx -t -q" --reload "$nginx -s reload" \
		>>"$state/watch.log" 2>&1 &
	WATCHER=$!
}

stop_host() {
	local mnt=$1 state=$2 watcher=${3:-}
	[ -z "$watcher" ] || kill "$watcher" 2>/dev/null || true      # SIGTERM: record removed
	[ -s "$state/logs/nginx.pid" ] && kill -QUIT "$(cat "$state/logs/nginx.pid")" 2>/dev/null || true
	! mountpoint -q "$mnt" || kvfs umount "$mnt" || kvfs umount -z "$mnt" || true
}

# Deploy generation GEN (optionally broken) at MOUNTPOINT/nginx: staged inside the volume,
# swapped in with one rename.  With a check, a broken tree never reaches any host.
deploy() {
	local mnt=$1 gen=$2 broken=${3:-} src
	src=$(mktemp -d /tmp/shared-etc-src.XXXXXX)
	write_config "$src" "$gen" "$broken"
	kvfs deploy "$src" "$mnt/nginx" || true
	rm -rf "$src"
}

# -- demo: N hosts on one machine --------------------------------------------------------

# The demo's state is global, so that the exit trap sees it however the script ends.
WORK="" NAMES=() ADDRS=() WATCHERS=() MEMBERS=()

demo_cleanup() {
	set +e
	log "cleaning up"
	for i in "${!NAMES[@]}"; do
		stop_host "$WORK/${NAMES[$i]}/mnt" "$WORK/${NAMES[$i]}/state" "${WATCHERS[$i]:-}"
	done
	# Unmounted daemons end their sessions while the engine is still up, then exit; wait
	# until each namespace holds nothing but its engine member.
	local deadline=$((SECONDS + 30))
	for i in "${!NAMES[@]}"; do
		while [ "$SECONDS" -lt "$deadline" ] && ip netns pids "kvfs-demo-${NAMES[$i]}" \
			2>/dev/null | grep -vqx "${MEMBERS[$i]:-none}"; do
			sleep 0.2
		done
	done
	for pid in "${MEMBERS[@]}"; do kill "$pid" 2>/dev/null; done
	wait 2>/dev/null
	for name in "${NAMES[@]}"; do ip netns del "kvfs-demo-$name" 2>/dev/null; done
	ip link del kvfs-demo-br 2>/dev/null
	[ -z "$WORK" ] || rm -rf "$WORK"
}

url_of() {   # host I's META_URL: its own member first
	local i=$1 list=${ADDRS[$1]}:7379 j
	for j in "${!ADDRS[@]}"; do [ "$j" = "$i" ] || list+=",${ADDRS[$j]}:7379"; done
	echo "raft://$list/shared-etc"
}

serving() {   # every live host's answer, fetched from this machine as a client would
	local a
	for a in "${ADDRS[@]}"; do
		printf '  %s: %s\n' "$a" "$(curl -s -m 1 "http://$a:$PORT/" || echo '(no answer)')"
	done
}

# Until every live host serves generation $1 three times in a row (at most 30 s): for a
# moment after a reload, nginx's old worker still answers next to the new one.
wait_for() {
	local a n deadline=$((SECONDS + 30))
	for a in "${ADDRS[@]}"; do
		n=0
		while [ "$n" -lt 3 ]; do
			if curl -s -m 1 "http://$a:$PORT/" | grep -q "^generation $1 "; then
				n=$((n + 1))
			else
				n=0
			fi
			[ "$SECONDS" -lt "$deadline" ] || die "generation $1 not served by $a"
			sleep 0.02
		done
	done
}

demo() {
	local n=$1 i name addr ns t0 src peers="" clients=""
	need kvfs nginx ip nsenter curl
	[ "$n" -ge 1 ] && [ "$n" -le 9 ] || die "demo: between 1 and 9 hosts"
	! ip -o -4 addr | grep -q " $SUBNET\." || die "demo: $SUBNET.0/24 is in use; set SUBNET"
	ip link show kvfs-demo-br >/dev/null 2>&1 && die "demo: kvfs-demo-br exists (another demo?)"
	WORK=$(mktemp -d /tmp/shared-etc-demo.XXXXXX)
	trap demo_cleanup EXIT
	for i in $(seq 1 "$n"); do
		NAMES+=("host$i"); ADDRS+=("$SUBNET.$((i + 1))")
	done
	local mnt1=$WORK/${NAMES[0]}/mnt

	# The hosts: one network namespace each, joined to a bridge by a veth pair.  This
	# machine holds the bridge's address, so it reaches every host.
	log "emulating $n hosts on $SUBNET.0/24"
	ip link add kvfs-demo-br type bridge
	ip addr add "$SUBNET.1/24" dev kvfs-demo-br
	ip link set kvfs-demo-br up
	for i in "${!NAMES[@]}"; do
		name=${NAMES[$i]} addr=${ADDRS[$i]} ns=kvfs-demo-${NAMES[$i]}
		ip netns add "$ns"
		ip link add "kvd-$name" type veth peer name eth0 netns "$ns"
		ip link set "kvd-$name" master kvfs-demo-br up
		ip -n "$ns" addr add "$addr/24" dev eth0
		ip -n "$ns" link set lo up
		ip -n "$ns" link set eth0 up
		peers+="${peers:+,}$name=http://$addr:7380"
		clients+="${clients:+,}$name=$addr:7379"
		mkdir -p "$WORK/$name"
	done

	# The engine: one Raft store member per host.  An etcd member per host works the same;
	# only the META_URL changes (etcd://HOST:2379,.../shared-etc).
	for i in "${!NAMES[@]}"; do
		name=${NAMES[$i]} addr=${ADDRS[$i]}
		nsenter --net="/run/netns/kvfs-demo-$name" kvfs raft serve --name "$name" \
			--data-dir "$WORK/$name/raft" --listen-peer "http://$addr:7380" \
			--listen-client "http://$addr:7379" --listen-metrics off \
			--initial-cluster "$peers" --initial-cluster-clients "$clients" \
			--initial-cluster-token shared-etc-demo >"$WORK/$name/raft.log" 2>&1 &
		MEMBERS+=($!)
	done
	kvfs format "$(url_of 0)" shared-etc >/dev/null   # waits for the members to elect a leader

	log "mounting on every host; the first config is deployed from ${NAMES[0]}"
	for i in "${!NAMES[@]}"; do
		name=${NAMES[$i]}
		mkdir -p "$WORK/$name/mnt"
		nsenter --net="/run/netns/kvfs-demo-$name" kvfs mount -d \
			--log "$WORK/$name/kvfs-mount.log" "$(url_of "$i")" "$WORK/$name/mnt"
	done
	deploy "$mnt1" 1
	for i in "${!NAMES[@]}"; do
		name=${NAMES[$i]}
		start_host "$name" "$(url_of "$i")" "$WORK/$name/mnt" "$WORK/$name/state" \
			nsenter --net="/run/netns/kvfs-demo-$name"
		WATCHERS[$i]=$WATCHER
	done
	wait_for 1
	serving

	log "deploying generation 2 from ${NAMES[0]}"
	t0=$EPOCHREALTIME
	deploy "$mnt1" 2 &    # after the swap, kvfs deploy waits 2 s before removing the old tree
	wait_for 2
	log "every host serves generation 2, $(awk "BEGIN { print $EPOCHREALTIME - $t0 }") s after the deploy started"
	serving
	wait $!
	local good=$EPOCHREALTIME   # for the rollback at the end

	log "a broken generation 3, deployed with a check on ${NAMES[0]}: refused before the swap"
	src=$(mktemp -d /tmp/shared-etc-src.XXXXXX)
	write_config "$src" 3 broken
	kvfs deploy --check "$(nginx_cmd "$WORK/${NAMES[0]}/state" '{}/nginx.conf') -t -q" \
		"$src" "$mnt1/nginx" || true
	rm -rf "$src"

	log "deployed without a check: every host's check rejects it, every nginx keeps generation 2"
	deploy "$mnt1" 3 broken
	local deadline=$((SECONDS + 30))
	until [ "$(kvfs status "$mnt1" | grep -c 'check failed')" = "$n" ]; do
		[ "$SECONDS" -lt "$deadline" ] || die "not every host recorded the failed check"
		sleep 0.2
	done
	kvfs status "$mnt1"
	serving

	# A majority of the engine's members must stay up: with 3 or more hosts, one may go.
	if [ "$n" -ge 3 ]; then
		i=$((n - 1)) name=${NAMES[$((n - 1))]}
		log "$name goes away (watcher, engine member, nginx, mount); the others take generation 4"
		kill -9 "${WATCHERS[$i]}" "${MEMBERS[$i]}"
		wait "${WATCHERS[$i]}" "${MEMBERS[$i]}" 2>/dev/null || true   # (no "Killed" lines)
		stop_host "$WORK/$name/mnt" "$WORK/$name/state"
		unset "ADDRS[$i]"
		deploy "$mnt1" 4
		wait_for 4
		serving
	fi

	log "the history of nginx.conf, and a rollback of the whole tree to generation 2"
	kvfs log "$mnt1/nginx/nginx.conf"
	kvfs restore "$mnt1/nginx" --at "@$good"
	wait_for 2
	serving
	log "done; every process, mount and namespace of the demo is removed on exit"
}

case "${1:-}" in
	demo) demo "${2:-3}" ;;
	host)
		[ $# -eq 3 ] || die "usage: $0 host NAME META_URL"
		need kvfs nginx
		start_host "$2" "$3" "$MNT" "$STATE"
		trap 'stop_host "$MNT" "$STATE" "$WATCHER"' EXIT
		log "$2: nginx serves $MNT/nginx on port $PORT; watching (Ctrl-C stops)"
		wait "$WATCHER"
		;;
	deploy)
		[ $# -ge 2 ] || die "usage: $0 deploy GEN [broken]"
		need kvfs
		deploy "$MNT" "$2" "${3:-}"
		kvfs status "$MNT"
		;;
	*) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
