#!/usr/bin/env bash
# Packages that cannot be plain dependencies of facexpr, installed into a virtualenv
# (default: the active Python). Usage: bash scripts/install-extras.sh [VENV]
set -euo pipefail
py=python3
if [ -n "${1:-}" ]; then py="$1/bin/python"; fi
