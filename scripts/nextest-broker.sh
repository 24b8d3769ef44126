#!/bin/sh
# A nextest setup script: one live-mutex broker for this test run, on a socket of its own, and
# LMX_URL pointing every test process at it. With `lmx` installed it starts the broker now;
# without, the first test process that needs it starts it (zero install) at that URL. Either
# way it exits by itself once idle (LMX_IDLE_EXIT, default here 30 s).
set -eu
dir=$(mktemp -d "${TMPDIR:-/tmp}/lmx-nextest.XXXXXX")   # mode 0700: this user's only
url="unix://$dir/broker.sock"
if command -v lmx >/dev/null 2>&1; then
  lmx --url "$url" start --daemon --idle-exit "${LMX_IDLE_EXIT:-30}"
fi
echo "LMX_URL=$url" >> "$NEXTEST_ENV"
echo "LMX_IDLE_EXIT=${LMX_IDLE_EXIT:-30}" >> "$NEXTEST_ENV"
