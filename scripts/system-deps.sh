#!/usr/bin/env bash
# Install the Debian/Ubuntu packages Latchkey needs, only those missing.
# Works as root or as a user with sudo; idempotent.
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

[ -n "$(pg_bin)" ] && [ -x "$(pg_bin)/initdb" ] || need+=(postgresql)
have_cmd redis-server || need+=(redis-server)
have_cmd npm || need+=(nodejs npm)
have_cmd runuser || need+=(util-linux)
have_cmd jq || need+=(jq)  # scripts/first-day.sh reads ids from buf curl's JSON
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
# The local CQL engine (Apache Cassandra 5.0, from Maven Central) runs on Java 17.
java -version 2>&1 | grep -qE 'version "(1[7-9]|2[0-9])' || need+=(openjdk-17-jre-headless)
have_cmd mvn || need+=(maven)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

sudo=()
if [ "$(id -u)" != 0 ]; then
  if have_cmd sudo; then sudo=(sudo -n); else
    echo "missing packages: ${need[*]}; run as root or install them: apt-get install ${need[*]}" >&2
    exit 1
  fi
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
# Debian may start its own postgresql/redis services on their default ports;
# Latchkey never uses those: it runs its own instances under .state/.
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
