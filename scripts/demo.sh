#!/bin/bash
# `make demo`: volsnap's Cinder strategy end to end, against the loopback
# cloud of tests/cloud (real Keystone and Cinder on 127.0.0.1).
#
#   make demo                 build, then run this script
#   scripts/demo.sh           the same, with an existing build
#   KEEP=1 scripts/demo.sh    keep the volumes, snapshot and mounts; print
#                             how to remove them
#
# Steps: cloud up -> 1 GiB volume, attached, ext4, mounted -> a small file
# tree and its checksum list (written without sync) -> a demo config ->
# volsnap check, backup, list -> the snapshot's metadata -> volsnap restore
# into a new volume -> attach, mount, checksums match -> when the cloud runs
# cinder-backup: the Cinder backup volsnap made of the snapshot, restored
# into another volume with volsnap restore --cinder-backup, checksums match
# -> clean up.
#
# An EXIT trap thaws, unmounts, detaches and deletes everything the demo
# made, on success and on failure (unless KEEP=1). The cloud is left running:
# tests/cloud/down.sh stops it.
#
# Environment:
#   VOLSNAP_BIN            the binary (default target/release/volsnap)
#   VOLSNAP_TESTCLOUD_DIR  use another checkout's running tests/cloud as it is
#                          (its up.sh is not called: when it finds its cloud
#                          unhealthy it restarts it, wiping others' state)
#   DEMO_WAIT              seconds for any status change (default 120)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OWN_CLOUD=$REPO/tests/cloud
CLOUD=${VOLSNAP_TESTCLOUD_DIR:-$OWN_CLOUD}
CLOUD=$(cd "$CLOUD" && pwd)
VOLSNAP=${VOLSNAP_BIN:-$REPO/target/release/volsnap}
WAIT=${DEMO_WAIT:-120}
KEEP=${KEEP:-0}

if [[ -t 1 ]]; then B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' D=$'\e[2m' N=$'\e[0m'; else B='' G='' R='' D='' N=''; fi
STEP=0
STEPS=9
# The cloud's env.sh says whether it runs cinder-backup (read after step 1).
BACKUPS='' BACKUP_LINE=''
step() {
    STEP=$((STEP + 1))
    printf '\n%s==> %d/%d  %s%s\n' "$B" "$STEP" "$STEPS" "$*" "$N"
}
say() { printf '    %s\n' "$*"; }
die() {
    printf '%sdemo: %s%s\n' "$R" "$*" "$N" >&2
    exit 1
}

[[ $(id -u) == 0 ]] || die "needs root: it attaches loop devices, mounts and freezes a filesystem"
[[ -x $VOLSNAP ]] || die "no $VOLSNAP: run \`make demo\` (or \`make build\`) first"

# --- what the demo made, for the trap ---------------------------------------

TMP=$(mktemp -d /tmp/volsnap-demo.XXXXXX)
CLOUD_UP=''  # set once this checkout's cloud is up
DATA_VOL='' DATA_ATTACHED='' DATA_MNT=$TMP/data
REST_VOL='' REST_ATTACHED='' REST_MNT=$TMP/restored
BACK_VOL='' BACK_ATTACHED='' BACK_MNT=$TMP/from-backup
SNAPSHOTS=()
BACKUP_IDS=()

openstack() { "$CLOUD/venv/bin/openstack" "$@"; }

unmount() {
    mountpoint -q "$1" 2>/dev/null || return 0
    fsfreeze -u "$1" 2>/dev/null || true
    umount "$1" || umount -l "$1"
}

delete_volume() {
    openstack volume delete "$1" >/dev/null 2>&1 || return 1
    local deadline=$((SECONDS + WAIT))
    while openstack volume show "$1" -f value -c id >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

delete_snapshot() {
    openstack volume snapshot delete "$1" >/dev/null 2>&1 || return 1
    local deadline=$((SECONDS + WAIT))
    while openstack volume snapshot show "$1" -f value -c id >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

delete_backup() {
    local deadline=$((SECONDS + WAIT))
    # A backup still being made cannot be deleted: wait until it is not.
    while [[ $(openstack volume backup show "$1" -f value -c status 2>/dev/null) == creating ]]; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
    openstack volume backup delete "$1" >/dev/null 2>&1 || return 1
    while openstack volume backup show "$1" -f value -c id >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

kept() {
    printf '\n%sKEEP=1: kept everything the demo made%s\n' "$B" "$N"
    [[ -z $DATA_VOL ]] || say "data volume      $DATA_VOL${DATA_ATTACHED:+, attached, mounted at $DATA_MNT}"
    for s in "${SNAPSHOTS[@]}"; do say "snapshot         $s"; done
    [[ -z $REST_VOL ]] || say "restored volume  $REST_VOL${REST_ATTACHED:+, attached, mounted at $REST_MNT}"
    [[ -z $BACK_VOL ]] || say "from the backup  $BACK_VOL${BACK_ATTACHED:+, attached, mounted at $BACK_MNT}"
    for b in "${BACKUP_IDS[@]}"; do say "Cinder backup    $b"; done
    say "config and files $TMP"
    say ""
    say "to remove them (as root, from $REPO):"
    say "  . ${CLOUD/#$REPO\//}/run/env.sh; os=${CLOUD/#$REPO\//}/venv/bin/openstack"
    [[ -z $REST_ATTACHED ]] || say "  umount $REST_MNT; ${CLOUD/#$REPO\//}/detach.sh $REST_VOL"
    [[ -z $DATA_ATTACHED ]] || say "  umount $DATA_MNT; ${CLOUD/#$REPO\//}/detach.sh $DATA_VOL"
    [[ -z $REST_VOL ]] || say "  \$os volume delete $REST_VOL"
    [[ -z $BACK_ATTACHED ]] || say "  umount $BACK_MNT; ${CLOUD/#$REPO\//}/detach.sh $BACK_VOL"
    [[ -z $BACK_VOL ]] || say "  \$os volume delete $BACK_VOL"
    for b in "${BACKUP_IDS[@]}"; do say "  \$os volume backup delete $b"; done
    for s in "${SNAPSHOTS[@]}"; do say "  \$os volume snapshot delete $s"; done
    [[ -z $DATA_VOL ]] || say "  \$os volume delete $DATA_VOL   # once its snapshots are gone"
    say "  rm -rf $TMP"
    if [[ -n $CLOUD_UP ]]; then
        say "the test cloud keeps running; tests/cloud/down.sh stops it (and detaches its loop devices)"
    fi
}

cleanup() {
    local rc=$? failed=()
    trap - EXIT INT TERM HUP
    set +e
    if [[ $KEEP == 1 ]]; then
        kept
        exit "$rc"
    fi
    printf '\n%s==> clean up%s\n' "$B" "$N"
    unmount "$BACK_MNT"
    unmount "$REST_MNT"
    unmount "$DATA_MNT"
    if [[ -n $BACK_ATTACHED ]]; then "$CLOUD/detach.sh" "$BACK_VOL" >/dev/null || failed+=("detach $BACK_VOL"); fi
    if [[ -n $BACK_VOL ]]; then delete_volume "$BACK_VOL" || failed+=("volume $BACK_VOL"); fi
    # Whatever backup of the data volume exists (newest first: incrementals
    # before their full).
    if [[ -n $DATA_VOL && -n $BACKUPS ]]; then
        while read -r b; do
            [[ -n $b && " ${BACKUP_IDS[*]} " != *" $b "* ]] && BACKUP_IDS+=("$b")
        done < <(openstack volume backup list --volume "$DATA_VOL" -f value -c ID 2>/dev/null)
    fi
    for b in "${BACKUP_IDS[@]}"; do delete_backup "$b" || failed+=("backup $b"); done
    if [[ -n $REST_ATTACHED ]]; then "$CLOUD/detach.sh" "$REST_VOL" >/dev/null || failed+=("detach $REST_VOL"); fi
    if [[ -n $DATA_ATTACHED ]]; then "$CLOUD/detach.sh" "$DATA_VOL" >/dev/null || failed+=("detach $DATA_VOL"); fi
    if [[ -n $REST_VOL ]]; then delete_volume "$REST_VOL" || failed+=("volume $REST_VOL"); fi
    # Whatever snapshot the data volume has (also one a failed backup left).
    if [[ -n $DATA_VOL ]]; then
        while read -r s; do
            [[ -n $s && " ${SNAPSHOTS[*]} " != *" $s "* ]] && SNAPSHOTS+=("$s")
        done < <(openstack volume snapshot list --volume "$DATA_VOL" -f value -c ID 2>/dev/null)
    fi
    for s in "${SNAPSHOTS[@]}"; do delete_snapshot "$s" || failed+=("snapshot $s"); done
    if [[ -n $DATA_VOL ]]; then delete_volume "$DATA_VOL" || failed+=("volume $DATA_VOL"); fi
    rm -rf "$TMP"
    if ((${#failed[@]})); then
        say "${R}could not remove: ${failed[*]}${N}"
        say "(the openstack CLI: . ${CLOUD/#$REPO\//}/run/env.sh; ${CLOUD/#$REPO\//}/venv/bin/openstack ...)"
        rc=1
    else
        local made=()
        [[ -z $DATA_VOL ]] || made+=("volume $DATA_VOL")
        [[ -z $REST_VOL ]] || made+=("volume $REST_VOL")
        [[ -z $BACK_VOL ]] || made+=("volume $BACK_VOL")
        for b in "${BACKUP_IDS[@]}"; do made+=("backup $b"); done
        for s in "${SNAPSHOTS[@]}"; do made+=("snapshot $s"); done
        if ((${#made[@]})); then
            say "unmounted, detached and deleted:"
            for m in "${made[@]}"; do say "  $m"; done
        else
            say "nothing was made"
        fi
    fi
    if [[ -n $CLOUD_UP ]]; then
        say "the test cloud keeps running; tests/cloud/down.sh stops it"
    elif [[ $CLOUD != "$OWN_CLOUD" ]]; then
        say "the test cloud of $CLOUD keeps running (it is that checkout's to stop)"
    fi
    if ((rc == 0)); then
        printf '\n%sdemo: done%s\n' "$G" "$N"
    else
        printf '\n%sdemo: FAILED (exit %d)%s\n' "$R" "$rc" "$N" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# wait_status KIND ID STATUS: poll `openstack KIND show` until STATUS.
wait_status() {
    local kind=$1 id=$2 want=$3 status deadline=$((SECONDS + WAIT))
    while :; do
        # shellcheck disable=SC2086  # KIND is "volume" or "volume snapshot"
        status=$(openstack $kind show "$id" -f value -c status)
        [[ $status == "$want" ]] && return 0
        [[ $status == error* ]] && die "$kind $id is $status"
        ((SECONDS < deadline)) || die "$kind $id still $status after ${WAIT}s"
        sleep 1
    done
}

# --- 1. the cloud -------------------------------------------------------------

step "The test cloud: Keystone and Cinder on 127.0.0.1"
if [[ $CLOUD == "$OWN_CLOUD" ]]; then
    if ! "$CLOUD/up.sh" 2>&1 | sed 's/^/    /'; then
        die "tests/cloud/up.sh failed (above). If another checkout's test cloud holds the ports, use it: VOLSNAP_TESTCLOUD_DIR=/that/checkout/tests/cloud make demo"
    fi
    CLOUD_UP=1
else
    [[ -f $CLOUD/run/env.sh ]] || die "$CLOUD is not up (no run/env.sh)"
    say "using the running cloud of $CLOUD (VOLSNAP_TESTCLOUD_DIR)"
fi
# shellcheck source=/dev/null
. "$CLOUD/run/env.sh"
unset OS_CLOUD VOLSNAP_CONFIG
if [[ -n ${VOLSNAP_TESTCLOUD_BACKUP_DRIVER:-} ]]; then
    BACKUPS=1
    STEPS=10
    BACKUP_LINE='backup = "full"                     # then a Cinder backup of the good snapshot'
    say "cinder-backup runs (driver: $VOLSNAP_TESTCLOUD_BACKUP_DRIVER): the demo backs the snapshot up and restores from it"
fi
say "credentials: OS_* from ${CLOUD/#$REPO\//}/run/env.sh (an application credential of user \"backup\")"
say "volsnap:     ${VOLSNAP/#$REPO\//} ($("$VOLSNAP" --version 2>/dev/null || echo '?'))"

# --- 2. a data volume -----------------------------------------------------------

step "A 1 GiB Cinder volume, attached, ext4, mounted"
say "$D\$ openstack volume create --size 1 volsnap-demo-data-$$$N"
DATA_VOL=$(openstack volume create --size 1 "volsnap-demo-data-$$" -f value -c id) ||
    die "openstack volume create failed"
say "volume $DATA_VOL; waiting until it is available"
wait_status volume "$DATA_VOL" available
DEV=$("$CLOUD/attach.sh" "$DATA_VOL")
DATA_ATTACHED=1
say "attached on $DEV (${CLOUD/#$REPO\//}/attach.sh: a loop device; the volume is in-use in Cinder)"
mkfs.ext4 -q "$DEV"
mkdir -p "$DATA_MNT"
mount "$DEV" "$DATA_MNT"
say "ext4 mounted on $DATA_MNT"

# --- 3. data ---------------------------------------------------------------------

step "Some data: a small file tree and its checksum list"
mkdir -p "$DATA_MNT/db/tables" "$DATA_MNT/db/logs"
cp -r "$REPO/src" "$DATA_MNT/db/src-copy"
for i in 1 2 3 4; do head -c $((i * 256 * 1024)) /dev/urandom >"$DATA_MNT/db/tables/t$i.ibd"; done
for i in 1 2 3; do seq 1 $((i * 5000)) | sed "s/^/log line $i:/" >"$DATA_MNT/db/logs/log.$i"; done
(cd "$DATA_MNT" && find db -type f -print0 | sort -z | xargs -0 sha256sum) >"$TMP/checksums"
cp "$TMP/checksums" "$DATA_MNT/CHECKSUMS"
say "$(wc -l <"$TMP/checksums") files, $(du -sh "$DATA_MNT/db" | cut -f1); checksums in $DATA_MNT/CHECKSUMS"
say "not synced on purpose: the freeze flushes them into the snapshot"

# --- 4. config ---------------------------------------------------------------------

step "A volsnap config: Cinder strategy, datastore none, explicit volume id"
mkdir -p "$TMP/run"
CONFIG=$TMP/volsnap.toml
(
    umask 077
    cat >"$CONFIG" <<EOF
backup_agent = "CinderAgent"
storage_strategy = "Cinder"
datastore = "none"                  # plain files: the filesystem freeze is enough
mounts = ["$DATA_MNT"]
runtime_dir = "$TMP/run"

[hooks]
dir = "$REPO/hooks"

[cinder]
max_freeze = "30s"
$BACKUP_LINE
[cinder.volumes]
"$DATA_MNT" = "$DATA_VOL"
EOF
)
say "$CONFIG (mode $(stat -c %a "$CONFIG"); no secret in it, the OS_* environment has them):"
sed 's/^/      /' "$CONFIG"
vs() { "$VOLSNAP" --config "$CONFIG" "$@"; }
# vsshow ARGS...: volsnap --config CONFIG ARGS, shown as typed.
vsshow() {
    printf '    %s$ volsnap --config %s %s%s\n' "$D" "$CONFIG" "$*" "$N"
    vs "$@" 2>&1 | sed 's/^/    /'
    return "${PIPESTATUS[0]}"
}
vsshow check --offline

# --- 5. backup ------------------------------------------------------------------------

step "volsnap backup: freeze, snapshot, wait until available, thaw${BACKUPS:+; then a Cinder backup of the snapshot}"
vsshow backup || die "volsnap backup failed"
SNAP=$(vs --json list | "$CLOUD/venv/bin/python" -c '
import json, sys
rows = [r for r in json.load(sys.stdin) if r["volume_id"] == sys.argv[1] and r.get("kind", "snapshot") == "snapshot"]
print(rows[0]["id"] if rows else "")' "$DATA_VOL")
[[ -n $SNAP ]] || die "volsnap list does not show a snapshot of $DATA_VOL"
SNAPSHOTS+=("$SNAP")

# --- 6. list ------------------------------------------------------------------------------

step "volsnap list: this host's snapshots, newest first"
vsshow list

# --- 7. metadata -------------------------------------------------------------------------

step "The snapshot in Cinder, with the metadata volsnap wrote"
say "$D\$ openstack volume snapshot show $SNAP -f json$N"
openstack volume snapshot show "$SNAP" -f json | "$CLOUD/venv/bin/python" -c '
import json, sys
s = json.load(sys.stdin)
for k in ("name", "status", "size", "volume_id", "created_at"):
    print(f"    {k:<12} {s.get(k)}")
print("    metadata (a database hook adds its key=value lines: binlog position, WAL LSN, ...):")
for k, v in sorted((s.get("properties") or s.get("metadata") or {}).items()):
    print(f"      {k:<16} {v}")'
((PIPESTATUS[0] == 0)) || die "openstack volume snapshot show failed"

# --- 8. restore ---------------------------------------------------------------------------

step "volsnap restore: the snapshot into a new volume"
say "$D\$ volsnap --config $CONFIG restore --snapshot $SNAP --name volsnap-demo-restored-$$$N"
REST_VOL=$(vs restore --snapshot "$SNAP" --name "volsnap-demo-restored-$$" 2> >(sed 's/^/    /' >&2)) ||
    die "volsnap restore failed"
say "new volume: $REST_VOL"

# --- 9. check ---------------------------------------------------------------------------------

step "The restored volume has the data: attach, mount, compare checksums"
RDEV=$("$CLOUD/attach.sh" "$REST_VOL")
REST_ATTACHED=1
mkdir -p "$REST_MNT"
mount "$RDEV" "$REST_MNT"
say "attached on $RDEV, mounted on $REST_MNT"
if (cd "$REST_MNT" && sha256sum --quiet -c "$TMP/checksums") >"$TMP/check.out" 2>&1 &&
    cmp -s "$TMP/checksums" "$REST_MNT/CHECKSUMS"; then
    say "${G}all $(wc -l <"$TMP/checksums") checksums match${N} (sha256sum -c $TMP/checksums in $REST_MNT)"
else
    sed 's/^/    /' "$TMP/check.out"
    die "the restored data differs from what was written"
fi

# --- 10. the Cinder backup ----------------------------------------------------------------

if [[ -n $BACKUPS ]]; then
    step "volsnap restore --cinder-backup: the Cinder backup (in Swift) into a new volume"
    BACKUP=$(vs --json list | "$CLOUD/venv/bin/python" -c '
import json, sys
rows = [r for r in json.load(sys.stdin) if r.get("kind") == "backup" and r.get("snapshot_id") == sys.argv[1]]
print(rows[0]["id"] if rows else "")' "$SNAP")
    [[ -n $BACKUP ]] || die "volsnap list does not show a backup of snapshot $SNAP"
    BACKUP_IDS+=("$BACKUP")
    say "backup $BACKUP of snapshot $SNAP ($(openstack volume backup show "$BACKUP" -f value -c object_count) objects in Swift container $(openstack volume backup show "$BACKUP" -f value -c container))"
    say "$D\$ volsnap --config $CONFIG restore --cinder-backup $BACKUP --name volsnap-demo-from-backup-$$$N"
    BACK_VOL=$(vs restore --cinder-backup "$BACKUP" --name "volsnap-demo-from-backup-$$" 2> >(sed 's/^/    /' >&2)) ||
        die "volsnap restore --cinder-backup failed"
    BDEV=$("$CLOUD/attach.sh" "$BACK_VOL")
    BACK_ATTACHED=1
    mkdir -p "$BACK_MNT"
    mount "$BDEV" "$BACK_MNT"
    say "volume $BACK_VOL attached on $BDEV, mounted on $BACK_MNT"
    if (cd "$BACK_MNT" && sha256sum --quiet -c "$TMP/checksums") >"$TMP/check.out" 2>&1; then
        say "${G}all $(wc -l <"$TMP/checksums") checksums match${N} in the volume restored from the backup"
    else
        sed 's/^/    /' "$TMP/check.out"
        die "the data restored from the backup differs from what was written"
    fi
fi
