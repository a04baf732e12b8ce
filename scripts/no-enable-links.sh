#!/bin/sh
# Usage: scripts/no-enable-links.sh BEFORE
#
# After an `apt-get install` of test dependencies: for every package that is
# installed now but was not in BEFORE (a `dpkg-query -W -f '${Package}\n'`
# listing taken before the install, so dependencies count too), removes the
# boot-time enable links of its systemd units and disables cloud-init, so
# that `make test` on a developer's systemd machine leaves nothing to start
# at the next boot (MariaDB, PostgreSQL, Redis, cloud-init …). Packages that
# were there before are left as they are: they are somebody's.
set -eu

before=$1
[ -f "$before" ] || { echo "no-enable-links.sh: $before: no such file" >&2; exit 2; }

dpkg-query -W -f '${Package}\n' | sort >"$before.after"
sort "$before" | comm -13 - "$before.after" | while read -r pkg; do
    dpkg -L "$pkg" 2>/dev/null |
        grep -E '^(/usr)?/lib/systemd/system/[^/]+\.(service|socket|timer|path|target)$' |
        while read -r unit_file; do
            unit=$(basename "$unit_file")
            grep -q '^\[Install\]' "$unit_file" || continue
            case "$unit" in *@.*) continue ;; esac
            if command -v deb-systemd-helper >/dev/null; then
                deb-systemd-helper disable "$unit" >/dev/null 2>&1 || true
            fi
            systemctl --root=/ disable "$unit" >/dev/null 2>&1 || true
            echo "no-enable-links.sh: $pkg: $unit not enabled at boot"
        done
    if [ "$pkg" = cloud-init ]; then
        mkdir -p /etc/cloud
        touch /etc/cloud/cloud-init.disabled
        echo "no-enable-links.sh: cloud-init disabled at boot (/etc/cloud/cloud-init.disabled)"
    fi
done
rm -f "$before.after"
