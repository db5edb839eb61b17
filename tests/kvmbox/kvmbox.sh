#!/bin/sh
# Builds kvmbox and runs it with the given arguments. Use this (or a built
# binary) rather than "go run ./tests/kvmbox" wherever CMD's exit status
# matters: go run reports every failure as exit status 1.
#
#   tests/kvmbox/kvmbox.sh [flags] -- CMD [ARGS...]
set -e
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$root/build/kvmbox"
(cd "$root" && CGO_ENABLED=0 go build -o build/kvmbox/kvmbox ./tests/kvmbox)
exec "$root/build/kvmbox/kvmbox" "$@"
