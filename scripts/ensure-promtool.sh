#!/usr/bin/env bash
# The alert rules tests run Debian's promtool (in the `prometheus` package); install it when it
# is missing and we may.
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's prometheus (promtool) for the alert rules tests" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
else
  echo "promtool not found and cannot be installed here; alert rules tests will be skipped" >&2
fi
