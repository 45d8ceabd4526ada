"""Worker memory plans for the merge engine, and the rule that picks one.

A worker keeps the base weights and the task vectors tau_t = theta_t - theta_0 somewhere
between trials. Where they live is its *memory plan* (``merge.plan``):

``resident``  base + K task vectors on the merge device (the device of each parameter).
              Fastest: a trial moves (K + 2) x model bytes through device memory.
``sparse``    base on the device; the task vectors *trimmed at build time* (values plus
              int32/int64 indices or a bitmask, whichever is smaller) on the device, scattered
              into a dense buffer tensor by tensor at apply time. Only for methods whose trim
              is deterministic and fixed: methods with a magnitude trim (``ties``,
              ``breadcrumbs``; ``MergeMethod.magnitude_trim``) with ``density`` (and ``gamma``)
              not searched. DARE's masks change every trial, so it cannot be sparse.
``streamed``  task vectors in host memory (pinned when CUDA is available), copied to the
              device tensor by tensor with non-blocking copies on a side CUDA stream into
              two alternating buffers (double buffering), so the copy of tensor i+1 overlaps
              the merge of tensor i. The base stays on the device when it fits, else it is
              streamed too (``stream_base``). Bounded by host->device bandwidth. On CPU the
              same code path runs synchronously and saves no memory (host is the device).

Bytes each plan places on the merge device (M = model bytes in the storage dtype, K experts,
T = the largest tensor's bytes, d = the fixed density):

    resident   (K + 1) M                 (+ sorted magnitudes K M f when host == device)
    sparse     M + K M s(d)              s(d) = min(d (1 + 4/e), 1/(8 e) + d), e = bytes/element
    streamed   M + 2 K T                 (stream_base: 2 (K + 1) T)

``f`` is the share of the sorted-magnitude table a searched density needs (see
``materializer``): it lives in host memory, so it only counts on the device on CPU. Every
plan adds the kernels' scratch: about (K + 8) float32 chunks for the trim / election
kernels (chunk = 2**24 elements on accelerators, 2**18 on CPU), one chunk for the others.

Decision rule of ``auto`` (``choose_plan``): the memory available for merging is
``min(budget, free)`` when ``merge.memory_budget_gb`` is given, else 80 % of the free memory
(torch.cuda.mem_get_info on GPU, psutil's available RAM on CPU), leaving room for evaluation.
Take the first plan that fits, in the order resident, sparse (only where eligible), streamed
with a resident base, streamed with a streamed base. If none fits, take the one with the
smallest device footprint and say so in ``Plan.reason`` (the worker logs it as a warning).
On CPU the streamed plans keep the task vectors in the same RAM, so their footprint there
includes them and ``auto`` never prefers them over resident.

This module does not import torch (config validation and docs use it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PlanKind = Literal["resident", "streamed", "sparse"]
PLAN_KINDS: tuple[str, ...] = ("resident", "sparse", "streamed")
AUTO_FREE_SHARE = 0.8


@dataclass(frozen=True)
class Plan:
    """A worker's memory plan and what it costs.

    ``device_bytes``: bytes the plan places on the merge device (beyond the model itself);
    ``host_bytes``: bytes it keeps in host memory (streamed task vectors, sorted magnitudes).
    """

    kind: PlanKind
    stream_base: bool = False
    device_bytes: int = 0
    host_bytes: int = 0
    available_bytes: int | None = None
    fits: bool = True
    reason: str = ""
    parts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        name = self.kind + (" (base streamed too)" if self.stream_base else "")
        parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in self.parts.items())
        return f"{name}: device {fmt_bytes(self.device_bytes)}, host {fmt_bytes(self.host_bytes)} [{parts}]"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover


def sparse_bytes_per_element(density: float, elem_bytes: int, index_bytes: int = 4) -> float:
    """Bytes per dense element of one trimmed task vector: values + indices, or values + bitmask."""
    d = min(max(float(density), 0.0), 1.0)
    return min(d * (elem_bytes + index_bytes), 1.0 / 8.0 + d * elem_bytes)


def magnitude_trimmed(method: str) -> bool:
    """True when ``method``'s trim is a deterministic magnitude rule."""
    from .methods import method_info

    return method_info(method).magnitude_trim


def sparse_eligible(method: str, density_searched: bool) -> bool:
    """Sparse storage needs a deterministic trim fixed at build time."""
    return magnitude_trimmed(method) and not density_searched


def plan_bytes(
    kind: str,
    model_bytes: int,
    n_experts: int,
    *,
    stream_base: bool = False,
    density: float = 1.0,
    elem_bytes: int = 4,
    max_tensor_bytes: int | None = None,
    sorted_bytes: int = 0,
    host_is_device: bool = False,
    scratch_bytes: int = 0,
) -> tuple[int, int, dict[str, int]]:
    """(device bytes, host bytes, parts) of one plan (the formulas in the module docstring,
    plus ``scratch_bytes`` of kernel workspace on the device)."""
    M, K = int(model_bytes), int(n_experts)
    T = int(max_tensor_bytes if max_tensor_bytes is not None else M)
    parts: dict[str, int] = {}
    if kind == "resident":
        parts = {"base": M, "task_vectors": K * M}
        device, host = (K + 1) * M, 0
    elif kind == "sparse":
        tv = int(K * (M / elem_bytes) * sparse_bytes_per_element(density, elem_bytes))
        parts = {"base": M, "sparse_task_vectors": tv, "scatter_buffers": K * T}
        device, host = M + tv + K * T, 0
    elif kind == "streamed":
        if stream_base:
            parts = {"host_base": M, "host_task_vectors": K * M, "device_buffers": 2 * (K + 1) * T}
            device, host = 2 * (K + 1) * T, (K + 1) * M
        else:
            parts = {"base": M, "host_task_vectors": K * M, "device_buffers": 2 * K * T}
            device, host = M + 2 * K * T, K * M
    else:
        raise ValueError(f"unknown plan {kind!r}; use one of {', '.join(PLAN_KINDS)}")
    if scratch_bytes:
        parts["kernel_scratch"] = int(scratch_bytes)
        device += int(scratch_bytes)
    if sorted_bytes:
        parts["host_sorted_magnitudes"] = int(sorted_bytes)
        host += int(sorted_bytes)
    if host_is_device:  # CPU: everything is in the same memory
        device, host = device + host, 0
    return int(device), int(host), parts


def available_bytes(free_bytes: int, budget: int | None) -> int:
    """Memory a worker may use for merging: min(budget, free), or 80 % of free without a budget."""
    if budget is not None:
        return int(min(int(budget), int(free_bytes)))
    return int(AUTO_FREE_SHARE * int(free_bytes))


def choose_plan(
    model_bytes: int,
    n_experts: int,
    free_bytes: int,
    budget: int | None,
    method: str,
    density_searched: bool,
    *,
    density: float = 0.5,
    elem_bytes: int = 4,
    max_tensor_bytes: int | None = None,
    sorted_bytes: int = 0,
    host_is_device: bool = False,
    scratch_bytes: int = 0,
    requested: str = "auto",
) -> Plan:
    """The memory plan for a worker (pure function; the rule is the module docstring's).

    ``budget`` is in bytes (``merge.memory_budget_gb`` * 2**30) or None; ``density_searched``
    is True when any trim parameter of the method (density, gamma) is searched;
    ``requested`` is ``merge.plan`` (``auto`` picks; a named plan is honoured and only
    annotated when it does not fit).
    """
    avail = available_bytes(free_bytes, budget)
    eligible = sparse_eligible(method, density_searched)
    common = dict(density=density, elem_bytes=elem_bytes, max_tensor_bytes=max_tensor_bytes, host_is_device=host_is_device,
                  scratch_bytes=scratch_bytes)
    candidates: list[tuple[str, bool, int]] = []  # (kind, stream_base, sorted bytes)
    candidates.append(("resident", False, sorted_bytes))
    if eligible:
        candidates.append(("sparse", False, 0))
    candidates.append(("streamed", False, sorted_bytes))
    candidates.append(("streamed", True, sorted_bytes))

    def make(kind: str, sb: bool, sorted_b: int, reason: str) -> Plan:
        dev, host, parts = plan_bytes(kind, model_bytes, n_experts, stream_base=sb, sorted_bytes=sorted_b, **common)
        return Plan(kind, sb, dev, host, avail, dev <= avail, reason, parts)  # type: ignore[arg-type]

    if requested != "auto":
        if requested not in PLAN_KINDS:
            raise ValueError(f"unknown plan {requested!r}; use auto or one of {', '.join(PLAN_KINDS)}")
        if requested == "sparse" and not eligible:
            raise ValueError(
                f"plan 'sparse' needs a fixed magnitude trim (a method such as ties or breadcrumbs with density"
                f" not searched); method {method!r}{' with a searched density' if density_searched else ''} cannot use it"
            )
        sb = False
        if requested == "streamed":
            dev, _, _ = plan_bytes("streamed", model_bytes, n_experts, **common)
            sb = dev > avail
        p = make(requested, sb, 0 if requested == "sparse" else sorted_bytes, "requested by merge.plan")
        if not p.fits:
            p = Plan(p.kind, p.stream_base, p.device_bytes, p.host_bytes, avail, False,
                     f"requested by merge.plan, but needs {fmt_bytes(p.device_bytes)} of {fmt_bytes(avail)} available", p.parts)
        return p

    plans = [make(k, sb, s, "") for k, sb, s in candidates]
    for p in plans:
        if p.fits:
            why = f"first plan that fits {fmt_bytes(avail)} available (order: resident, sparse, streamed)"
            if not eligible and magnitude_trimmed(method) and p.kind != "resident":
                why += "; sparse skipped: density is searched"
            return Plan(p.kind, p.stream_base, p.device_bytes, p.host_bytes, avail, True, why, p.parts)
    best = min(plans, key=lambda p: p.device_bytes)
    return Plan(best.kind, best.stream_base, best.device_bytes, best.host_bytes, avail, False,
                f"no plan fits {fmt_bytes(avail)} available; using the smallest ({fmt_bytes(best.device_bytes)})", best.parts)


def expected_seconds(plan: Plan, model_bytes: int, n_experts: int, copy_seconds_per_byte: float,
                     h2d_seconds_per_byte: float | None = None, density: float = 1.0) -> float:
    """Rough materialization time from measured bandwidths (for the start-up log only).

    ``copy_seconds_per_byte``: time per byte of a device tensor copy (read + write). A
    task-arithmetic trial costs about (K + 2) / 2 such copies of the model; streamed plans
    cannot beat the host->device transfer of the streamed bytes.
    """
    K, M = n_experts, model_bytes
    t = (K + 2) / 2 * M * copy_seconds_per_byte
    if plan.kind == "sparse":
        t *= 1.5  # zero + scatter per task vector
    if plan.kind == "streamed" and h2d_seconds_per_byte:
        t = max(t, (K + (1 if plan.stream_base else 0)) * M * h2d_seconds_per_byte)
    return t
