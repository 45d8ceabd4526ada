"""Merge kernels: the per-tensor arithmetic the merge methods (``search.merge.methods``) run.

A method turns a trial's coefficients into a ``TensorPlan`` (per-expert coefficients,
magnitude bounds, DARE keys; ``search.merge.tensorplan``); ``merge_tensor`` runs it over flat
chunks of the tensor with ``merge_chunk`` (copy + K adds, or the TIES election when
``elect``) or the method's own ``kernel``. The formulas are in each method's module docstring;
the DARE mask hash is defined in ``methods/dare_linear.py``.

Exactness. Magnitude thresholds are the exact k-th largest |tau| in the storage dtype (from a
sort done once at worker start, see ``SortedMagnitudes``), compared with ``>=``, so the kept
set equals a top-k reference's (up to ties in |tau|, where ``>=`` keeps all tied entries,
as mergekit's ties does, docs/facts.md). Fixed trims are applied once at start (the stored
task vector is already trimmed), which yields the same tensors as trimming per trial.

The kernels run on flat chunks of a tensor (``merge_tensor``): every formula is elementwise
given per-tensor scalars (thresholds, weights, DARE scales), so chunking changes nothing but
cache behaviour and the size of temporaries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .methods import method_info
from .tensorplan import TensorPlan

# ----------------------------------------------------------------------------- DARE masks


def _s32(c: int) -> int:
    """An unsigned 32-bit constant as the signed int32 with the same bits."""
    return c - (1 << 32) if c >= (1 << 31) else c


_GOLDEN32 = _s32(0x9E3779B1)
_M1 = _s32(0x85EBCA6B)
_M2 = _s32(0xC2B2AE35)
_ARANGE_CACHE: dict[tuple[str, int], torch.Tensor] = {}


def _arange32(n: int, device: torch.device) -> torch.Tensor:
    key = (str(device), n)
    t = _ARANGE_CACHE.get(key)
    if t is None:
        if len(_ARANGE_CACHE) > 16:
            _ARANGE_CACHE.clear()
        t = _ARANGE_CACHE[key] = torch.arange(n, dtype=torch.int32, device=device)
    return t


class Workspace:
    """Reusable scratch buffers for the kernels (no allocation per chunk in the hot loop)."""

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, name: str, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (name, dtype, device)
        b = self._bufs.get(key)
        if b is None or b.numel() < n:
            b = self._bufs[key] = torch.empty(n, dtype=dtype, device=device)
        return b[:n]

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._bufs.values())


def dare_hash(key: int, start: int, n: int, device: torch.device | str = "cpu", ws: Workspace | None = None) -> torch.Tensor:
    """31-bit hashes (int32 tensor) of elements start..start+n-1 of a tensor:
    fmix32(i * 0x9E3779B1 + key) (murmur3's finaliser, all mod 2**32), top bit dropped.
    Wrapping int32 arithmetic; the same bits on any device. Indices wrap at 2**32."""
    dev = torch.device(device)
    ws = ws or Workspace()
    z = ws.get("hash", n, torch.int32, dev)
    tmp = ws.get("hash_tmp", n, torch.int32, dev)
    torch.add(_arange32(n, dev), _s32(start & 0xFFFFFFFF), out=z)
    z.mul_(_GOLDEN32).add_(_s32(key & 0xFFFFFFFF))
    for shift, mult in ((16, _M1), (13, _M2), (16, None)):
        torch.bitwise_right_shift(z, shift, out=tmp).bitwise_and_((1 << (32 - shift)) - 1)  # logical shift
        z.bitwise_xor_(tmp)
        if mult is not None:
            z.mul_(mult)
    return z.bitwise_and_(0x7FFFFFFF)


def dare_mask(key: int, thresh: int, start: int, n: int, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32, ws: Workspace | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask of elements start..start+n-1 as 1.0 / 0.0 in ``dtype``."""
    h = dare_hash(key, start, n, device, ws)
    return torch.lt(h, thresh, out=out if out is not None else torch.empty(n, dtype=dtype, device=h.device))


# ----------------------------------------------------------------------------- magnitudes


class SortedMagnitudes:
    """|tau| of one tensor sorted once at worker start, restricted to the ranks a search can ask.

    ``kth_largest(k)`` is an exact lookup (the k-th largest |tau| in the storage dtype), so a
    searched density costs no top-k per trial. Kept in host memory (numpy, or a CPU torch
    tensor for bfloat16), ranks ``k_min..k_max`` only.
    """

    def __init__(self, tau: torch.Tensor, k_min: int = 1, k_max: int | None = None):
        n = tau.numel()
        self.n = n
        k_max = n if k_max is None else k_max
        self.k_min, self.k_max = max(1, int(k_min)), min(n, int(k_max))
        if self.k_min > self.k_max:
            self.k_min, self.k_max = 1, 0
            self.values: Any = np.empty(0, dtype=np.float32)
            self.offset = n
            return
        flat = tau.detach().reshape(-1)
        lo, hi = n - self.k_max, n - self.k_min + 1  # ascending index of the k-th largest = n - k
        self.offset = lo
        if flat.dtype in (torch.float32, torch.float64, torch.float16):
            a = np.abs(flat.cpu().numpy())  # a new array: sorted in place below
            a.sort()
            self.values = a if (lo == 0 and hi == n) else a[lo:hi].copy()
        else:  # bfloat16 and friends: numpy has no such dtype; sort with torch on the tensor's device
            self.values = torch.sort(flat.abs()).values[lo:hi].cpu().clone()

    @property
    def nbytes(self) -> int:
        v = self.values
        return int(v.nbytes if isinstance(v, np.ndarray) else v.numel() * v.element_size())

    def kth_largest(self, k: int) -> float:
        if not self.k_min <= k <= self.k_max:
            raise IndexError(f"rank {k} outside the stored ranks {self.k_min}..{self.k_max}")
        return float(self.values[self.n - k - self.offset])


def exact_kth_largest(a: torch.Tensor, k: int) -> float:
    """The k-th largest value of a flat tensor (1 <= k <= numel), exactly.

    float32/float64 on CPU: numpy's partition on one copy (no int64 index tensor, unlike
    torch.kthvalue); elsewhere torch.kthvalue (bf16/fp16 are widened, which is exact)."""
    n = a.numel()
    x = a.detach().reshape(-1)
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        c = x.numpy().copy()
        c.partition(n - k)
        return float(c[n - k])
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return float(torch.kthvalue(x, n - k + 1).values)


def float_below(x: float, dtype: torch.dtype) -> float:
    """The largest value of ``dtype`` below ``x`` (``x`` >= 0 and representable in dtype), so
    that |v| >= x <=> |v| > float_below(x) for every v of that dtype; -1.0 for x <= 0."""
    if x <= 0.0:
        return -1.0
    if dtype == torch.bfloat16:  # bf16 = the top 16 bits of a float32
        bits = int(np.array(x, dtype=np.float32).view(np.uint32)) >> 16
        return float(np.array((bits - 1) << 16, dtype=np.uint32).view(np.float32))
    npdt = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}[dtype]
    return float(np.nextafter(npdt(x), npdt(-np.inf)))


def magnitude_trim_into(tau: torch.Tensor, lo: float | None, hi: float | None, out: torch.Tensor,
                        tmp: torch.Tensor | None = None) -> torch.Tensor:
    """``out`` = tau where lo <= |tau| < hi, else 0 (None = unbounded side), in tau's dtype.
    One ``hardshrink`` per bound (keeps |v| > lambda) at float_below(bound): exact, and a
    third of the cost of abs + compare + multiply."""
    dt = tau.dtype
    if lo is not None:
        torch.ops.aten.hardshrink.out(tau, float_below(lo, dt), out=out)
    else:
        out.copy_(tau)
    if hi is not None:
        t2 = tmp if tmp is not None else torch.empty_like(tau)
        out.sub_(torch.ops.aten.hardshrink.out(tau, float_below(hi, dt), out=t2))
    return out


# ----------------------------------------------------------------------------- kernels


def _trimmed(tau: torch.Tensor, tp: TensorPlan, t: int, start: int, work: torch.dtype, ws: Workspace, name: str) -> torch.Tensor:
    """Expert t's chunk with trimmed / dropped entries zeroed, in the work dtype (workspace
    buffer ``name``). Float-only: bool tensors take slow paths on CPU (torch.where and
    float x bool were measured 40-70x slower than float ops); masks are 1.0 / 0.0 floats."""
    n, dev = tau.numel(), tau.device
    lo, hi, d = tp.lo[t], tp.hi[t], tp.dare[t]
    y = ws.get(name, n, work, dev)
    if lo is not None or hi is not None:
        if tau.dtype == work:
            magnitude_trim_into(tau, lo, hi, y, ws.get("trim_tmp", n, work, dev) if hi is not None else None)
        else:  # trim in the storage dtype (thresholds are its values), then widen (exact)
            yy = magnitude_trim_into(tau, lo, hi, ws.get("trim_st", n, tau.dtype, dev),
                                     ws.get("trim_tmp_st", n, tau.dtype, dev) if hi is not None else None)
            y.copy_(yy)
    else:
        y.copy_(tau)
    if d is not None:
        y.mul_(dare_mask(d[0], d[1], start, n, dev, work, ws, out=ws.get("mask", n, work, dev)))
    return y


L1_BLOCK = 1 << 20  # fixed, aligned blocks: the kept-L1 sum does not depend on the kernel chunk


def dare_l1_scales(taus: Sequence[torch.Tensor], tp: TensorPlan, chunk: int | None = None, ws: Workspace | None = None) -> None:
    """Fold the L1-matching DARE scales into ``tp.coeffs`` (a pass over the masks). Sums run
    in float64 over fixed blocks of ``L1_BLOCK`` elements, in order, whatever ``chunk`` is."""
    ws = ws or Workspace()
    for t, full in enumerate(tp.l1):
        if full is None or tp.coeffs[t] == 0.0:
            continue
        tau = taus[t]
        n = tau.numel()
        d = tp.dare[t]
        assert d is not None
        acc = torch.zeros((), dtype=torch.float64, device=tau.device)
        for s in range(0, n, L1_BLOCK):
            e = min(n, s + L1_BLOCK)
            seg = tau[s:e]
            m = dare_mask(d[0], d[1], s, e - s, seg.device, torch.float32, ws, out=ws.get("l1mask", e - s, torch.float32, seg.device))
            acc += m.mul_(seg.abs()).sum(dtype=torch.float64)
        kept = float(acc)
        scale = full / kept if (kept > 0.0 and full > 0.0) else 1.0
        tp.coeffs[t] = tp.coeffs[t] * scale
        tp.l1[t] = None  # folded in


def merge_chunk(out: torch.Tensor, base: torch.Tensor, taus: Sequence[torch.Tensor], tp: TensorPlan, start: int,
                ws: Workspace | None = None) -> None:
    """Write the merged chunk into ``out`` (flat, the work dtype). ``base``/``taus``: chunks of
    the same length (storage dtype). ``start``: the chunk's offset in the tensor (DARE hash).

    Float-only arithmetic (masks are 1.0 / 0.0 tensors). The TIES election uses
    sum_t D_t [sign(D_t) == E] = E * sum_t relu(E * D_t): E * D_t > 0 exactly where D_t agrees,
    and multiplying by E = +-1 is exact, so this equals the masked sum bit for bit (same
    summation order); the divisor sums w_t * sign(relu(E * D_t)) (1 where agreeing) in the
    same order."""
    ws = ws or Workspace()
    work, n, dev = out.dtype, out.numel(), out.device
    active = [t for t, c in enumerate(tp.coeffs) if c != 0.0]
    if not tp.elect:
        out.copy_(base)
        for t in active:
            x = _trimmed(taus[t], tp, t, start, work, ws, "kept") if tp.trimmed else taus[t]
            out.add_(x, alpha=tp.coeffs[t])
        return
    if not active:
        out.copy_(base)
        return
    wks = []
    for i, t in enumerate(active):
        if tp.trimmed:
            wk = _trimmed(taus[t], tp, t, start, work, ws, f"wk{i}").mul_(tp.coeffs[t])
        else:
            wk = ws.get(f"wk{i}", n, work, dev)
            if taus[t].dtype == work:
                torch.mul(taus[t], tp.coeffs[t], out=wk)
            else:  # widen first: mul(bf16, c, out=fp32) would round the product to bf16
                wk.copy_(taus[t]).mul_(tp.coeffs[t])
        wks.append((t, wk))
    S = ws.get("sum", n, work, dev)
    if len(wks) == 1:
        S.copy_(wks[0][1])
    else:
        torch.add(wks[0][1], wks[1][1], out=S)
        for _, wk in wks[2:]:
            S.add_(wk)
    sgn = torch.ge(S, 0, out=S).mul_(2).sub_(1)  # E = +1 where the sum >= 0, else -1
    den = ws.get("den", n, work, dev) if tp.normalize else None
    acc: torch.Tensor | None = None
    for i, (t, wk) in enumerate(wks):
        r = wk.mul_(sgn).relu_()  # |D_t| where it agrees with E, else 0
        if den is not None:
            if i == 0:
                torch.sign(r, out=den).mul_(tp.weights[t])
            else:
                den.add_(torch.sign(r, out=ws.get("agree", n, work, dev)), alpha=tp.weights[t])
        acc = r if acc is None else acc.add_(r)
    assert acc is not None
    if den is not None:
        if all(tp.weights[t] >= torch.finfo(work).tiny for t in active):
            # den is 0 (no agreeing expert, acc is 0 too) or >= the smallest weight: lifting
            # zeros to the smallest normal number is exact and gives 0 / tiny = 0, like / 1
            den.clamp_(min=torch.finfo(work).tiny)
        else:
            den.add_(torch.eq(den, 0, out=ws.get("agree", n, work, dev)))  # 0 -> 1
        acc.div_(den)
    out.copy_(base)
    out.addcmul_(acc, sgn, value=tp.lam)


ChunkKernel = Callable[[torch.Tensor, torch.Tensor, Sequence[torch.Tensor], TensorPlan, int, Workspace], None]


def default_chunk(device: torch.device, tp: TensorPlan | None = None) -> int:
    """Elements per kernel chunk. CPU: 2**18 (1 MiB of float32) for the trim / election
    kernels, whose ~10 live scratch buffers then stay in cache; 2**20 for the plain
    copy + K adds (fewer ops, fewer thread-pool barriers). Accelerators: 2**24."""
    if device.type != "cpu":
        return 1 << 24
    if tp is not None and not tp.elect and not tp.trimmed:
        return 1 << 20
    return 1 << 18


def merge_tensor(
    out: torch.Tensor,
    base: torch.Tensor,
    taus: Sequence[torch.Tensor],
    tp: TensorPlan,
    *,
    work_dtype: torch.dtype | None = None,
    chunk: int | None = None,
    ws: Workspace | None = None,
    kernel: ChunkKernel | None = None,
) -> None:
    """Merge one tensor into ``out`` (any shape/dtype; written in place). ``base`` and
    ``taus`` are flat (numel,) tensors on out's device in the storage dtype; arithmetic runs
    in ``work_dtype`` (default: out's dtype) chunk by chunk; ``ws`` keeps scratch buffers;
    ``kernel``: a method's own chunk kernel (default ``merge_chunk``)."""
    run = kernel or merge_chunk
    n = base.numel()
    work = work_dtype or out.dtype
    chunk = chunk or default_chunk(base.device, tp)
    ws = ws or Workspace()
    if any(v is not None for v in tp.l1):
        dare_l1_scales(taus, tp, chunk, ws)
    if not out.is_contiguous():  # rare: merge into a contiguous copy, then write it back
        tmp = torch.empty(out.shape, dtype=out.dtype, device=out.device)
        merge_tensor(tmp, base, taus, tp, work_dtype=work, chunk=chunk, ws=ws, kernel=kernel)
        out.copy_(tmp)
        return
    flat = out.view(-1)
    direct = out.dtype == work
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        tch = [tau[s:e] for tau in taus]
        if direct:
            run(flat[s:e], base[s:e], tch, tp, s, ws)
        else:
            buf = ws.get("out", e - s, work, base.device)
            run(buf, base[s:e], tch, tp, s, ws)
            flat[s:e].copy_(buf)


# ----------------------------------------------------------------------------- standalone use


def merge_tensors(
    method: str,
    base: torch.Tensor,
    taus: Sequence[torch.Tensor],
    values: dict[str, Sequence[float]],
    options: dict[str, Any] | None = None,
    *,
    name: str = "",
    seed: int = 0,
    work_dtype: torch.dtype | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Merge one tensor from its base and task vectors (no precomputation; thresholds by an
    exact k-th value per call). ``values``: per parameter, one value per expert; missing
    parameters take the method's defaults. ``seed``: the trial seed (DARE)."""
    m = method_info(method)
    opts = m.resolve_options(options)
    K = len(taus)
    vals = {p: list(values.get(p, [d if d is not None else 0.0] * K)) for p, d in m.params.items()}
    flats = [t.reshape(-1) for t in taus]
    abs_cache: dict[int, torch.Tensor] = {}

    def kth(t: int, k: int) -> float:
        if t not in abs_cache:
            abs_cache[t] = flats[t].abs()
        return exact_kth_largest(abs_cache[t], k)

    l1 = [float(f.abs().sum(dtype=torch.float64)) for f in flats] if m.needs_l1(opts) else None
    tp = m.plan(opts, vals, base.numel(), name=name, seed=seed, kth=kth, l1=l1)
    work = work_dtype or (torch.float32 if base.device.type == "cpu" else base.dtype)
    out = torch.empty(base.shape, dtype=work, device=base.device)
    merge_tensor(out, base.reshape(-1), flats, tp, work_dtype=work, chunk=chunk, kernel=m.kernel)
    return out
