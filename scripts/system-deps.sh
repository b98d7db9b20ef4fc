#!/usr/bin/env bash
# System packages the tests and benchmarks need: Debian's Chromium (Playwright drives it; never
# `playwright install`), PostgreSQL and Redis servers, the docker-compose client (the compose
# file is validated with `docker-compose config`; no engine is needed) and wrk (the HTTP
# benchmarks' load generator) and acl (setfacl: the postgres OS user may enter a data dir's
# parents). Only what is missing is installed.
set -euo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v redis-server >/dev/null || need+=(redis-server)
[ -n "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null)" ] || need+=(postgresql)
command -v psql >/dev/null || need+=(postgresql-client)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
command -v wrk >/dev/null || need+=(wrk)
command -v setfacl >/dev/null || need+=(acl)  # dedicated servers reach a data dir under /root
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "installing system packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
