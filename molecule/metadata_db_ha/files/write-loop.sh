#!/bin/bash
# write-loop.sh CONNINFO TABLE: insert one numbered row into TABLE every 0.2 s through CONNINFO
# (a libpq multi-host address) until /var/tmp/write-loop/stop exists. Every commit the server
# acknowledged is logged as "seq started-at acknowledged-at" (epoch seconds) to TABLE.ok, every
# failed attempt as "seq started-at failed-at" to TABLE.fail.
# A psql that hangs (a connection to a host that just vanished) is cut off after 3 s and counts as
# failed: it was not acknowledged.
set -u
dir=/var/tmp/write-loop
conninfo=$1
table=$2
seq=0
while [ ! -e "$dir/stop" ]; do
  seq=$((seq + 1))
  start=$(date +%s.%N)
  if timeout 3 psql -X -q -v ON_ERROR_STOP=1 -d "$conninfo" \
      -c "INSERT INTO $table (seq) VALUES ($seq)" 2>>"$dir/$table.err"; then
    echo "$seq $start $(date +%s.%N)" >>"$dir/$table.ok"
  else
    echo "$seq $start $(date +%s.%N)" >>"$dir/$table.fail"
  fi
  sleep 0.2
done
