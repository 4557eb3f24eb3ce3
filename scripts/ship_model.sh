#!/usr/bin/env bash
# Ship a training run's EMA generator inside the package:
#   bash scripts/ship_model.sh RUN NAME [--default]
# Exports fp16 safetensors + config + model card into src/facexpr/weights/NAME, adds an ONNX
# export checked against torch (the editor's CPU path), and optionally makes NAME the default.
set -euo pipefail
run="$1"; name="$2"; make_default="${3:-}"
dest="src/facexpr/weights/$name"
rm -rf "$dest"
facexpr export "$run" "$dest" --fp16
facexpr export-onnx "$dest" "$dest/generator.onnx"
if [ "$make_default" = "--default" ]; then echo "$name" > src/facexpr/weights/DEFAULT; fi
