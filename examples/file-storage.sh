#!/usr/bin/env bash
# A volume whose blocks are files in a local directory (--storage file) while the
# metadata stays in an embedded store.  Run as root with `kvfs` on PATH.
set -euo pipefail

work=${1:-$(mktemp -d /tmp/kvfs-file.XXXXXX)}
store=$work/meta
bucket=$work/blocks
mnt=$work/mnt
mkdir -p "$mnt"

# Default block size for file storage is 4 MiB; --block-size takes KiB.
kvfs format --storage file --bucket "$bucket" --block-size 4096 "$store" files

kvfs mount -d --log "$work/kvfs.log" -o attr_timeout=2,entry_timeout=2 "$store" "$mnt"

dd if=/dev/urandom of="$mnt/data.bin" bs=1M count=10 status=none
sha256sum "$mnt/data.bin"

# One 10 MiB write became one slice of three blocks: 4 MiB, 4 MiB and 2 MiB, each a file
# named chunks/<id/10^6>/<id/1000>/<id>_<index>_<size>, starting with the KVB1 header.
find "$bucket" -type f | sort
first=$(find "$bucket" -type f | sort | head -n 1)
head -c 4 "$first"; echo

kvfs umount "$mnt"
while kvfs status "$store" | grep -q 'is mounted'; do sleep 0.2; done
kvfs fsck --leaked "$store"

if [ -z "${1:-}" ]; then
	rm -rf "$work"
fi
