#!/usr/bin/env bash
# A robot that is not written in Python: a shell job that reports through `rpa-bus emit`.
#
#   RPA_BUS_REDIS_URL=redis://127.0.0.1:6379/0 examples/robot.sh [SESSION_ID]
#   FAIL_AT=3 examples/robot.sh          # make step 3 fail, to see a `failed` session
#
# It archives a folder (default: the examples folder) in four steps and reports each one;
# any failing command ends the session as `failed`, naming the step.
set -euo pipefail

SID=${1:-backup-$(date +%Y%m%d-%H%M%S)}
SOURCE=${SOURCE:-$(dirname "$0")}
WORK=$(mktemp -d)
TOTAL=4
step=0

# `rpa-bus emit` exits 1 when Redis did not take the event in time: it is then journaled
# and sent by the next emit, so the job goes on. Exit 2 (bad input) stops the job.
emit() { rpa-bus emit "$SID" "$@" || [ $? -eq 1 ]; }
progress() { emit progress --step "$step" --total "$TOTAL" --message "$1"; }

trap 'emit failed --message "step $step failed (exit $?): $BASH_COMMAND"' ERR
trap 'rm -rf "$WORK"' EXIT

emit started --job backup-robot --total "$TOTAL" --data "{\"robot\": \"robot.sh\", \"source\": \"$SOURCE\"}"

step=1
[ "${FAIL_AT:-}" = 1 ] && false
files=$(find "$SOURCE" -type f ! -name '*.pyc' | wc -l)
progress "Step 1: found $files files in $SOURCE"

step=2
[ "${FAIL_AT:-}" = 2 ] && false
tar -czf "$WORK/archive.tar.gz" --exclude=__pycache__ -C "$SOURCE" .
progress "Step 2: archived"

step=3
[ "${FAIL_AT:-}" = 3 ] && false
sum=$(sha256sum "$WORK/archive.tar.gz" | cut -d' ' -f1)
size=$(stat -c %s "$WORK/archive.tar.gz")
emit archive --data "{\"bytes\": $size, \"sha256\": \"$sum\"}"   # a job's own event type
progress "Step 3: checksum ${sum:0:12}…"

step=4
[ "${FAIL_AT:-}" = 4 ] && false
tar -tzf "$WORK/archive.tar.gz" >/dev/null
progress "Step 4: archive verified"

emit finished --data "{\"files\": $files, \"bytes\": $size, \"sha256\": \"$sum\"}"
