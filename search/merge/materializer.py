"""The in-place merge engine a worker builds once: ``Materializer``.

Build (once per worker). Walk the model's ``named_parameters()`` (tied tensors once), read
the base and then each expert *tensor by tensor* (``checkpoint``: memory-light safetensors
reads, sharded checkpoints too; a loaded model only as a fallback), check names and shapes
(a ``ConfigError`` names ``models.experts[i].path``, the first mismatching tensor and both
shapes), compute tau_t = theta_t - theta_0 once (in float32, then stored in the storage
dtype), and keep base + task vectors where the memory plan says (``plan``; docs/memory.md).

* Storage dtype: float32 on CPU (bf16 arithmetic on CPU is slow, docs/facts.md); the model's
  dtype on accelerators. Arithmetic runs in the storage dtype, or in float32 with
  ``merge.accumulate_fp32``; the result is cast into the parameter.
* Each tensor is merged on the device its parameter lives on (``param.device``), so models
  spread over several GPUs with a device_map work as they are.
* Fixed magnitude trims (ties / breadcrumbs with density and gamma not searched) are applied
  once at build: the stored task vectors are already trimmed (and may be stored sparse).
* Searched magnitude trims: |tau| is sorted once per tensor and expert (``SortedMagnitudes``,
  host memory, only the ranks the density bounds can reach), so a trial's threshold is an
  exact lookup instead of a top-k.
* ``merge.method: dare_*`` with ``rescale: l1``: sum |tau_t| per tensor is computed at build.

Apply (per trial). ``apply(x, trial_number)`` turns the coefficient vector into per-group
tables (``CoefficientSpace.values``) and writes every parameter in place from base + task
vectors only: no state of a previous trial is read, so B after A equals B on a fresh model.
Linear methods run ``p.copy_(base); p.add_(tau_t, alpha=c_t)`` chunk by chunk (cache-sized
chunks on CPU, no temporaries). ``last_apply_seconds`` records the time (devices synchronised).

Without a live model (a worker whose every objective runs on a vLLM engine, docs/engines.md).
``release_model()`` frees the model's parameter storage (each parameter keeps its shape, dtype
and device as a one-element stride-0 view). ``merged_tensors(x, n)`` then yields each merged
parameter as a new tensor, in model order, for the caller to copy elsewhere (one tensor alive at
a time); ``weights_on_call(x, n)`` lets the released model run a forward pass of the merge with
each module's own parameters merged just for its call (one module's weights at a time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch

from ..errors import ConfigError, ConfigIssue
from ..seeding import trial_seed
from .checkpoint import DictSource, TensorSource, check_source, open_source, param_aliases
from .kernels import SortedMagnitudes, Workspace, merge_tensor
from .methods import method_info
from .plan import PLAN_KINDS, Plan, choose_plan, expected_seconds, fmt_bytes, plan_bytes

if TYPE_CHECKING:
    from ..config import MergeConfig, ModelsConfig
    from ..space import CoefficientSpace

log = logging.getLogger("search.merge")

SourceLike = Union[dict, TensorSource, Callable[[], TensorSource]]
_PLAN_RANK = {("resident", False): 0, ("sparse", False): 1, ("streamed", False): 2, ("streamed", True): 3}


# ----------------------------------------------------------------------------- storage


@dataclass
class _Sparse:
    """One trimmed task vector of one tensor: its nonzero values plus positions, stored as
    indices (int32/int64) or as a bitmask (uint8, 8 entries per byte), whichever is smaller.
    (On CPU the bitmask's densify is a few times slower than the indices' - masked_scatter_
    takes a slow path there - but the plan exists to save memory; on GPU both are fast.)"""

    values: torch.Tensor
    index: torch.Tensor | None = None
    bits: torch.Tensor | None = None

    @classmethod
    def encode(cls, tau: torch.Tensor, device: torch.device) -> _Sparse:
        n = tau.numel()
        keep = tau != 0
        nnz = int(keep.sum())
        eb = tau.element_size()
        ib = 4 if n < 2**31 else 8
        values = tau[keep].to(device)
        if nnz * (eb + ib) <= (n + 7) // 8 + nnz * eb:
            idx = keep.nonzero().view(-1).to(torch.int32 if ib == 4 else torch.int64)
            return cls(values, index=idx.to(device))
        pad = torch.zeros((n + 7) // 8 * 8, dtype=torch.uint8, device=keep.device)
        pad[:n] = keep
        bits = (pad.view(-1, 8) << torch.arange(8, dtype=torch.uint8, device=keep.device)).sum(1, dtype=torch.uint8)
        return cls(values, bits=bits.to(device))

    def densify(self, out: torch.Tensor) -> torch.Tensor:
        out.zero_()
        if self.index is not None:
            out[self.index] = self.values
        else:
            assert self.bits is not None
            n = out.numel()
            mask = _BIT_TABLE.get(self.bits.device).index_select(0, self.bits.int()).view(-1)[:n]
            out.masked_scatter_(mask, self.values)
        return out

    @property
    def nbytes(self) -> int:
        extra = self.index if self.index is not None else self.bits
        assert extra is not None
        return self.values.numel() * self.values.element_size() + extra.numel() * extra.element_size()


class _BitTable:
    """byte -> its 8 bits as bools (LSB first), per device: unpacking by table lookup was
    measured ~3x faster on CPU than shifting and masking."""

    def __init__(self) -> None:
        self._by_dev: dict[torch.device, torch.Tensor] = {}

    def get(self, device: torch.device) -> torch.Tensor:
        t = self._by_dev.get(device)
        if t is None:
            t = ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1).bool()
            t = self._by_dev[device] = t.to(device)
        return t


_BIT_TABLE = _BitTable()


@dataclass
class _Entry:
    """One merged parameter and its stored base / task vectors (flat)."""

    name: str
    param: torch.nn.Parameter
    group: int
    numel: int
    device: torch.device
    storage: torch.dtype
    work: torch.dtype
    base: torch.Tensor | None = None
    taus: list[torch.Tensor] = field(default_factory=list)
    sparse: list[_Sparse] = field(default_factory=list)
    mags: list[SortedMagnitudes] = field(default_factory=list)
    l1: list[float] | None = None
    shape: tuple[int, ...] = ()
    dtype: torch.dtype = torch.float32

    def kth(self, t: int, k: int) -> float:
        return self.mags[t].kth_largest(k)


class _HostArena:
    """Host (pinned when CUDA is used) storage for one copy of the merged tensors: one
    allocation per dtype, carved into flat views. Per-tensor pinned allocations would each be
    rounded up to a power of two by PyTorch's caching host allocator (up to 2x the memory)."""

    def __init__(self, entries: Sequence[_Entry], pin: bool):
        totals: dict[torch.dtype, int] = {}
        self.offsets: dict[str, int] = {}
        for e in entries:
            self.offsets[e.name] = totals.get(e.storage, 0)
            totals[e.storage] = totals.get(e.storage, 0) + e.numel
        self.bufs = {dt: torch.empty(n, dtype=dt, device="cpu", pin_memory=pin) for dt, n in totals.items()}

    def put(self, e: _Entry, x: torch.Tensor) -> torch.Tensor:
        off = self.offsets[e.name]
        view = self.bufs[e.storage][off : off + e.numel]
        view.copy_(x.reshape(-1))
        return view


def _placeholder(e: _Entry) -> torch.Tensor:
    """A parameter's stand-in once released: its shape, dtype and device, one element of storage."""
    return torch.zeros((), dtype=e.dtype, device=e.device).expand(e.shape)


_TRIM_AFTER = 1 << 20  # elements: give freed heap pages back after tensors at least this large


def _release_freed_memory() -> None:
    """Best effort: return freed heap pages to the OS (glibc malloc_trim). Start-up frees a
    few tensor-sized temporaries per tensor; glibc keeps them in its heap, which fragments
    around the long-lived task vectors and inflates the resident set and its peak."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        try:
            import ctypes
            import ctypes.util

            name = ctypes.util.find_library("c")
            if name:
                fn = getattr(ctypes.CDLL(name), "malloc_trim", None)
                _MALLOC_TRIM = fn if fn is not None else False
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def _sync(devices: Sequence[torch.device]) -> None:
    for d in devices:
        if d.type == "cuda":
            torch.cuda.synchronize(d)


# ----------------------------------------------------------------------------- materializer


class Materializer:
    """Writes merged weights into a model's parameters in place, trial after trial.

    ``base``: a dict name -> tensor, a ``TensorSource``, or a callable returning one;
    ``experts``: a list of the same (opened one at a time, in order). Names are the model's
    parameter names (aliases of tied tensors and the ``base_model_prefix`` are understood).
    ``plan``: ``auto`` / ``resident`` / ``streamed`` / ``sparse`` or a ``Plan``.
    ``storage_dtype``: override the storage dtype (float32 on CPU, the model's elsewhere).
    ``free_bytes`` / ``host_is_device``: override the measured free memory and whether host
    memory is the merge device's (for planning tests; defaults measure the real machine).
    ``reserve_bytes``: free memory another part of the worker will take (a vLLM engine's
    share, docs/memory.md), subtracted from the free memory; the plan chooses from the rest.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        base: SourceLike,
        experts: Sequence[SourceLike],
        space: CoefficientSpace,
        method: str,
        options: dict[str, Any] | None = None,
        run_seed: int = 0,
        *,
        plan: str | Plan = "auto",
        memory_budget_gb: float | None = None,
        accumulate_fp32: bool = False,
        storage_dtype: torch.dtype | None = None,
        chunk: int | None = None,
        free_bytes: int | None = None,
        host_is_device: bool | None = None,
        expert_fields: Sequence[str] | None = None,
        reserve_bytes: int = 0,
    ):
        t0 = time.perf_counter()
        self.reserve_bytes = int(reserve_bytes)
        self.model = model
        self.space = space
        self.method = method
        self.info = method_info(method)
        self.options = self.info.resolve_options(options)
        self.run_seed = int(run_seed)
        self.accumulate_fp32 = bool(accumulate_fp32)
        self.chunk = chunk
        self.K = len(experts)
        if self.K != len(space.experts):
            raise ValueError(f"{self.K} experts given but the coefficient space has {len(space.experts)}")
        self._params = list(self.info.params)
        self.last_apply_seconds: float | None = None
        self._ws = Workspace()  # kernel scratch, reused across tensors and trials
        self.apply_count = 0
        self.released = False  # release_model() freed the model's parameters (engine: vllm)
        self._aliases = param_aliases(model)
        self._prefix = getattr(model, "base_model_prefix", "") or ""
        fields = list(expert_fields) if expert_fields else [f"experts[{i}]" for i in range(self.K)]

        # trims: fixed (applied once), searched (sorted magnitudes), DARE l1 norms
        tps = self.info.trim
        self.trim_searched = any(p in space.searched for p in tps)
        self.pretrim = self.info.magnitude_trim and not self.trim_searched and bool(tps)
        self.need_sorted = self.info.magnitude_trim and self.trim_searched
        self.need_l1 = self.info.needs_l1(self.options)
        self._fixed_trim = {p: float(space.fixed[p]) for p in tps if p in space.fixed}
        self._bounds = self._search_bounds()

        # entries
        self.entries: list[_Entry] = []
        for name, p in model.named_parameters():
            if name not in space.tensor_group:
                raise ValueError(f"parameter {name!r} is not in the coefficient space; build it from this model's parameter names")
            dev = p.device
            st = storage_dtype or (torch.float32 if dev.type == "cpu" else p.dtype)
            work = torch.float32 if (self.accumulate_fp32 or st == torch.float32) else st
            self.entries.append(_Entry(name, p, space.tensor_group[name], p.numel(), dev, st, work,
                                       shape=tuple(p.shape), dtype=p.dtype))
        self.devices = sorted({e.device for e in self.entries}, key=str)
        self._cuda = any(d.type == "cuda" for d in self.devices)

        self.plan = self._choose(plan, memory_budget_gb, free_bytes, host_is_device)
        self._load(base, experts, fields)
        self.build_seconds = time.perf_counter() - t0
        self._log_plan(time.perf_counter() - t0)

    # ---------------------------------------------------------------- planning
    def _search_bounds(self) -> dict[str, tuple[float, float]]:
        sp = self.space
        G, E, P = len(sp.cgroups), len(sp.experts), len(sp.searched)  # interpolated knots stay inside
        out: dict[str, tuple[float, float]] = {}
        if P:
            lo = sp.lower.reshape(G, E, P)
            hi = sp.upper.reshape(G, E, P)
            for j, p in enumerate(sp.searched):
                out[p] = (float(lo[:, :, j].min()), float(hi[:, :, j].max()))
        return out

    def _sorted_ranks(self, n: int) -> tuple[int, int]:
        return self.info.rank_range(n, self._bounds)

    def _choose(self, plan: str | Plan, budget_gb: float | None, free_override: int | None, hid: bool | None) -> Plan:
        if isinstance(plan, Plan):
            return plan
        if plan != "auto" and plan not in PLAN_KINDS:
            raise ConfigError(ConfigIssue("merge.plan", f"unknown plan {plan!r}; use auto, resident, streamed or sparse"))
        budget = int(budget_gb * 2**30) if budget_gb is not None else None
        density = self.info.kept_fraction(self._fixed_trim)
        best: Plan | None = None
        for dev in self.devices:
            ents = [e for e in self.entries if e.device == dev]
            eb = ents[0].storage.itemsize
            mbytes = sum(e.numel * eb for e in ents)
            tmax = max(e.numel * eb for e in ents)
            sorted_b = 0
            if self.need_sorted:
                for e in ents:
                    k0, k1 = self._sorted_ranks(e.numel)
                    sorted_b += max(0, k1 - k0 + 1) * eb * self.K
            chunk = self.chunk or ((1 << 24) if dev.type != "cpu" else (1 << 18))
            n_scratch = min(chunk, max(e.numel for e in ents))
            heavy = bool(self.info.trim)  # masks + election buffers
            scratch = (self.K + 8) * n_scratch * 4 if heavy else n_scratch * 4
            free = max(0, (free_override if free_override is not None else _free_bytes(dev)) - self.reserve_bytes)
            host_dev = (dev.type == "cpu") if hid is None else hid
            try:
                p = choose_plan(
                    mbytes, self.K, free, budget, self.method, self.trim_searched,
                    density=density, elem_bytes=eb, max_tensor_bytes=tmax, sorted_bytes=sorted_b,
                    host_is_device=host_dev, scratch_bytes=scratch, requested=plan,
                )
            except ValueError as err:
                raise ConfigError(ConfigIssue("merge.plan", str(err))) from None
            if best is None or _PLAN_RANK[(p.kind, p.stream_base)] > _PLAN_RANK[(best.kind, best.stream_base)]:
                best = p
        assert best is not None
        return best

    # ---------------------------------------------------------------- building
    def _open(self, src: SourceLike, field_name: str) -> TensorSource:
        if isinstance(src, dict):
            return DictSource(src, self._aliases, field_name, self._prefix)
        if isinstance(src, TensorSource):
            return src
        return src()

    def _load(self, base: SourceLike, experts: Sequence[SourceLike], fields: list[str]) -> None:
        plan = self.plan
        pin = torch.cuda.is_available() and self._cuda
        ref = {e.name: tuple(e.param.shape) for e in self.entries}
        stream_base = plan.kind == "streamed" and plan.stream_base

        bsrc = self._open(base, "models.base")
        check_source(bsrc, ref, "the model")
        base_arena = _HostArena(self.entries, pin) if stream_base else None
        for e in self.entries:
            b = bsrc.get(e.name).reshape(-1)
            if base_arena is not None:
                e.base = base_arena.put(e, b)
            else:  # never alias a caller's tensor (it may be the model's own parameter)
                e.base = b.to(device=e.device, dtype=e.storage, copy=not bsrc.fresh)
            del b
        bsrc.close()
        del bsrc

        for t, src in enumerate(experts):
            s = self._open(src, fields[t])
            check_source(s, ref)
            arena = _HostArena(self.entries, pin) if plan.kind == "streamed" else None
            for e in self.entries:
                assert e.base is not None
                x = s.get(e.name).reshape(-1)
                tau = x.to(device=e.base.device, dtype=torch.float32, copy=not s.fresh)
                del x
                tau.sub_(e.base)
                tau = tau.to(e.storage)
                if self.pretrim:
                    m = self.info.fixed_trim_mask(tau, self._fixed_trim)
                    if m is not None:
                        tau.masked_fill_(m.logical_not_(), 0)
                        del m
                if self.need_l1:
                    if e.l1 is None:
                        e.l1 = []
                    e.l1.append(float(tau.abs().sum(dtype=torch.float64)))
                if self.need_sorted:
                    k0, k1 = self._sorted_ranks(e.numel)
                    e.mags.append(SortedMagnitudes(tau, k0, k1))
                if plan.kind == "resident":
                    e.taus.append(tau if tau.device == e.device else tau.to(e.device))
                elif plan.kind == "sparse":
                    e.sparse.append(_Sparse.encode(tau, e.device))
                else:
                    assert arena is not None
                    e.taus.append(arena.put(e, tau))
                del tau
                if e.numel >= _TRIM_AFTER:
                    _release_freed_memory()
            s.close()
            del s
        _release_freed_memory()

        if plan.kind in ("sparse", "streamed"):
            self._alloc_buffers()

    def _alloc_buffers(self) -> None:
        """Per device: scatter buffers (sparse) or two alternating slots (streamed)."""
        self._bufs: dict[torch.device, Any] = {}
        stream_base = self.plan.stream_base
        for dev in self.devices:
            ents = [e for e in self.entries if e.device == dev]
            n = max(e.numel for e in ents)
            st = ents[0].storage
            if self.plan.kind == "sparse":
                self._bufs[dev] = [torch.empty(n, dtype=st, device=dev) for _ in range(self.K)]
            else:
                slots = []
                for _ in range(2):
                    slots.append({
                        "taus": [torch.empty(n, dtype=st, device=dev) for _ in range(self.K)],
                        "base": torch.empty(n, dtype=st, device=dev) if stream_base else None,
                    })
                self._bufs[dev] = slots
        if self.plan.kind == "streamed" and self._cuda:
            self._streams = {d: torch.cuda.Stream(d) for d in self.devices if d.type == "cuda"}
            self._ready = {(d, i): torch.cuda.Event() for d in self.devices if d.type == "cuda" for i in range(2)}
            self._free = {(d, i): torch.cuda.Event() for d in self.devices if d.type == "cuda" for i in range(2)}

    # ---------------------------------------------------------------- reporting
    def nbytes(self) -> dict[str, int]:
        """Actual bytes held, per part (device = the merge devices; host = CPU copies on GPU runs)."""
        out = {"base": 0, "task_vectors": 0, "sparse_task_vectors": 0, "sorted_magnitudes": 0, "buffers": 0,
               "kernel_scratch": 0}
        for e in self.entries:
            if e.base is not None:
                out["base"] += e.base.numel() * e.base.element_size()
            out["task_vectors"] += sum(t.numel() * t.element_size() for t in e.taus)
            out["sparse_task_vectors"] += sum(s.nbytes for s in e.sparse)
            out["sorted_magnitudes"] += sum(m.nbytes for m in e.mags)
        for v in getattr(self, "_bufs", {}).values():
            if self.plan.kind == "sparse":
                tensors = list(v)
            else:
                tensors = [t for slot in v for t in slot["taus"] + [slot["base"]] if t is not None]
            out["buffers"] += sum(t.numel() * t.element_size() for t in tensors)
        out["kernel_scratch"] = self._ws.nbytes
        return out

    def model_bytes(self) -> int:
        return sum(e.numel * e.storage.itemsize for e in self.entries)

    def _calibrate(self) -> tuple[float, float | None]:
        """Seconds per byte of a device copy (and of a pinned host->device copy on CUDA)."""
        dev = self.devices[0]
        n = max(1, min(16 * 2**20, max(e.numel for e in self.entries)))
        a = torch.empty(n, dtype=torch.float32, device=dev)
        a.fill_(1.0)
        b = torch.empty_like(a)
        b.copy_(a)
        _sync([dev])
        t0 = time.perf_counter()
        for _ in range(3):
            b.copy_(a)
        _sync([dev])
        copy = (time.perf_counter() - t0) / (3 * 4 * n)
        h2d = None
        if dev.type == "cuda":
            h = torch.empty(n, dtype=torch.float32, pin_memory=True)
            b.copy_(h, non_blocking=True)
            _sync([dev])
            t0 = time.perf_counter()
            for _ in range(3):
                b.copy_(h, non_blocking=True)
            _sync([dev])
            h2d = (time.perf_counter() - t0) / (3 * 4 * n)
        return copy, h2d

    def _log_plan(self, build_s: float) -> None:
        try:
            copy, h2d = self._calibrate()
            density = self.info.kept_fraction(self._fixed_trim)
            est = expected_seconds(self.plan, self.model_bytes(), self.K, copy, h2d, density)
        except Exception:  # noqa: BLE001 - the estimate is only informative
            est = float("nan")
        parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in self.nbytes().items() if v)
        level = logging.INFO if self.plan.fits else logging.WARNING
        log.log(
            level,
            "merge plan %s on %s (%s): %s; held: %s; model %s; expected materialization ~%.3fs (built in %.1fs)",
            self.plan.kind + ("+streamed base" if self.plan.stream_base else ""),
            ", ".join(map(str, self.devices)),
            self.plan.reason,
            self.plan.describe(),
            parts,
            fmt_bytes(self.model_bytes()),
            est,
            build_s,
        )
        self.expected_apply_seconds = est

    # ---------------------------------------------------------------- per trial
    def _tensors(self) -> Iterator[tuple[_Entry, torch.Tensor, list[torch.Tensor]]]:
        kind = self.plan.kind
        if kind == "resident":
            for e in self.entries:
                assert e.base is not None
                yield e, e.base, e.taus
        elif kind == "sparse":
            for e in self.entries:
                assert e.base is not None
                bufs = self._bufs[e.device]
                yield e, e.base, [sp.densify(bufs[t][: e.numel]) for t, sp in enumerate(e.sparse)]
        else:
            yield from self._streamed()

    def _streamed(self) -> Iterator[tuple[_Entry, torch.Tensor, list[torch.Tensor]]]:
        """Double buffering: the copy of tensor j+1 (side stream) overlaps the merge of j."""
        ents = self.entries
        counters = {d: 0 for d in self.devices}
        sb = self.plan.stream_base

        def issue(e: _Entry) -> tuple[torch.device, int]:
            d = e.device
            i = counters[d] % 2
            counters[d] += 1
            slot = self._bufs[d][i]
            n = e.numel
            if d.type == "cuda":
                st = self._streams[d]
                with torch.cuda.stream(st):
                    st.wait_event(self._free[(d, i)])
                    for t in range(self.K):
                        slot["taus"][t][:n].copy_(e.taus[t], non_blocking=True)
                    if sb:
                        slot["base"][:n].copy_(e.base, non_blocking=True)
                    self._ready[(d, i)].record(st)
            else:
                for t in range(self.K):
                    slot["taus"][t][:n].copy_(e.taus[t])
                if sb:
                    slot["base"][:n].copy_(e.base)
            return d, i

        if not ents:
            return
        pending = issue(ents[0])
        for j, e in enumerate(ents):
            cur = pending
            if j + 1 < len(ents):
                pending = issue(ents[j + 1])
            d, i = cur
            if d.type == "cuda":
                torch.cuda.current_stream(d).wait_event(self._ready[cur])
            slot = self._bufs[d][i]
            n = e.numel
            base = slot["base"][:n] if sb else e.base
            assert base is not None
            yield e, base, [b[:n] for b in slot["taus"]]
            if d.type == "cuda":
                self._free[cur].record(torch.cuda.current_stream(d))

    def _tables(self, x: np.ndarray, trial_number: int) -> tuple[list[dict[str, float]], int]:
        """Per-group parameter rows and the trial seed of coefficient vector ``x``."""
        vals = self.space.values(np.asarray(x, dtype=np.float64))
        rows = [{p: vals[p][g] for p in self._params} for g in range(len(self.space.groups))]
        return rows, trial_seed(self.run_seed, int(trial_number))

    def _merge_into(self, out: torch.Tensor, e: _Entry, base: torch.Tensor, taus: list[torch.Tensor],
                    rows: list[dict[str, float]], seed: int) -> None:
        tp = self.info.plan(
            self.options, rows[e.group], e.numel,
            name=e.name, seed=seed, kth=e.kth if e.mags else None, pretrimmed=self.pretrim, l1=e.l1,
        )
        merge_tensor(out, base, taus, tp, work_dtype=e.work, chunk=self.chunk, ws=self._ws, kernel=self.info.kernel)

    def _refuse_released(self, what: str) -> None:
        if self.released:
            raise RuntimeError(f"Materializer.{what}: the model's parameters were released (release_model); "
                               "use merged_tensors() or weights_on_call()")

    def apply(self, x: np.ndarray, trial_number: int) -> None:
        """Write the merge for coefficient vector ``x`` of trial ``trial_number`` into the model."""
        self._refuse_released("apply")
        t0 = time.perf_counter()
        rows, seed = self._tables(x, trial_number)
        with torch.no_grad():
            for e, base, taus in self._tensors():
                self._merge_into(e.param.data, e, base, taus, rows, seed)
        _sync(self.devices)
        self.last_apply_seconds = time.perf_counter() - t0
        self.apply_count += 1

    def restore_base(self) -> None:
        """Write the base weights back into the model."""
        self._refuse_released("restore_base")
        with torch.no_grad():
            for e in self.entries:
                assert e.base is not None
                e.param.data.copy_(e.base.view(e.param.shape), non_blocking=e.base.is_pinned())
        _sync(self.devices)

    # ---------------------------------------------------------------- without a live model
    def release_model(self) -> None:
        """Free the model's parameter storage: each parameter becomes a one-element stride-0
        view with its shape, dtype and device, so the module keeps its structure (config,
        buffers, forward) but holds no weights. Afterwards only ``merged_tensors`` and
        ``weights_on_call`` merge; ``apply`` and ``restore_base`` refuse."""
        with torch.no_grad():
            for e in self.entries:
                e.param.data = _placeholder(e)
        self.released = True
        _release_freed_memory()
        for d in self.devices:
            if d.type == "cuda":
                torch.cuda.empty_cache()
                break

    def try_release_model(self, forward: Callable[[], torch.Tensor], atol: float = 1e-5) -> str | None:
        """Release the model only if ``forward()`` (a forward pass of ``self.model`` on fixed
        inputs) gives the live model's output again with the base weights merged on call and
        reaches every parameter; otherwise keep the model (holding the base) and return why."""
        with torch.no_grad():
            live = forward().float()
        self.release_model()
        with self.weights_on_call(None) as seen:  # no_grad inside
            on_call = forward().float()
        missing = [e.name for e in self.entries if e.name not in seen]
        diff = float((on_call - live).abs().max()) if on_call.shape == live.shape else float("inf")
        if missing:
            why = f"parameters read outside their modules' calls: {', '.join(missing[:3])}"
        elif not diff <= atol:
            why = f"outputs differ by {diff:.3g}"
        else:
            return None
        self.reattach_model()
        return why

    def reattach_model(self) -> None:
        """Undo ``release_model``: give the model its storage back, holding the base weights."""
        with torch.no_grad():
            for e in self.entries:
                e.param.data = torch.empty(e.shape, dtype=e.dtype, device=e.device)
        self.released = False
        self.restore_base()

    def merged_tensors(self, x: np.ndarray, trial_number: int) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (parameter name, merged tensor) for every parameter, in model order, each a new
        tensor with the parameter's shape and dtype on its device; the model is not written.
        Bit-identical to what ``apply`` writes. The caller copies each one away before asking
        for the next (one merged tensor alive at a time). ``last_apply_seconds`` is set to the
        time spent merging (devices synchronised per tensor), not the caller's."""
        rows, seed = self._tables(x, trial_number)
        spent = 0.0
        with torch.no_grad():
            for e, base, taus in self._tensors():
                t0 = time.perf_counter()
                out = torch.empty(e.shape, dtype=e.dtype, device=e.device)
                self._merge_into(out, e, base, taus, rows, seed)
                _sync([e.device])
                spent += time.perf_counter() - t0
                yield e.name, out
                del out
        self.last_apply_seconds = spent
        self.apply_count += 1

    def _merged_entry(self, e: _Entry, rows: list[dict[str, float]], seed: int) -> torch.Tensor:
        """One merged parameter, computed on its own (any plan)."""
        assert e.base is not None
        kind = self.plan.kind
        if kind == "resident":
            base, taus = e.base, e.taus
        elif kind == "sparse":
            bufs = self._bufs[e.device]
            base, taus = e.base, [sp.densify(bufs[t][: e.numel]) for t, sp in enumerate(e.sparse)]
        else:  # streamed: copy this tensor's stored vectors to the device now
            base = e.base.to(e.device) if e.base.device != e.device else e.base
            taus = [t.to(e.device) for t in e.taus]
        out = torch.empty(e.shape, dtype=e.dtype, device=e.device)
        self._merge_into(out, e, base, taus, rows, seed)
        return out

    @contextmanager
    def weights_on_call(self, x: np.ndarray | None, trial_number: int = 0) -> Iterator[set[str]]:
        """Within the block, every module of the released model gets its own parameters merged
        (for ``x``; the base weights when ``x`` is None) just before its forward call and gives
        them back just after: a forward pass of the merge holding one module's weights at a
        time. Yields the set of parameter names merged so far, so a caller can check that the
        forward pass reached every parameter (a module that reads another module's weights
        outside that module's call would not be covered)."""
        if not self.released:
            raise RuntimeError("Materializer.weights_on_call: release_model() first (the live model holds the weights)")
        by_id = {id(e.param): e for e in self.entries}
        rows, seed = self._tables(x, trial_number) if x is not None else ([], 0)
        seen: set[str] = set()
        handles = []

        def before(module: torch.nn.Module, _args: Any) -> None:
            for p in module.parameters(recurse=False):
                e = by_id.get(id(p))
                if e is None:
                    continue
                assert e.base is not None
                if x is None:
                    p.data = e.base.view(e.shape).to(dtype=e.dtype, device=e.device)
                else:
                    p.data = self._merged_entry(e, rows, seed)
                seen.add(e.name)

        def after(module: torch.nn.Module, _args: Any, _out: Any) -> None:
            for p in module.parameters(recurse=False):
                e = by_id.get(id(p))
                if e is not None:
                    p.data = _placeholder(e)

        for m in self.model.modules():
            if any(id(p) in by_id for p in m.parameters(recurse=False)):
                handles.append(m.register_forward_pre_hook(before))
                handles.append(m.register_forward_hook(after))
        try:
            with torch.no_grad():
                yield seen
        finally:
            for h in handles:
                h.remove()
            for e in self.entries:  # a forward that raised midway leaves no weights behind
                e.param.data = _placeholder(e)

    def describe(self) -> str:
        return f"{self.method} x {self.K} experts, plan {self.plan.describe()}"


# ----------------------------------------------------------------------------- from a config


def _precheck(models: ModelsConfig, base_dir: Path | None, model: torch.nn.Module) -> None:
    """Shapes from safetensors headers before any tensor is read (fast, precise errors)."""
    from ..models import resolve_source
    from .checkpoint import SafetensorsSource, safetensors_files

    if models.factory:
        return
    aliases = param_aliases(model)
    prefix = getattr(model, "base_model_prefix", "") or ""
    ref = {n: tuple(p.shape) for n, p in model.named_parameters()}
    fields = [("models.base", models.base)] + [(f"models.experts[{i}].path", e.path) for i, e in enumerate(models.experts)]
    for field_name, src in fields:
        p = Path(resolve_source(src, base_dir))
        if p.is_dir() and safetensors_files(p) is not None:
            s = SafetensorsSource(p, aliases, field_name, prefix)
            if not s.missing:
                check_source(s, ref, "the model" if field_name == "models.base" else "the base")


def build_materializer(merge: MergeConfig, models: ModelsConfig, model: torch.nn.Module, space: CoefficientSpace,
                       device: str | torch.device = "cpu", *, base_dir: Path | None = None, seed: int = 0,
                       reserve_bytes: int = 0) -> Materializer:
    """The worker's materializer for the ``merge`` settings over ``models`` (paths relative to
    ``base_dir``) and the loaded base ``model``; ``seed`` is the run's (random masks).

    Tensors are merged on each parameter's own device (``device`` is the worker's nominal
    device; only a model spread with a device_map differs from it). ``reserve_bytes``: device
    memory something else of the worker will take (a vLLM engine), not free for the plan."""
    info = method_info(merge.method)
    options = {k: v for k, v in merge.params.items() if k in info.options}
    aliases = param_aliases(model)
    prefix = getattr(model, "base_model_prefix", "") or ""
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    load_dtype = "float32" if on_cpu else models.dtype
    _precheck(models, base_dir, model)

    def opener(src: str, field_name: str) -> Callable[[], TensorSource]:
        return lambda: open_source(src, field_name, models, base_dir, aliases, prefix, load_dtype)

    fields = [f"models.experts[{i}].path" for i in range(len(models.experts))]
    devs = {str(p.device) for p in model.parameters()}
    if len(devs) == 1 and str(torch.device(device)) not in devs and not (str(device) == "cuda" and next(iter(devs)).startswith("cuda")):
        log.info("model parameters live on %s (worker device %s); merging there", next(iter(devs)), device)
    return Materializer(
        model,
        opener(models.base, "models.base"),
        [opener(e.path, f) for e, f in zip(models.experts, fields, strict=True)],
        space,
        merge.method,
        options,
        seed,
        plan=merge.plan,
        memory_budget_gb=merge.memory_budget_gb,
        accumulate_fp32=merge.accumulate_fp32,
        expert_fields=fields,
        reserve_bytes=reserve_bytes,
    )


__all__ = ["Materializer", "build_materializer", "Plan", "plan_bytes"]
