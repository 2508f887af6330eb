#!/usr/bin/env bash
# Install and start what Berth needs from the distro: Docker Engine, nginx, busybox-static,
# debootstrap (for the offline base images), docker-registry (the platform registry) and, with --with-postgres, what only the tests use:
# PostgreSQL, dnsmasq (a DNS server on loopback for the domain-proof tests), redis-server and
# mariadb-server (the managed-database tests start their own servers from them).
# Idempotent: installs only what is missing and starts only what is not running.
set -euo pipefail

WITH_POSTGRES=0
for arg in "$@"; do
  case "$arg" in
    --with-postgres) WITH_POSTGRES=1 ;;
    *) echo "usage: $0 [--with-postgres]" >&2; exit 2 ;;
  esac
done

log() { echo "==> $*"; }

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
# Apps' instances are set in nginx at run time, without a reload (berth.proxy.dynamic).
dpkg -s libnginx-mod-http-lua >/dev/null 2>&1 || need+=(libnginx-mod-http-lua)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# The multi-node test harness (tests/cluster) enters namespaces with nsenter and unshare.
{ command -v nsenter && command -v unshare; } >/dev/null 2>&1 || need+=(util-linux)
# Berth's egress filter (berth.netpolicy) applies its rules with iptables-restore.
command -v iptables-restore >/dev/null 2>&1 || need+=(iptables)
# The platform registry (berth.registry) runs the distro's CNCF distribution registry.
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
# The ACME tests and the issuance benchmark run the distro's pebble (and pebble-challtestsrv).
command -v pebble >/dev/null 2>&1 || need+=(pebble)
# Managed databases' backups run the distro's clients (pg_dump/pg_restore, mariadb-dump/mariadb).
command -v pg_dump >/dev/null 2>&1 || need+=(postgresql-client)
command -v mariadb-dump >/dev/null 2>&1 || need+=(mariadb-client)
# Debian's python3 ships without ensurepip; `python3 -m venv` needs python3-venv.
python3 -c "import ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
if [ "$WITH_POSTGRES" = 1 ] && [ ! -x /usr/lib/postgresql/15/bin/postgres ]; then
  need+=(postgresql)
fi
if [ "$WITH_POSTGRES" = 1 ] && ! command -v dnsmasq >/dev/null 2>&1; then
  need+=(dnsmasq-base)
fi
# The managed-database tests (tests/databases) start their own redis-server and mariadbd.
if [ "$WITH_POSTGRES" = 1 ] && ! command -v redis-server >/dev/null 2>&1; then
  need+=(redis-server)
fi
if [ "$WITH_POSTGRES" = 1 ] && ! command -v mariadbd >/dev/null 2>&1; then
  need+=(mariadb-server)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing packages: ${need[*]}; run as root (or install them)" >&2
    exit 1
  fi
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps the distro's own nginx from starting on port 80, which Berth's owns, and
  # its docker-registry from starting open on :5000 (with no init system its start would fail).
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# The distro's nginx service must not hold Berth's ingress port.
if [ -f /run/nginx.pid ] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
  log "stopping the distro's default nginx service (Berth runs its own nginx)"
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now nginx >/dev/null 2>&1 || true
  else
    /usr/sbin/nginx -s quit || true
  fi
fi

# The distro's docker-registry service would serve :5000 to everyone with its packaged config;
# Berth runs its own registry (berth.registry.server) with a config of its own.
if [ -x /usr/bin/docker-registry ]; then
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    if systemctl is-enabled --quiet docker-registry 2>/dev/null \
      || systemctl is-active --quiet docker-registry 2>/dev/null; then
      log "disabling the distro's docker-registry service (Berth runs its own registry)"
      systemctl disable --now docker-registry >/dev/null 2>&1 || true
    fi
  else
    # Left enabled, a sysvinit boot would start it; disabled, its links become K links.
    if compgen -G '/etc/rc[2-5].d/S[0-9][0-9]docker-registry' >/dev/null; then
      update-rc.d docker-registry disable >/dev/null 2>&1 || true
    fi
    if [ -f /run/docker-registry.pid ] && kill -0 "$(cat /run/docker-registry.pid)" 2>/dev/null; then
      log "stopping the distro's docker-registry service (Berth runs its own registry)"
      start-stop-daemon --stop --quiet --retry 5 --pidfile /run/docker-registry.pid \
        --exec /usr/bin/docker-registry || true
    fi
  fi
fi

if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    log "starting docker (systemd)"
    systemctl start docker
  else
    log "starting dockerd in the background (log: /var/log/dockerd.log)"
    nohup dockerd >/var/log/dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do
    docker version --format '{{.Server.Version}}' >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker version --format 'Docker Engine {{.Server.Version}} is up' || {
    echo "dockerd did not start; see /var/log/dockerd.log" >&2; exit 1; }
fi

if [ "$WITH_POSTGRES" = 1 ]; then
  if ! pg_lsclusters -h 2>/dev/null | grep -q online; then
    log "starting PostgreSQL"
    pg_lsclusters -h | grep -q . || pg_createcluster 15 main >/dev/null
    pg_ctlcluster 15 main start
  fi
fi
