"""Model sources: resolve (local folder, hub id, ``zoo:``), check without loading, load.

Checks (``check_model_sources``) read only safetensors headers, so ``search validate`` stays
fast and never imports torch. Loading imports torch/transformers inside the functions.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, ConfigIssue

if TYPE_CHECKING:
    import torch

    from .config import ModelsConfig, SearchConfig

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def is_zoo(src: str) -> bool:
    return src.startswith("zoo:")


def resolve_source(src: str, base_dir: Path | None = None, build: bool = True) -> str:
    """A loadable path or hub id for ``src``; ``zoo:`` models are built on first use."""
    if is_zoo(src):
        from .zoo import zoo_path

        return str(zoo_path(src, build=build))
    p = Path(src).expanduser()
    if not p.is_absolute() and base_dir is not None and (base_dir / p).exists():
        p = base_dir / p
    if p.exists():
        return str(p.resolve())
    return src


#: safetensors metadata key holding the tensor names in the model's own order (the zoo writes it)
ORDER_KEY = "mergesearch.order"
#: names of input-side tensors (embeddings, an input layer); not ``embed_out`` (GPT-NeoX's head)
_INPUT_RE = re.compile(r"(?:^|[._])(?:embed|embeddings|embed_tokens|embed_in|embed_positions|word_embeddings|position_embeddings|"
                       r"token_type_embeddings|wte|wpe|tok_embeddings|inp|input|input_layer|stem|patch_embed)(?:\.|$)")


def module_order(names: Sequence[str], order: Sequence[str] | None = None) -> list[str]:
    """Tensor names read from safetensors headers, which list them alphabetically, in the order
    the model defines them: ``order`` (the :data:`ORDER_KEY` metadata) where it names every one,
    else a guess: tensors named like embeddings or inputs (``embed_tokens``, ``wte``, ``inp``)
    first, then the numbered layers by index, then the rest (final norm, head). The order decides
    which tensors before the first layer form the ``embed`` group and which after the last form
    ``head`` (:mod:`search.space`). The guess can be wrong for a model that registers a module
    out of that pattern (OPT's decoder registers its final norm before its layers). Only
    ``search validate`` of a ``models.factory`` or ``trust_remote_code`` model builds its space
    from it (launch runs that code; other models are built on the meta device; map's early
    estimate takes the smaller count of this order and the sorted one)."""
    from .space import layer_index

    have = set(names)
    if order is not None and set(order) >= have:
        return list(dict.fromkeys(n for n in order if n in have))
    inputs: list[str] = []
    layered: list[tuple[int, int, str]] = []
    rest: list[str] = []
    for i, n in enumerate(names):
        li = layer_index(n)
        if li is not None:
            layered.append((li, i, n))
        else:
            (inputs if _INPUT_RE.search(n) else rest).append(n)
    return inputs + [n for _, _, n in sorted(layered)] + rest


def safetensors_shapes(folder: Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor name -> shape from the safetensors headers of a model folder (no tensor data
    read), in the model's order as far as the headers tell it (:func:`module_order`)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] | None = None
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for k, v in header.items():
            if k != "__metadata__":
                shapes[k] = tuple(v["shape"])
        listed = (header.get("__metadata__") or {}).get(ORDER_KEY)
        if listed is not None:
            try:
                names = json.loads(listed)
            except ValueError:
                names = None
            if isinstance(names, list) and all(isinstance(x, str) for x in names):
                order = (order or []) + names
    return {k: shapes[k] for k in module_order(list(shapes), order)}


def _has_tokenizer(folder: Path) -> bool:
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
    return any((folder / n).exists() for n in names)


def first_mismatch(base: dict[str, tuple[int, ...]], other: dict[str, tuple[int, ...]]) -> str | None:
    """Describe the first tensor whose name or shape differs, or None if they agree."""
    for k, shp in base.items():
        if k not in other:
            return f"tensor {k!r} of the base is missing"
        if tuple(other[k]) != tuple(shp):
            return f"tensor {k!r} has shape {tuple(other[k])} but the base has {tuple(shp)}"
    for k in other:
        if k not in base:
            return f"tensor {k!r} is not in the base"
    return None


def check_model_sources(models: ModelsConfig, base_dir: Path | None = None) -> list[ConfigIssue]:
    """Every source exists (folder, known zoo model or hub id) and experts match the base's tensors."""
    from .zoo import zoo_problem_models

    issues: list[ConfigIssue] = []
    entries = [("models.base", models.base)] + [(f"models.experts[{i}].path", e.path) for i, e in enumerate(models.experts)]
    folders: dict[str, Path] = {}
    for field, src in entries:
        if is_zoo(src):
            problem, _, name = src[4:].partition("/")
            known = zoo_problem_models()
            if problem not in known:
                from .errors import did_you_mean

                issues.append(ConfigIssue(field, f"unknown zoo problem {problem!r}{did_you_mean(problem, known)}"))
            elif name not in known[problem]:
                from .errors import did_you_mean

                issues.append(ConfigIssue(field, f"zoo problem {problem!r} has no model {name!r}{did_you_mean(name, known[problem])}"))
            else:
                from .zoo import zoo_path

                p = zoo_path(src, build=False)
                if p.exists():
                    folders[field] = p
            continue
        p = Path(src).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        if p.is_dir():
            folders[field] = p
        elif p.exists():
            issues.append(ConfigIssue(field, f"{src!r} is a file; give the model's folder"))
        elif _HUB_ID.match(src) and not src.startswith((".", "~")):
            if os.environ.get("HF_HUB_OFFLINE") == "1":
                try:
                    from huggingface_hub import try_to_load_from_cache

                    if not isinstance(try_to_load_from_cache(src, "config.json"), str):
                        issues.append(ConfigIssue(field, f"hub id {src!r} is not in the local cache and HF_HUB_OFFLINE=1; download it first or give a folder"))
                except ImportError:
                    pass
        else:
            issues.append(ConfigIssue(field, f"no such folder or hub id {src!r}; give an existing folder, an 'org/name' hub id or a zoo: model"))
    if models.tokenizer:
        tp = Path(models.tokenizer).expanduser()
        if not tp.is_absolute() and base_dir is not None:
            tp = base_dir / tp
        if not tp.exists() and not _HUB_ID.match(models.tokenizer):
            issues.append(ConfigIssue("models.tokenizer", f"no such folder or hub id {models.tokenizer!r}"))
    elif "models.base" in folders and not models.factory and not _has_tokenizer(folders["models.base"]):
        issues.append(
            ConfigIssue("models.tokenizer", f"the base folder {str(folders['models.base'])!r} has no tokenizer; set models.tokenizer to a tokenizer folder or hub id")
        )
    if models.factory and ":" not in models.factory:
        issues.append(ConfigIssue("models.factory", f"{models.factory!r} is not 'module:function'"))

    # shapes: compare headers of local folders
    if "models.base" in folders:
        base_shapes = safetensors_shapes(folders["models.base"])
        if base_shapes is not None:
            for field, folder in folders.items():
                if field == "models.base":
                    continue
                shapes = safetensors_shapes(folder)
                if shapes is None:
                    continue
                msg = first_mismatch(base_shapes, shapes)
                if msg:
                    issues.append(ConfigIssue(field, f"not a fine-tune of the base: {msg}"))
    return issues


# ----------------------------------------------------------------------------- loading (heavy)


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_model(src: str, cfg: SearchConfig, device: str = "cpu", dtype: str | None = None) -> torch.nn.Module:
    """Load one model (base or expert) of ``cfg`` as a torch module in eval mode on ``device``."""
    return load_checkpoint(src, cfg.models, cfg.base_dir, device=device, dtype=dtype, gpus=cfg.workers.gpus_per_worker)


def load_checkpoint(src: str, models: ModelsConfig, base_dir: Path | None = None, device: str = "cpu",
                    dtype: str | None = None, gpus: int = 1) -> torch.nn.Module:
    """Load one model as a torch module in eval mode on ``device``: through ``models.factory``
    when set, else transformers; ``src`` relative to ``base_dir``. With ``gpus`` > 1 on CUDA the
    model is spread over the node's GPUs (``device_map="auto"``)."""
    m = models
    path = resolve_source(src, base_dir)
    dt = torch_dtype(dtype or m.dtype)
    if m.factory:
        from .registry import import_object

        model = import_object(m.factory)(path, dt)
    else:
        from transformers import AutoModelForCausalLM

        if device.startswith("cuda") and gpus > 1:
            # a worker owning several GPUs of a node spreads the model over them; the
            # Materializer writes each tensor on the device where it lives
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dt, trust_remote_code=m.trust_remote_code, device_map="auto"
            )
            model.eval()
            return model
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dt, trust_remote_code=m.trust_remote_code)
    model.to(device)
    model.eval()
    return model


def load_tokenizer(cfg: SearchConfig) -> Any:
    """The tokenizer (``models.tokenizer`` or the base's); None for factory models without one."""
    m = cfg.models
    src = resolve_source(m.tokenizer or m.base, cfg.base_dir)
    if m.factory and not m.tokenizer:
        return None
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=m.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(ConfigIssue("models.tokenizer", f"no tokenizer found at {src!r} ({e}); set models.tokenizer")) from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def iter_params(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters by name, each shared tensor once (tied embeddings are merged once)."""
    yield from model.named_parameters()


def check_compatible(base: torch.nn.Module, expert: torch.nn.Module, field: str) -> None:
    """Raise ConfigError naming the first tensor whose name or shape differs."""
    b = {k: tuple(v.shape) for k, v in base.named_parameters()}
    e = {k: tuple(v.shape) for k, v in expert.named_parameters()}
    msg = first_mismatch(b, e)
    if msg:
        raise ConfigError(ConfigIssue(field, f"not a fine-tune of the base: {msg}"))


def param_names(cfg: SearchConfig) -> list[str]:
    """Parameter names of the base in model order (loads the model on the meta device if possible)."""
    path = resolve_source(cfg.models.base, cfg.base_dir)
    if cfg.models.factory:
        return [n for n, _ in load_model(cfg.models.base, cfg).named_parameters()]
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    conf = AutoConfig.from_pretrained(path, trust_remote_code=cfg.models.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(conf, trust_remote_code=cfg.models.trust_remote_code)
    return [n for n, _ in model.named_parameters()]
