#!/usr/bin/env bash
# Build the Debian 12 systemd image that Molecule platforms and the lab hosts run, from Debian's
# archive (debootstrap + docker import): no registry is needed. The image also carries, downloaded
# but not installed, every package listed in base-image-packages.txt (what the roles and scenarios
# install), with package lists that match them: containers install those from the image, not the
# network. The image has a label with the hash of this recipe (this script and that list); it is
# rebuilt when the recipe changes, when it is older than AIRFLOW_HA_BASE_IMAGE_MAX_AGE_DAYS (30:
# Debian's newer package versions get in), or with FORCE=1.
set -euo pipefail

IMAGE="${AIRFLOW_HA_BASE_IMAGE:-airflow-ha/debian12-systemd:latest}"
SUITE=bookworm
PACKAGES="python3,python3-venv,python3-apt,systemd,systemd-sysv,dbus,openssh-server,sudo,procps,iproute2,iputils-ping,ca-certificates,curl,gnupg,less"
PACKAGE_LIST="$(dirname "$0")/base-image-packages.txt"
MAX_AGE_DAYS="${AIRFLOW_HA_BASE_IMAGE_MAX_AGE_DAYS:-30}"

log() { printf '[base-image] %s\n' "$*" >&2; }

[[ "$MAX_AGE_DAYS" =~ ^[1-9][0-9]*$ ]] || { log "AIRFLOW_HA_BASE_IMAGE_MAX_AGE_DAYS must be a whole number of days"; exit 1; }
recipe_hash=$(cat "$0" "$PACKAGE_LIST" | sha256sum | cut -c1-16)
now=$(date +%s)
labels=$(docker image inspect -f '{{ index .Config.Labels "airflow-ha.recipe" }} {{ index .Config.Labels "airflow-ha.built" }}' "$IMAGE" 2>/dev/null || true)
read -r current built <<<"${labels:-}" || true
if [ "${FORCE:-0}" != 1 ] && [ "${current:-}" = "$recipe_hash" ] && [[ "${built:-}" =~ ^[0-9]+$ ]] \
    && [ $((now - built)) -lt $((MAX_AGE_DAYS * 86400)) ]; then
  log "$IMAGE is up to date (recipe $recipe_hash, $(((now - built) / 86400)) days old)"
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
# mktemp made it 0700: as /, it must let apt's _apt user (and every service user) through.
chmod 0755 "$root"
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
# The apt cache: package lists from the sources above, then each line of the package list downloaded
# (not installed) on its own, as a fresh container would resolve that install. apt keeps what it
# downloads in /var/cache/apt/archives and installs from there when the version matches the lists;
# nothing in the image turns that off (no docker-clean hook, Keep-Downloaded-Packages unset).
# An https mirror is trusted with this machine's CA bundle, for the build only.
apt_opts=(-q -o APT::Keep-Downloaded-Packages=true)
if [ -r /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$root/tmp/build-ca.crt"
  apt_opts+=(-o Acquire::https::CAInfo=/tmp/build-ca.crt)
fi
[ -e "$root/etc/resolv.conf" ] || cp /etc/resolv.conf "$root/etc/resolv.conf"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }
log "downloading the packages of $(basename "$PACKAGE_LIST") into the image's apt cache"
in_root apt-get "${apt_opts[@]}" update >/dev/null
while read -r -a names; do
  [ "${#names[@]}" -gt 0 ] || continue
  in_root apt-get "${apt_opts[@]}" install -y --download-only "${names[@]}" >/dev/null
done < <(sed -e 's/#.*//' "$PACKAGE_LIST")
# srcpkgcache.bin is only needed to rebuild pkgcache.bin, which stays valid until the lists or dpkg's
# status change (38 MB).
rm -f "$root/tmp/build-ca.crt" "$root/var/cache/apt/srcpkgcache.bin"
if grep -rqsE 'Keep-Downloaded-Packages *"?(false|0)|archives/\*\.deb' "$root/etc/apt/apt.conf.d"; then
  log "the image's apt configuration deletes downloaded packages: $root/etc/apt/apt.conf.d"
  exit 1
fi
log "apt cache: $(find "$root/var/cache/apt/archives" -name '*.deb' | wc -l) packages, $(du -sh "$root/var/cache/apt/archives" | cut -f1)"
# How fresh the lists are is what cache_valid_time (ansible.builtin.apt, airflow_ha.cluster.packages)
# reads: the mtime of /var/lib/apt/lists when no update-success stamp exists. The lists are dated
# at the end of the image's life (the build plus MAX_AGE_DAYS), so a container installs from the
# image's lists and cache without `apt-get update` while the image is current; an install that fails
# to fetch anyway (a package the cache lacks, gone from the mirror) refreshes the lists and retries
# (airflow_ha.cluster.packages). The first `apt-get update` in a container dates them normally.
rm -f "$root/var/lib/apt/periodic/update-success-stamp"
touch -d "@$((now + MAX_AGE_DAYS * 86400))" "$root/var/lib/apt/lists"

log "importing as $IMAGE"
tar -C "$root" -c . | docker import \
  --change 'ENV container=docker' \
  --change 'CMD ["/lib/systemd/systemd"]' \
  --change "LABEL airflow-ha.recipe=$recipe_hash" \
  --change "LABEL airflow-ha.built=$now" \
  - "$IMAGE" >/dev/null
log "built $IMAGE (recipe $recipe_hash)"
