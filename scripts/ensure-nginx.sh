#!/usr/bin/env bash
# The nginx deployment test runs Debian's nginx in front of real API processes; install it when
# it is missing and we may.
set -euo pipefail
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's nginx for the nginx deployment test" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null
else
  echo "nginx not found and cannot be installed here; the nginx deployment test will be skipped" >&2
fi
