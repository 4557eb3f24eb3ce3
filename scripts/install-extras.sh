#!/usr/bin/env bash
# Packages that cannot be plain dependencies, installed into the active environment.
set -euo pipefail
