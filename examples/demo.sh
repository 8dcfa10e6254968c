#!/usr/bin/env bash
# A whole kvfs session on one machine: format an embedded volume, mount it in the
# background, use it, check it, unmount it.
#
# Run as root (FUSE) with `kvfs` on PATH (./install.sh deps puts it in /usr/local/bin).
# Everything lives under a scratch directory that is removed at the end; pass a directory
# as $1 to keep it.
set -euo pipefail

work=${1:-$(mktemp -d /tmp/kvfs-demo.XXXXXX)}
store=$work/meta          # the embedded metadata store (WAL, snapshots, LOCK)
mnt=$work/mnt
mkdir -p "$mnt"

# Blocks go into the metadata store itself (--storage kv, the default; 1 MiB blocks).
kvfs format "$store" demo

# -d: fork a daemon and return only once the mount is live.
kvfs mount -d --log "$work/kvfs.log" "$store" "$mnt"
grep " $mnt " /proc/mounts        # shows: <store> <mnt> fuse.kvfs ...

# Ordinary POSIX use.
mkdir -p "$mnt/etc/app"
printf 'listen 8080\n' > "$mnt/etc/app/app.conf.tmp"
mv "$mnt/etc/app/app.conf.tmp" "$mnt/etc/app/app.conf"   # atomic replace
ln -s app.conf "$mnt/etc/app/current"
head -c 3M /dev/urandom > "$mnt/blob"
cat "$mnt/etc/app/current"
ls -la "$mnt" "$mnt/etc/app"

# An embedded store belongs to one process: while mounted, status only says who holds it.
kvfs status "$store"

kvfs umount "$mnt"       # the daemon flushes, ends its session and exits
# The daemon releases the store's lock once it has flushed and exited.
while kvfs status "$store" | grep -q 'is mounted'; do sleep 0.2; done

# Unmounted: status shows the format, fsck checks every invariant and every block.
kvfs status "$store"
kvfs fsck --leaked "$store"

if [ -z "${1:-}" ]; then
	rm -rf "$work"
fi
