#!/bin/bash
# Attach a test-cloud volume the way a VM would see it, without Nova:
#   tests/cloud/attach.sh VOLUME_ID      prints the loop device, e.g. /dev/loop3
#
# 1. losetup --find --show run/volumes/volume-<id>.img
# 2. Cinder: POST /attachments (a connector, no instance_uuid) then
#    os-complete, as the backup user (run/env.sh): the volume is "in-use".
# Records run/attachments/<id>.loop and <id>.attachment for detach.sh.
# On failure nothing is left attached.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

(($# == 1)) || die "usage: $0 VOLUME_ID"
volume=$1
[[ $volume =~ ^[0-9a-f-]{36}$ ]] || die "not a volume id: $volume"
[[ -f $RUN/env.sh ]] || die "no $RUN/env.sh: run tests/cloud/up.sh first"
# shellcheck source=/dev/null
. "$RUN/env.sh"

image=$VOLUMES/volume-$volume.img
[[ -f $image ]] || die "no $image (volume not created, or not available yet?)"
[[ ! -e $ATTACHMENTS/$volume.loop ]] ||
    die "volume $volume already attached at $(<"$ATTACHMENTS/$volume.loop")"

mkdir -p "$ATTACHMENTS"
dev=$(losetup --find --show "$image")
if ! attachment=$(ctl attach "$volume" "$dev"); then
    losetup -d "$dev"
    die "Cinder attachment of $volume failed (detached $dev again)"
fi
echo "$dev" >"$ATTACHMENTS/$volume.loop"
echo "$attachment" >"$ATTACHMENTS/$volume.attachment"
echo "$dev"
