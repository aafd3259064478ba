#!/usr/bin/env bash
# Resolve a new constraints file for an Airflow release on Debian 12's own Python, in a container
# from the base image (markers such as python_full_version < "3.11.3" must be evaluated there).
# Usage: scripts/resolve-constraints.sh 3.3.2 [extra pins...]   e.g. celery==5.6.3 kombu==5.6.2
# Then deploy it in a Molecule scenario before committing it.
set -euo pipefail
version=${1:?usage: $0 AIRFLOW_VERSION [extra pins...]}
shift
image=${AIRFLOW_HA_BASE_IMAGE:-airflow-ha/debian12-systemd:latest}
out="roles/airflow_common/files/constraints/constraints-${version}-python3.11.txt"
ca=${AIRFLOW_HA_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
docker run --rm -v "$ca:/tmp/ca.crt:ro" -e PIP_CERT=/tmp/ca.crt "$image" bash -c "
  python3 -m venv /tmp/v >/dev/null &&
  /tmp/v/bin/pip install -q --disable-pip-version-check \
    'apache-airflow[celery,postgres,redis]==${version}' apache-airflow-providers-fab $* >&2 &&
  /tmp/v/bin/pip freeze" > "$out.new"
mv "$out.new" "$out"
echo "wrote $out ($(wc -l <"$out") pins)"
