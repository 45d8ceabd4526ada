"""Reading base and expert weights tensor by tensor, without K + 1 model objects.

A *tensor source* maps the model's parameter names to tensors of one checkpoint:

* ``SafetensorsSource``: a folder with ``model.safetensors`` or a sharded checkpoint
  (``model.safetensors.index.json`` + shards). Tensors are read one at a time with
  positioned reads at the offsets the safetensors header gives, into buffers this process
  owns, so start-up holds one checkpoint tensor at a time besides the merge buffers (the
  kernel's page cache does the rest). Shapes come from the headers, without reading data.
* ``ModuleSource``: a loaded ``torch.nn.Module`` (fallback for ``models.factory`` models
  and checkpoints without safetensors or with names the model renames on load); it holds
  one full model, released when the source is closed.
* ``DictSource``: in-memory tensors (tests, callers that already hold the weights).

Names. The model's parameters are walked with ``named_parameters()`` (tied tensors once,
docs/facts.md); a parameter is looked up under each of its aliases (``named_parameters(
remove_duplicate=False)`` lists e.g. ``lm_head.weight`` and ``model.embed_tokens.weight``
for tied embeddings), with and without the model's ``base_model_prefix``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError, ConfigIssue

if TYPE_CHECKING:
    from ..config import ModelsConfig

log = logging.getLogger("search.merge")

INDEX_FILE = "model.safetensors.index.json"


def param_aliases(model: torch.nn.Module) -> dict[str, list[str]]:
    """For each parameter name of ``named_parameters()``: all names of the same tensor."""
    by_id: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(n)
    out: dict[str, list[str]] = {}
    for n, p in model.named_parameters():
        names = by_id.get(id(p), [n])
        out[n] = [n] + [a for a in names if a != n]
    return out


def _candidates(names: Iterable[str], prefix: str) -> list[str]:
    out: list[str] = []
    for a in names:
        out.append(a)
        if prefix:
            if a.startswith(prefix + "."):
                out.append(a[len(prefix) + 1 :])
            else:
                out.append(f"{prefix}.{a}")
    return out


def map_names(aliases: dict[str, list[str]], keys: Iterable[str], prefix: str = "") -> tuple[dict[str, str], list[str]]:
    """Map parameter names to checkpoint keys; returns (mapping, unresolved parameter names)."""
    keyset = set(keys)
    mapping: dict[str, str] = {}
    missing: list[str] = []
    for n, al in aliases.items():
        k = next((c for c in _candidates(al, prefix) if c in keyset), None)
        if k is None:
            missing.append(n)
        else:
            mapping[n] = k
    return mapping, missing


class TensorSource:
    """Named tensors of one checkpoint (base or an expert), read one at a time."""

    field: str = ""
    fresh: bool = False  # get() returns new tensors the caller may modify

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def get(self, name: str) -> torch.Tensor:
        """The tensor (on CPU, the checkpoint's dtype)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class DictSource(TensorSource):
    def __init__(self, tensors: dict[str, torch.Tensor], aliases: dict[str, list[str]], field: str, prefix: str = ""):
        self.field = field
        self._t = tensors
        self._map, self.missing = map_names(aliases, tensors.keys(), prefix)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._t[self._map[name]].shape)

    def get(self, name: str) -> torch.Tensor:
        return self._t[self._map[name]].detach()


class ModuleSource(DictSource):
    """Parameters of a loaded module (the fallback path)."""

    def __init__(self, module: torch.nn.Module, aliases: dict[str, list[str]], field: str, prefix: str = ""):
        tensors = {n: p for n, p in module.named_parameters(remove_duplicate=False)}
        super().__init__(tensors, aliases, field, prefix)
        self._module: torch.nn.Module | None = module

    def get(self, name: str) -> torch.Tensor:
        return super().get(name).cpu()

    def close(self) -> None:
        self._module = None
        self._t = {}


def safetensors_files(folder: Path) -> dict[str, Path] | None:
    """Tensor key -> shard file of a safetensors checkpoint folder (None if there is none)."""
    index = folder / INDEX_FILE
    if index.is_file():
        wm = json.loads(index.read_text())["weight_map"]
        return {k: folder / f for k, f in wm.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    out: dict[str, Path] = {}
    for f in files:
        for k in safetensors_shapes_of(f):
            out.setdefault(k, f)
    return out


def _header(f: Path) -> tuple[dict[str, Any], int]:
    """The safetensors JSON header of a file and the byte offset where its data starts."""
    import struct

    with open(f, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(n)), 8 + n


def safetensors_shapes_of(f: Path) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v["shape"]) for k, v in _header(f)[0].items() if k != "__metadata__"}


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        _ST_DTYPES[_name] = getattr(torch, _attr)


class SafetensorsSource(TensorSource):
    """Reads one tensor at a time with positioned reads into a new buffer (offsets from the
    safetensors header). Not ``safe_open(...).get_slice(k)[:]``: that returns views of a
    private mapping of the whole shard, so the touched pages of the file stay in the resident
    set while any tensor lives, and an in-place write to one is seen by later reads through
    the same handle. Plain reads give memory this process owns (``fresh``) and an honest RSS."""

    fresh = True

    def __init__(self, folder: Path, aliases: dict[str, list[str]], field: str, prefix: str = ""):
        self.field = field
        self.folder = folder
        files = safetensors_files(folder)
        if files is None:
            raise FileNotFoundError(f"no safetensors in {folder}")
        self._meta: dict[str, tuple[Path, int, dict[str, Any]]] = {}
        for f in sorted(set(files.values())):
            header, start = _header(f)
            for k, v in header.items():
                if k != "__metadata__" and files.get(k, f) == f:
                    self._meta[k] = (f, start, v)
        self._map, self.missing = map_names(aliases, self._meta.keys(), prefix)
        self._handles: dict[Path, Any] = {}

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._meta[self._map[name]][2]["shape"])

    def get(self, name: str) -> torch.Tensor:
        key = self._map[name]
        f, data_start, info = self._meta[key]
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ConfigError(ConfigIssue(self.field, f"tensor {key!r} in {f} has unsupported dtype {info['dtype']}"))
        begin, end = info["data_offsets"]
        out = torch.empty(end - begin, dtype=torch.uint8)
        fh = self._handles.get(f)
        if fh is None:
            fh = self._handles[f] = open(f, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        view = memoryview(out.numpy())
        pos, done = data_start + begin, 0
        while done < len(view):
            got = _pread_into(fh, view[done:], pos + done)
            if not got:
                raise ConfigError(ConfigIssue(self.field, f"{f} is truncated (tensor {key!r})"))
            done += got
        return out.view(dtype).reshape(info["shape"])

    def close(self) -> None:
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()


def _pread_into(fh: Any, view: memoryview, pos: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fh.fileno(), [view], pos)
    fh.seek(pos)
    return fh.readinto(view) or 0


def _local_folder(src: str, base_dir: Path | None) -> Path | None:
    from ..models import resolve_source

    path = Path(resolve_source(src, base_dir))
    if path.is_dir():
        return path
    try:  # a hub id: the cached (or downloaded) snapshot's safetensors
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(src), allow_patterns=["*.safetensors", "*.json"]))
    except Exception:  # noqa: BLE001 - any failure falls back to loading the model
        return None


def open_source(
    src: str,
    field: str,
    models: ModelsConfig,
    base_dir: Path | None,
    aliases: dict[str, list[str]],
    prefix: str = "",
    load_dtype: str | None = None,
) -> TensorSource:
    """A tensor source for one configured model (``src`` relative to ``base_dir``; ``field``
    names it in errors): safetensors when every parameter resolves, else the loaded model
    (``search.models.load_checkpoint`` on CPU)."""
    if not models.factory:
        folder = _local_folder(src, base_dir)
        if folder is not None and safetensors_files(folder) is not None:
            s = SafetensorsSource(folder, aliases, field, prefix)
            if not s.missing:
                return s
            log.info("%s: %d parameter names not in the safetensors (e.g. %r); loading the model instead",
                     field, len(s.missing), s.missing[0])
    from ..models import load_checkpoint

    try:
        module = load_checkpoint(src, models, base_dir, device="cpu", dtype=load_dtype)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - report the field, not a traceback
        raise ConfigError(ConfigIssue(field, f"cannot load {src!r}: {type(e).__name__}: {e}")) from None
    return ModuleSource(module, aliases, field, prefix)


def check_source(source: TensorSource, ref_shapes: dict[str, tuple[int, ...]], what: str = "the base") -> None:
    """Raise ConfigError naming the source's field, the first mismatching tensor and both shapes."""
    missing = getattr(source, "missing", [])
    for name, shp in ref_shapes.items():
        if name in missing:
            raise ConfigError(ConfigIssue(source.field, f"not a fine-tune of the base: tensor {name!r} of {what} is missing"))
        got = source.shape(name)
        if tuple(got) != tuple(shp):
            raise ConfigError(
                ConfigIssue(source.field, f"not a fine-tune of the base: tensor {name!r} has shape {tuple(got)} but {what} has {tuple(shp)}")
            )
