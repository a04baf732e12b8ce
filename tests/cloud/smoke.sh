#!/bin/bash
# Smoke test of the running test cloud (tests/cloud/up.sh first), as a user
# would drive it: the `openstack` and `swift` CLIs from the venv, as the
# non-admin user "backup" (OS_CLOUD=volsnap-test, run/clouds.yaml).
#
#  token -> 1 GiB volume -> attach (loop) -> ext4, write WITHOUT sync ->
#  fsfreeze -> snapshot of the in-use volume -> wait "available" -> thaw ->
#  the snapshot file has the data, e2fsck -fn clean, no needs_recovery ->
#  delay knob keeps a snapshot "creating" -> fail knob gives "error" ->
#  volume from snapshot (larger) has the data -> cinder-backup of the
#  snapshot into Swift, restored into a new volume that has the data ->
#  backup fail knob gives "error" -> 3-segment SLO in Swift,
#  downloaded and compared -> everything deleted again.
#
# An EXIT trap thaws, unmounts, detaches and deletes whatever was created, on
# any failure; a separate watchdog process thaws the filesystem after
# MAX_FREEZE seconds even if this script is killed. Every wait is bounded.
# Ends with a line "smoke: N passed, M failed".
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

WAIT=${VOLSNAP_SMOKE_WAIT:-90}        # seconds for any status change
MAX_FREEZE=${VOLSNAP_SMOKE_MAX_FREEZE:-60}
DELAY=10                              # seconds for the snapshot-delay knob

[[ -f $RUN/env.sh && -f $RUN/clouds.yaml ]] || die "run tests/cloud/up.sh first"
# The CLI takes OS_* variables over clouds.yaml: use the named cloud only.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^OS_' || true)
export OS_CLIENT_CONFIG_FILE=$RUN/clouds.yaml OS_CLOUD=volsnap-test

WORK=$RUN/smoke
MNT=$WORK/mnt
CONTAINER=volsnap-smoke
PASSED=0
FAILED=0
VOLUME='' DEV='' FROZEN='' WATCHDOG='' RESTORED='' FROM_BACKUP=''
SNAPSHOTS=()
BACKUPS=()

openstack() { "$VENV/bin/openstack" "$@"; }
# The swift CLI authenticates from the OS_* variables of run/env.sh.
swift() (
    # shellcheck source=/dev/null
    . "$RUN/env.sh"
    unset OS_CLOUD
    "$VENV/bin/swift" "$@"
)

pass() { PASSED=$((PASSED + 1)); log "ok: $*"; }
fail() { FAILED=$((FAILED + 1)); log "FAILED: $*"; exit 1; }
# check DESCRIPTION COMMAND...: COMMAND must succeed; its output goes to
# logs/smoke.log and is shown if it fails.
check() {
    local what=$1
    shift
    echo "== $what: $*" >>"$LOGS/smoke.log"
    if "$@" >"$WORK/out" 2>&1; then
        cat "$WORK/out" >>"$LOGS/smoke.log"
        pass "$what"
    else
        cat "$WORK/out" >>"$LOGS/smoke.log"
        cat "$WORK/out" >&2
        fail "$what"
    fi
}

# status KIND ID: status of a volume, snapshot or backup: "gone" once Cinder
# says it does not exist, "unknown" if the request failed otherwise.
status() {
    local cmd=(volume) err
    [[ $1 == snapshot ]] && cmd=(volume snapshot)
    [[ $1 == backup ]] && cmd=(volume backup)
    if ! openstack "${cmd[@]}" show "$2" -f value -c status 2>"$WORK/status.err"; then
        err=$(<"$WORK/status.err")
        case $err in
            "No Volume found"* | "No Snapshot found"* | "No Backup found"*) echo gone ;;
            *) echo unknown; echo "status $1 $2: $err" >>"$LOGS/smoke.log" ;;
        esac
    fi
}

# wait_status KIND ID WANT [SECONDS]: poll until WANT; stop early on "error"
# unless that is wanted.
wait_status() {
    local kind=$1 id=$2 want=$3 deadline=$((SECONDS + ${4:-$WAIT})) now
    while now=$(status "$kind" "$id"); [[ $now != "$want" ]]; do
        [[ $now != error || $want == error ]] || { log "$kind $id: error"; return 1; }
        ((SECONDS < deadline)) || { log "$kind $id still $now after ${4:-$WAIT}s"; return 1; }
        sleep 1
    done
}

thaw() {
    if [[ -n $FROZEN ]]; then
        fsfreeze -u "$MNT" && FROZEN=
    fi
    if [[ -n $WATCHDOG ]]; then
        kill -- "-$WATCHDOG" 2>/dev/null || true
        WATCHDOG=
    fi
}

freeze() {
    # A separate session, so it outlives this script: thaw after MAX_FREEZE.
    # shellcheck disable=SC2016  # $1 and $2 are the inner shell's
    setsid bash -c 'sleep "$1"; fsfreeze -u "$2"' watchdog "$MAX_FREEZE" "$MNT" \
        </dev/null >/dev/null 2>&1 &
    WATCHDOG=$!
    fsfreeze -f "$MNT"
    FROZEN=1
}

delete_snapshot() {
    openstack volume snapshot delete "$1" && wait_status snapshot "$1" gone
}

delete_backup() {
    openstack volume backup delete "$1" && wait_status backup "$1" gone
}

delete_volume() {
    openstack volume delete "$1" && wait_status volume "$1" gone
}

# Remove everything this run created; each part is skipped once done.
cleanup() {
    local ok=0 id i
    thaw || ok=1
    rm -f "$VOLUMES/snapshot-delay" "$VOLUMES/snapshot-fail-next" \
        "$VOLUMES/backup-fail-next"
    if [[ -n $DEV ]]; then
        umount "$MNT" 2>/dev/null || true
        if "$CLOUD_DIR/detach.sh" "$VOLUME"; then DEV=; else ok=1; fi
    fi
    if [[ -n $RESTORED ]]; then
        if delete_volume "$RESTORED"; then RESTORED=; else ok=1; fi
    fi
    if [[ -n $FROM_BACKUP ]]; then
        if delete_volume "$FROM_BACKUP"; then FROM_BACKUP=; else ok=1; fi
    fi
    # Newest first: an incremental before its parent.
    for ((i = ${#BACKUPS[@]} - 1; i >= 0; i--)); do
        delete_backup "${BACKUPS[i]}" || ok=1
    done
    BACKUPS=()
    for id in "${SNAPSHOTS[@]}"; do
        delete_snapshot "$id" || ok=1
    done
    SNAPSHOTS=()
    if [[ -n $VOLUME ]]; then
        if delete_volume "$VOLUME"; then VOLUME=; else ok=1; fi
    fi
    swift delete "$CONTAINER" >/dev/null 2>&1 || true
    swift delete "${CONTAINER}_segments" >/dev/null 2>&1 || true
    rm -rf "$WORK"
    return "$ok"
}

on_exit() {
    local rc=$?
    trap - EXIT
    if ! cleanup; then
        log "cleanup was incomplete"
        rc=1
    fi
    ((rc == 0)) || FAILED=$((FAILED > 0 ? FAILED : 1))
    echo "smoke: $PASSED passed, $FAILED failed"
    exit "$rc"
}

snapshot_create() {
    # From microversion 3.66 an in-use volume needs no --force; the pinned
    # CLI drops --force and then sends 3.65 without this option.
    openstack --os-volume-api-version 3.66 volume snapshot create \
        --volume "$VOLUME" "$1" -f value -c id
}

debugfs_cat() { debugfs -R "cat $2" "$1" 2>/dev/null; }
no_needs_recovery() { ! dumpe2fs -h "$1" 2>/dev/null | grep -q needs_recovery; }
is_slo() { swift stat "$1" "$2" | grep -q 'X-Static-Large-Object: True'; }

main() {
    trap on_exit EXIT
    trap 'exit 130' INT TERM
    rm -rf "$WORK"
    mkdir -p "$MNT"
    # 2 MiB + a bit: three 1 MiB segments in Swift
    head -c $((2 * 1024 * 1024 + 12345)) /dev/urandom >"$WORK/payload"
    local marker expected snap snapfile id st

    check "token issued" openstack token issue -f value -c id

    VOLUME=$(openstack volume create --size 1 smoke-volume -f value -c id)
    check "1 GiB volume available" wait_status volume "$VOLUME" available

    DEV=$("$CLOUD_DIR/attach.sh" "$VOLUME")
    check "attached at $DEV" test -b "$DEV"
    check "volume in-use" wait_status volume "$VOLUME" in-use

    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$DEV"
    mount "$DEV" "$MNT"
    marker="volsnap smoke $(date +%s.%N)"
    # No sync: the data is only in the page cache until the freeze.
    echo "$marker" >"$MNT/marker.txt"
    cp "$WORK/payload" "$MNT/payload"

    freeze
    snap=$(snapshot_create smoke-frozen)
    SNAPSHOTS+=("$snap")
    wait_status snapshot "$snap" available || fail "frozen snapshot available"
    thaw
    pass "snapshot of the frozen in-use volume available, thawed"
    check "writable after thaw" cp "$WORK/payload" "$MNT/after-thaw"

    snapfile=$VOLUMES/snapshot-$snap.img
    check "snapshot file exists" test -f "$snapfile"
    check "e2fsck -fn clean" e2fsck -fn "$snapfile"
    check "no needs_recovery" no_needs_recovery "$snapfile"
    check "unsynced file in the snapshot" \
        test "$(debugfs_cat "$snapfile" /marker.txt)" == "$marker"
    expected=$(md5sum <"$WORK/payload")
    check "unsynced 2 MiB payload in the snapshot" \
        test "$(debugfs_cat "$snapfile" /payload | md5sum)" == "$expected"

    echo "$DELAY" >"$VOLUMES/snapshot-delay"
    id=$(snapshot_create smoke-delayed)
    SNAPSHOTS+=("$id")
    sleep 1
    st=$(status snapshot "$id")
    check "delay knob: snapshot still creating (was $st)" test "$st" == creating
    rm -f "$VOLUMES/snapshot-delay"
    check "delayed snapshot available" wait_status snapshot "$id" available

    touch "$VOLUMES/snapshot-fail-next"
    id=$(snapshot_create smoke-failing)
    SNAPSHOTS+=("$id")
    check "fail knob: snapshot in error" wait_status snapshot "$id" error
    check "fail knob file consumed" test ! -e "$VOLUMES/snapshot-fail-next"

    RESTORED=$(openstack volume create --snapshot "$snap" --size 2 smoke-restored -f value -c id)
    check "volume from snapshot available" wait_status volume "$RESTORED" available
    check "restored volume grown to 2 GiB" \
        test "$(stat -c %s "$VOLUMES/volume-$RESTORED.img")" == $((2 * 1024 ** 3))
    check "restored volume has the file" \
        test "$(debugfs_cat "$VOLUMES/volume-$RESTORED.img" /marker.txt)" == "$marker"

    # cinder-backup of the good snapshot into Swift (Swift driver, per_user:
    # the user's own account), then back into a new volume.
    id=$(openstack volume backup create --snapshot "$snap" --force \
        --name smoke-backup "$VOLUME" -f value -c id)
    BACKUPS+=("$id")
    check "backup of the snapshot available" wait_status backup "$id" available
    check "backup objects in the user's Swift container volumebackups" \
        test "$(swift list volumebackups | grep -c "$id")" -gt 2
    FROM_BACKUP=$(openstack volume backup restore "$id" smoke-from-backup \
        -f value -c volume_id)
    check "volume restored from the backup available" \
        wait_status volume "$FROM_BACKUP" available
    check "restored volume file is 1 GiB" \
        test "$(stat -c %s "$VOLUMES/volume-$FROM_BACKUP.img")" == $((1024 ** 3))
    check "volume from the backup equals the snapshot" \
        cmp "$snapfile" "$VOLUMES/volume-$FROM_BACKUP.img"
    check "volume from the backup has the file" \
        test "$(debugfs_cat "$VOLUMES/volume-$FROM_BACKUP.img" /marker.txt)" == "$marker"

    touch "$VOLUMES/backup-fail-next"
    id=$(openstack volume backup create --snapshot "$snap" --force \
        --name smoke-backup-failing "$VOLUME" -f value -c id)
    BACKUPS+=("$id")
    check "backup fail knob: backup in error" wait_status backup "$id" error
    check "backup fail knob file consumed" test ! -e "$VOLUMES/backup-fail-next"
    check "snapshot available again after the failed backup" \
        wait_status snapshot "$snap" available

    swift upload --use-slo --segment-size 1048576 --object-name payload \
        "$CONTAINER" "$WORK/payload" >/dev/null
    check "SLO manifest" is_slo "$CONTAINER" payload
    check "SLO has 3 segments" test "$(swift list "${CONTAINER}_segments" | wc -l)" == 3
    swift download "$CONTAINER" payload -o "$WORK/downloaded" >/dev/null
    check "SLO download identical" cmp "$WORK/payload" "$WORK/downloaded"

    cleanup >>"$LOGS/smoke.log" 2>&1 || fail "cleanup"
    pass "cleanup: volumes, snapshots, backups, container deleted"
}

main "$@"
