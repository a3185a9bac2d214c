#!/bin/bash
# Docker HEALTHCHECK without curl: GET /healthz through bash's /dev/tcp. Healthy means HTTP 200
# with "status":"ok"; a draining server (SIGTERM received, finishing its calls) reports
# unhealthy, so an orchestrator stops sending it new calls.
#
#   PORT (7860), HEALTHCHECK_HOST (127.0.0.1)
set -u
host=${HEALTHCHECK_HOST:-127.0.0.1}
port=${PORT:-7860}
if ! { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null; then
    echo "unhealthy: nothing listening on $host:$port"
    exit 1
fi
printf 'GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$host" >&3
response=$(timeout 4 cat <&3)
exec 3<&-
status_line=${response%%$'\r'*}
case "$status_line" in
    "HTTP/1.1 200"*) ;;
    *) echo "unhealthy: ${status_line:-no answer from /healthz}"; exit 1 ;;
esac
if [[ "$response" != *'"status":"ok"'* ]]; then
    echo "unhealthy: ${response##*$'\r\n\r\n'}"
    exit 1
fi
echo "healthy: ${response##*$'\r\n\r\n'}"
