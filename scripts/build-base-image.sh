#!/usr/bin/env bash
# Build the Debian 12 systemd image that Molecule platforms and the lab hosts run, from Debian's
# archive (debootstrap + docker import): no registry is needed. The image carries a label with the
# hash of this recipe; it is rebuilt only when the recipe changes (or FORCE=1).
set -euo pipefail

IMAGE="${AIRFLOW_HA_BASE_IMAGE:-airflow-ha/debian12-systemd:latest}"
SUITE=bookworm
PACKAGES="python3,python3-venv,python3-apt,systemd,systemd-sysv,dbus,openssh-server,sudo,procps,iproute2,iputils-ping,ca-certificates,curl,gnupg,less"

log() { printf '[base-image] %s\n' "$*" >&2; }

recipe_hash=$(sha256sum "$0" | cut -c1-16)
current=$(docker image inspect -f '{{ index .Config.Labels "airflow-ha.recipe" }}' "$IMAGE" 2>/dev/null || true)
if [ "${FORCE:-0}" != 1 ] && [ "$current" = "$recipe_hash" ]; then
  log "$IMAGE is up to date (recipe $recipe_hash)"
  exit 0
fi

# The mirror comes from this machine's own apt sources, so the build uses whatever mirror or
# proxy the machine is set up with. AIRFLOW_HA_DEBIAN_MIRROR overrides it.
mirror="${AIRFLOW_HA_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
fi
if [ -z "$mirror" ]; then
  mirror=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
fi
[ -n "$mirror" ] || { log "no Debian mirror found in /etc/apt; set AIRFLOW_HA_DEBIAN_MIRROR"; exit 1; }

if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

root=$(mktemp -d /var/tmp/airflow-ha-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
log "debootstrap $SUITE from $mirror into $root"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$mirror" >/dev/null

# Make the rootfs a good container citizen: apt sources pointing at the same mirror (a role may
# replace them), no getty on consoles, an empty machine-id so each container gets its own.
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
SOURCES
rm -f "$root/etc/machine-id" "$root/var/lib/dbus/machine-id"
: >"$root/etc/machine-id"
for unit in getty@tty1.service serial-getty@ttyS0.service console-getty.service \
    systemd-udevd.service systemd-udev-trigger.service systemd-timesyncd.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
rm -f "$root"/etc/ssh/ssh_host_*_key*
# Host keys are made per container at first boot.
mkdir -p "$root/etc/systemd/system/ssh.service.d"
cat >"$root/etc/systemd/system/ssh.service.d/10-host-keys.conf" <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
UNIT
# No package lists in the image (they would be stale); date the empty lists directory in the past
# so `apt` with cache_valid_time sees a cache that needs updating.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
touch -d '2000-01-01' "$root/var/lib/apt/lists"

log "importing as $IMAGE"
tar -C "$root" -c . | docker import \
  --change 'ENV container=docker' \
  --change 'CMD ["/lib/systemd/systemd"]' \
  --change "LABEL airflow-ha.recipe=$recipe_hash" \
  - "$IMAGE" >/dev/null
log "built $IMAGE (recipe $recipe_hash)"
