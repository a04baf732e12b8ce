#!/bin/bash
# Start the volsnap test cloud: Keystone, Swift and Cinder on 127.0.0.1
# (ports in lib.sh and README.md), state under tests/cloud/run/.
#
#   tests/cloud/up.sh            start, or do nothing if already up and healthy
#   tests/cloud/up.sh --restart  stop whatever runs and start afresh
#
# A fresh start wipes tests/cloud/run/ (but not run/cache/). On success it
# writes run/env.sh and run/clouds.yaml. On failure it prints the log tail of
# the service that failed, stops everything it started, and exits non-zero;
# the logs stay in run/logs/.
#
# Environment: VOLSNAP_TESTCLOUD_TIMEOUT (seconds for each readiness wait,
# default 90), CI=true (pip --no-cache-dir).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

TIMEOUT=${VOLSNAP_TESTCLOUD_TIMEOUT:-90}
export VOLSNAP_TESTCLOUD_ADMIN_PASSWORD=testcloud-admin
export VOLSNAP_TESTCLOUD_BACKUP_PASSWORD=testcloud-backup
export VOLSNAP_TESTCLOUD_SERVICE_PASSWORD=testcloud-service
export VOLSNAP_TESTCLOUD_KEYSTONE_URL=$KEYSTONE_URL
export VOLSNAP_TESTCLOUD_SWIFT_URL=$SWIFT_URL
export VOLSNAP_TESTCLOUD_CINDER_URL=$CINDER_URL
export VOLSNAP_TESTCLOUD_VOLUMES=$VOLUMES
export VOLSNAP_TESTCLOUD_RUN=$RUN
export VOLSNAP_TESTCLOUD_CLOUDS_YAML=$RUN/clouds.yaml
# Cinder's backup service runs, with this driver (tests and the demo that
# need it look for this in env.sh).
export VOLSNAP_TESTCLOUD_BACKUP_DRIVER=swift
export PYTHONPATH=$CLOUD_DIR/py
export OS_KEYSTONE_CONFIG_FILES=$RUN/keystone/keystone.conf

# --- venv -------------------------------------------------------------------

ensure_venv() {
    local stamp=$VENV/.testcloud-requirements want
    want=$(cat "$CLOUD_DIR/requirements.txt" "$CLOUD_DIR/constraints.txt" | sha256sum)
    if [[ -f $stamp && $(<"$stamp") == "$want" ]] && "$VENV/bin/python" -c '' 2>/dev/null; then
        return
    fi
    if ! "$VENV/bin/python" -c '' 2>/dev/null; then
        rm -rf "$VENV"
        log "creating $VENV"
        python3 -m venv "$VENV"
    fi
    local flags=(--quiet --disable-pip-version-check)
    [[ ${CI:-} != true ]] || flags+=(--no-cache-dir)
    log "pip install -r requirements.txt -c constraints.txt"
    "$VENV/bin/pip" install "${flags[@]}" \
        -r "$CLOUD_DIR/requirements.txt" -c "$CLOUD_DIR/constraints.txt"
    echo "$want" >"$stamp"
}

# --- health -----------------------------------------------------------------

all_running() {
    local name
    for name in "${SERVICES[@]}"; do
        pid_of "$name" >/dev/null || return 1
    done
}

already_up() {
    [[ -f $RUN/env.sh ]] && all_running || return 1
    (
        # shellcheck source=/dev/null
        . "$RUN/env.sh"
        ctl ready 5
    ) >/dev/null 2>&1
}

# --- configuration ----------------------------------------------------------

# authtoken_conf USER: keystonemiddleware settings for a service user.
authtoken_conf() {
    cat <<EOF
www_authenticate_uri = $KEYSTONE_URL
auth_url = $KEYSTONE_URL
auth_type = password
username = $1
password = $VOLSNAP_TESTCLOUD_SERVICE_PASSWORD
project_name = service
user_domain_id = default
project_domain_id = default
EOF
}

write_configs() {
    mkdir -p "$RUN"/{keystone,swift/devices/sdb1,cinder/locks} "$PIDS" "$LOGS" \
        "$VOLUMES" "$ATTACHMENTS"
    echo "$PORT_BASE" >"$RUN/port-base"

    cat >"$RUN/keystone/keystone.conf" <<EOF
[DEFAULT]
use_stderr = true
[database]
connection = sqlite:///$RUN/keystone/keystone.db
[token]
provider = fernet
[fernet_tokens]
key_repository = $RUN/keystone/fernet-keys
[fernet_receipts]
key_repository = $RUN/keystone/fernet-keys
[credential]
key_repository = $RUN/keystone/credential-keys
[identity]
# bcrypt's minimum cost: fast logins and application credentials
password_hash_rounds = 4
[cache]
# In-process cache: one gunicorn worker, so it is always consistent.
enabled = true
backend = oslo_cache.dict
EOF

    cat >"$RUN/swift/swift.conf" <<EOF
[swift-hash]
swift_hash_path_prefix = volsnap-testcloud
swift_hash_path_suffix = volsnap-testcloud
[storage-policy:0]
name = Policy-0
default = yes
EOF
    local server port
    for server in account container object; do
        case $server in
            account) port=$PORT_SWIFT_ACCOUNT ;;
            container) port=$PORT_SWIFT_CONTAINER ;;
            object) port=$PORT_SWIFT_OBJECT ;;
        esac
        cat >"$RUN/swift/$server-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $port
workers = 0
user = root
swift_dir = $RUN/swift
devices = $RUN/swift/devices
mount_check = false
disable_fallocate = true
recon_cache_path = $RUN/swift
log_name = $server-server
log_udp_host = 127.0.0.1
log_udp_port = $PORT_SWIFT_LOG
[pipeline:main]
pipeline = healthcheck $server-server
[app:$server-server]
use = egg:swift#$server
[filter:healthcheck]
use = egg:swift#healthcheck
EOF
    done
    cat >"$RUN/swift/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $PORT_SWIFT_PROXY
workers = 0
user = root
swift_dir = $RUN/swift
log_name = proxy-server
log_udp_host = 127.0.0.1
log_udp_port = $PORT_SWIFT_LOG
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats authtoken keystoneauth copy slo dlo versioned_writes proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
$(authtoken_conf swift)
delay_auth_decision = true
cache = swift.cache
include_service_catalog = false
[filter:keystoneauth]
use = egg:swift#keystoneauth
operator_roles = admin, member
reseller_admin_role = ResellerAdmin
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$PORT_MEMCACHED
[filter:proxy-logging]
use = egg:swift#proxy_logging
access_log_udp_host = 127.0.0.1
access_log_udp_port = $PORT_SWIFT_LOG
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
[filter:versioned_writes]
use = egg:swift#versioned_writes
EOF

    cat >"$RUN/cinder/cinder.conf" <<EOF
[DEFAULT]
host = testcloud
my_ip = 127.0.0.1
state_path = $RUN/cinder
transport_url = fake:/
auth_strategy = keystone
osapi_volume_listen = 127.0.0.1
osapi_volume_listen_port = $PORT_CINDER
osapi_volume_workers = 1
api_paste_config = $VENV/etc/cinder/api-paste.ini
resource_query_filters_file = $VENV/etc/cinder/resource_filters.json
rootwrap_config = $VENV/etc/cinder/rootwrap.conf
enabled_backends = file
scheduler_driver_init_wait_time = 1
graceful_shutdown_timeout = 3
quota_volumes = -1
quota_snapshots = -1
quota_gigabytes = -1
quota_backups = -1
quota_backup_gigabytes = -1
# cinder-backup (same process): Swift driver into this cloud's own Swift,
# as the requesting user (per_user: the user's token and catalog), so the
# backups land in the project's own account, container volumebackups.
backup_driver = cinder.backup.drivers.swift.SwiftBackupDriver
backup_swift_auth = per_user
swift_catalog_info = object-store:swift:publicURL
backup_swift_container = volumebackups
# Swift's defaults: 50 MiB objects (a 1 GiB volume is 21 PUTs; smaller
# objects cost a PUT each, ~0.1 s here), changes tracked in 32 KiB blocks (an
# incremental stores only the changed extents, plus the sha256 list).
backup_swift_retry_attempts = 2
backup_swift_retry_backoff = 1
[database]
connection = sqlite:///$RUN/cinder/cinder.db
[oslo_concurrency]
lock_path = $RUN/cinder/locks
[coordination]
backend_url = file://$RUN/cinder/locks
[keystone_authtoken]
$(authtoken_conf cinder)
[file]
volume_driver = testcloud_filedriver.FileDriver
volume_backend_name = file
testcloud_volumes_dir = $VOLUMES
# A backup of a snapshot attaches the snapshot file itself (no temporary
# volume copied from it first).
backup_use_temp_snapshot = true
EOF
}

# --- processes --------------------------------------------------------------

# start NAME COMMAND...: run COMMAND as the leader of a new session (so
# down.sh can signal its whole process group), output to logs/NAME.log.
start() {
    local name=$1
    shift
    setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
    echo $! >"$PIDS/$name.pid"
}

# Setup steps that run in the background while others proceed.
declare -A JOBS=()
job() {
    local name=$1
    shift
    "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
    JOBS[$name]=$!
}
join() {
    wait "${JOBS[$1]}" || fail "$1" "setup step $1 failed"
}

FAILED=
# fail NAME MESSAGE: show the log tail of NAME (and related logs) and exit.
fail() {
    local name=$1 file
    shift
    log "error: $*"
    for file in "$LOGS/$name"*.log; do
        [[ -f $file ]] || continue
        printf '%s\n' "----- tail of ${file#"$CLOUD_DIR"/} -----" >&2
        tail -n 40 "$file" >&2
    done
    FAILED=1
    exit 1
}

on_exit() {
    local rc=$?
    if ((rc != 0)); then
        [[ -n $FAILED ]] || log "error: up.sh failed (exit $rc)"
        log "stopping what was started; logs stay in ${LOGS#"$CLOUD_DIR"/}"
        "$CLOUD_DIR/down.sh" >&2 || true
    fi
}

STARTED=$SECONDS
progress() { log "$1 (+$((SECONDS - STARTED))s)"; }

wait_port() {
    local name=$1 port=$2 deadline=$((SECONDS + TIMEOUT))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        pid_of "$name" >/dev/null || fail "$name" "$name exited"
        ((SECONDS < deadline)) || fail "$name" "$name not listening on $port after ${TIMEOUT}s"
        sleep 0.1
    done
}

keystone_manage() {
    "$VENV/bin/keystone-manage" --config-file "$RUN/keystone/keystone.conf" "$@"
}

keystone_keys() {
    keystone_manage fernet_setup --keystone-user root --keystone-group root &&
        keystone_manage credential_setup --keystone-user root --keystone-group root
}

keystone_db() {
    keystone_manage db_sync &&
        keystone_manage bootstrap \
            --bootstrap-password "$VOLSNAP_TESTCLOUD_ADMIN_PASSWORD" \
            --bootstrap-region-id RegionOne \
            --bootstrap-admin-url "$KEYSTONE_URL/v3" \
            --bootstrap-internal-url "$KEYSTONE_URL/v3" \
            --bootstrap-public-url "$KEYSTONE_URL/v3"
}

# What keystone-manage, cinder-manage and the ring builder produce depends
# only on the pinned packages and these scripts: it is kept in run/cache and
# copied on later fresh starts (saves ~10 s of CPU). Fernet and credential
# keys are reused with it, which is fine for a test cloud.
STATE_FILES=(keystone/keystone.db keystone/fernet-keys keystone/credential-keys
             cinder/cinder.db swift/account.ring.gz swift/container.ring.gz
             swift/object.ring.gz)

state_key() {
    cat "$CLOUD_DIR"/{requirements.txt,constraints.txt,lib.sh,up.sh} \
        "$CLOUD_DIR"/py/testcloud_rings.py | sha256sum | cut -c1-16
}

save_state() {
    local dest=$1 tmp=$1.tmp.$$ file
    rm -rf "$CACHE"/state-*
    for file in "${STATE_FILES[@]}"; do
        mkdir -p "$tmp/$(dirname "$file")"
        cp -a "$RUN/$file" "$tmp/$file"
    done
    mv "$tmp" "$dest"
}

restore_state() {
    local file
    for file in "${STATE_FILES[@]}"; do
        cp -a "$1/$file" "$RUN/$file"
    done
}

# --- main -------------------------------------------------------------------

main() {
    local restart=false
    case ${1:-} in
        --restart) restart=true ;;
        "") ;;
        *) die "usage: $0 [--restart]" ;;
    esac

    "$CLOUD_DIR/install-deps.sh"
    ensure_venv
    if ! $restart && already_up; then
        log "already up (tests/cloud/up.sh --restart starts afresh)"
        return
    fi

    "$CLOUD_DIR/down.sh"
    trap on_exit EXIT
    local busy
    busy=$(listeners)
    [[ -z $busy ]] || die "ports $PORT_FIRST-$PORT_LAST in use (port pid): $busy"
    find "$RUN" -mindepth 1 -maxdepth 1 ! -name cache -exec rm -rf {} +
    write_configs

    STARTED=$SECONDS
    start memcached "$CACHE/memcached/usr/bin/memcached" -u root \
        -l 127.0.0.1 -p "$PORT_MEMCACHED" -U 0 -m 64
    start swift-logsink "$VENV/bin/python" "$CLOUD_DIR/py/testcloud_logsink.py" \
        "$PORT_SWIFT_LOG" "$LOGS/swift.log"

    local state
    state=$CACHE/state-$(state_key)
    if [[ -d $state ]]; then
        restore_state "$state"
    else
        job swift-rings "$VENV/bin/python" "$CLOUD_DIR/py/testcloud_rings.py" \
            "$RUN/swift" "$PORT_SWIFT_ACCOUNT" "$PORT_SWIFT_CONTAINER" "$PORT_SWIFT_OBJECT"
        job cinder-dbsync "$VENV/bin/cinder-manage" \
            --config-file "$RUN/cinder/cinder.conf" db sync
        job keystone-keys keystone_keys
        job keystone-db keystone_db
        join keystone-keys
        join keystone-db
        join swift-rings
        join cinder-dbsync
        save_state "$state"
    fi
    progress "databases, keys and rings"

    start keystone "$VENV/bin/gunicorn" --bind "127.0.0.1:$PORT_KEYSTONE" \
        --workers 1 --threads 4 --timeout 120 --graceful-timeout 5 \
        --no-control-socket --access-logfile - --access-logformat '%(h)s "%(r)s" %(s)s %(b)s %(L)ss' \
        --chdir "$CLOUD_DIR/py" testcloud_keystone:application

        local server
    for server in account container object; do
        start "swift-$server" "$VENV/bin/swift-$server-server" "$RUN/swift/$server-server.conf"
    done
    start swift-proxy "$VENV/bin/swift-proxy-server" "$RUN/swift/proxy-server.conf"

        start cinder "$VENV/bin/python" "$CLOUD_DIR/py/testcloud_cinder.py" \
        --config-file "$RUN/cinder/cinder.conf"

    wait_port memcached "$PORT_MEMCACHED"
    wait_port keystone "$PORT_KEYSTONE"
    ctl wait-keystone "$TIMEOUT" || fail keystone "keystone not ready"
    progress "keystone ready"
    ctl bootstrap "$RUN" >>"$LOGS/keystone-bootstrap.log" 2>&1 ||
        fail keystone "creating users, catalog and application credential failed"

    # shellcheck source=/dev/null
    . "$RUN/env.sh"
    for server in swift-account swift-container swift-object swift-proxy; do
        pid_of "$server" >/dev/null || fail "$server" "$server exited"
    done
    ctl wait-swift "$TIMEOUT" || fail swift "swift not ready"
    progress "swift ready"
    ctl wait-cinder "$TIMEOUT" || fail cinder "cinder not ready"
    progress "cinder ready"

    trap - EXIT
    log "up in $((SECONDS - STARTED))s (+ deps/venv check); source $RUN/env.sh" \
        "or use OS_CLIENT_CONFIG_FILE=$RUN/clouds.yaml OS_CLOUD=volsnap-test"
}

main "$@"
