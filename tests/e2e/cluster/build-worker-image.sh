#!/usr/bin/env bash
# Transitional: build-image.sh worker.
exec "$(dirname "${BASH_SOURCE[0]}")/build-image.sh" worker "$@"
