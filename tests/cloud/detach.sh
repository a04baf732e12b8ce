#!/bin/bash
# Undo attach.sh: tests/cloud/detach.sh VOLUME_ID
#
# Thaws and unmounts any filesystem on the volume's loop device, detaches the
# loop device, and deletes the Cinder attachment (the volume is "available"
# again). Each part is skipped if already undone, so it can be re-run.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

(($# == 1)) || die "usage: $0 VOLUME_ID"
volume=$1
[[ $volume =~ ^[0-9a-f-]{36}$ ]] || die "not a volume id: $volume"

loop_file=$ATTACHMENTS/$volume.loop
attachment_file=$ATTACHMENTS/$volume.attachment
[[ -f $loop_file || -f $attachment_file ]] || die "volume $volume is not attached by attach.sh"

if [[ -f $loop_file ]]; then
    dev=$(<"$loop_file")
    # Only release the device if it still backs this volume's file.
    if [[ $(losetup --list --noheadings --output BACK-FILE "$dev" 2>/dev/null) == *"/volume-$volume.img"* ]]; then
        release_device "$dev"
    fi
    rm -f "$loop_file"
fi
if [[ -f $attachment_file ]]; then
    # shellcheck source=/dev/null
    . "$RUN/env.sh"
    ctl detach "$(<"$attachment_file")"
    rm -f "$attachment_file"
fi
