#!/usr/bin/env bash
# The proxies bench/edge_candidates.py compares with today's nginx: the distro's Lua module for
# nginx, HAProxy and Caddy; and h2load (nghttp2-client), the HTTPS/HTTP/2 load driver of
# bench/edge_https.py. Only `make bench` needs them (the unit tests of the bench are pure),
# so they are not in ensure-system.sh. Idempotent; installs only what is missing.
# Their packages would start a service of their own (Caddy's default config serves :80, which
# Berth's ingress owns): policy-rc.d keeps them from starting, and on a systemd host the units
# of what this script installed are disabled again. The bench runs whichever are installed.
set -uo pipefail

need=()
dpkg -s libnginx-mod-http-lua >/dev/null 2>&1 || need+=(libnginx-mod-http-lua)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v caddy >/dev/null 2>&1 || need+=(caddy)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "edge candidates missing (${need[*]}): run as root to install them; the bench skips them" >&2
  exit 0
fi
echo "==> installing ${need[*]} (edge benchmark)"
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
rc=$?
rm -f /usr/sbin/policy-rc.d
if [ -d /run/systemd/system ]; then
  for unit in haproxy caddy; do
    [[ " ${need[*]} " == *" $unit "* ]] && systemctl disable --now "$unit" >/dev/null 2>&1
  done
fi
[ $rc -eq 0 ] || echo "installing ${need[*]} failed: the edge benchmark skips what is missing" >&2
exit 0
