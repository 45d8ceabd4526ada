"""The model card (``README.md``) of an exported merge.

Everything on the card comes from the store (the trial, its run's config, the other
trials for the front rank) and the recipe builder; :func:`render_card` only formats.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from .config import SearchConfig
from .merge.methods import method_info
from .space import CoefficientSpace
from .store import Trial

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# config.model_type -> why mergekit cannot run an exported recipe on that architecture. The card
# puts the note next to the recipe instead of saying the recipe reproduces the merge;
# tests/test_model_families.py expects the failure, so an entry must go once mergekit loads it.
MERGEKIT_KNOWN_ISSUES: dict[str, str] = {
    "gpt_neox": (
        "mergekit 0.1.5 cannot load GPT-NeoX checkpoints saved by transformers 5: its architecture file requires "
        "the `gpt_neox.layers.N.attention.bias` buffer, which these checkpoints no longer contain (it stops with "
        "\"Tensor gpt_neox.layers.1.attention.bias required but not present\"). The recipe records the merge's "
        "parameters, but mergekit does not run it on these models."
    ),
}


@dataclass
class CardInfo:
    run: str
    cfg: SearchConfig
    config_yaml: str
    trial: Trial
    space: CoefficientSpace
    x: np.ndarray
    objectives: list[tuple[str, str]]  # (name, direction)
    front_rank: int | None  # 0 = on the front; None when the trial has no values
    n_complete: int
    picked_by: str
    base_source: str  # as written in the config
    base_resolved: str  # the folder (or hub id) it was loaded from
    base_is_hub: bool
    expert_sources: list[tuple[str, str, str, bool]]  # (name, source as written, resolved, is hub id)
    recipe_written: bool
    recipe_exact: bool
    recipe_notes: list[str] = field(default_factory=list)
    model_type: str | None = None  # the merged model's config.model_type (None: a factory model)
    package_versions: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    # objective name -> (search settings, held-out settings or None), with the evaluator's defaults
    eval_settings: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = field(default_factory=dict)


def is_hub_id(src: str, resolved: str) -> bool:
    """A hub id is an 'org/name' source that did not resolve to a local folder or zoo model."""
    return not src.startswith("zoo:") and src == resolved and bool(_HUB_ID.match(src))


def _link(src: str, resolved: str, hub: bool) -> str:
    if hub:
        return f"[{src}](https://huggingface.co/{src})"
    return f"`{src}`" if resolved == src else f"`{src}` (loaded from `{resolved}`)"


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.6g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _settings_line(settings: dict[str, Any]) -> str:
    if not settings:
        return "defaults"
    return ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in settings.items())


def render_card(c: CardInfo) -> str:
    cfg, t = c.cfg, c.trial
    info = method_info(cfg.merge.method)
    title = f"{c.run} trial {t.number}"

    front_matter: dict[str, Any] = {}
    if c.base_is_hub:
        front_matter["base_model"] = [c.base_source] + [s for _, s, _, hub in c.expert_sources if hub]
        front_matter["base_model_relation"] = "merge"
    front_matter["library_name"] = "transformers" if not cfg.models.factory else "pytorch"
    front_matter["tags"] = ["merge", "mergesearch"] + (["mergekit"] if c.recipe_written else [])
    parts = ["---", yaml.safe_dump(front_matter, sort_keys=False).rstrip(), "---", "", f"# {title}", ""]

    parts.append(
        f"A merge of {len(c.expert_sources)} fine-tuned experts into their base model, found by "
        f"mergesearch run `{c.run}`: trial {t.number} "
        f"(strategy `{t.strategy}`, generation {t.generation}), picked by {c.picked_by}."
    )
    parts.append("")

    # models
    parts += ["## Models", "", f"- base: {_link(c.base_source, c.base_resolved, c.base_is_hub)}"]
    parts += [f"- expert `{n}`: {_link(s, r, hub)}" for n, s, r, hub in c.expert_sources]
    parts += ["", f"Weights are stored in `{cfg.models.dtype}`."]
    if cfg.models.factory:
        parts.append(f"Load with the factory `{cfg.models.factory}` (see `mergesearch_factory.json`).")
    parts.append("")

    # method
    opts = info.resolve_options(cfg.merge.params)
    parts += ["## Merge method", "", info.card_line(opts), ""]
    if opts:
        parts.append("Options: " + ", ".join(f"`{k}` = {v}" for k, v in opts.items()) + ".")
    parts.append(
        f"Coefficient groups: granularity `{cfg.merge.granularity}`"
        + (f", each layer group split by {', '.join(f'`{s}`' for s in cfg.merge.split)} (rest: `.rest`)" if cfg.merge.split else "")
        + f"; {c.space.describe()}."
    )
    if info.random:
        parts.append(f"Random masks are seeded from the run seed and the trial number (seed {c.seed}).")
    parts.append("")

    # objectives
    parts += ["## Scores", ""]
    rows = []
    for i, (name, direction) in enumerate(c.objectives):
        sv = t.values[i] if t.values and i < len(t.values) else None
        hv = t.heldout[i] if t.heldout and i < len(t.heldout) else None
        rows.append([name, direction, _fmt(sv), _fmt(hv)])
    parts.append(_table(["objective", "direction", "search", "held-out"], rows))
    parts.append("")
    if c.front_rank is None:
        parts.append("This trial has no objective values, so it has no front rank.")
    elif c.front_rank == 0:
        parts.append(f"Front rank 0: on the Pareto front of the {c.n_complete} complete trials (search values).")
    else:
        parts.append(
            f"Front rank {c.front_rank} of the {c.n_complete} complete trials (non-dominated sorting on the search "
            "values; rank 0 is the Pareto front)."
        )
    extra = [m for m in t.metrics if m.get("value") is not None]
    if extra:
        parts += ["", "All recorded metrics:", ""]
        names = [n for n, _ in c.objectives]
        parts.append(
            _table(
                ["objective", "split", "evaluator", "metric", "value"],
                [
                    [names[m["objective_idx"]] if m["objective_idx"] < len(names) else str(m["objective_idx"]), m["split"], m["evaluator"], m["metric"], _fmt(m["value"])]
                    for m in extra
                ],
            )
        )
    parts.append("")

    # coefficients
    parts += ["## Coefficients", ""]
    if c.space.knots:
        parts += [f"Per layer, interpolated from the {c.space.knots} searched knots of each (expert, parameter) "
                  "(the mergekit recipe writes the knots as gradient lists).", ""]
    vals = c.space.values(c.x)
    for p, table in vals.items():
        searched = " (searched)" if p in c.space.searched else " (fixed)"
        parts += [f"### {p}{searched}", ""]
        parts.append(
            _table(["group"] + list(c.space.experts), [[g] + [_fmt(float(v)) for v in table[gi]] for gi, g in enumerate(c.space.groups)])
        )
        parts.append("")

    # evaluation settings
    parts += ["## Evaluation settings", ""]
    for o in cfg.objectives:
        search, heldout = c.eval_settings.get(o.name, (o.settings, None if o.heldout is None else {**o.settings, **o.heldout}))
        parts.append(f"- `{o.name}` ({o.direction}): evaluator `{o.evaluator}`, {_settings_line(search)}")
        if heldout is not None:
            parts.append(f"  - held-out: {_settings_line(heldout)}")
    if c.package_versions:
        parts += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in c.package_versions.items()) + "."]
    parts += [
        "",
        f"Evaluation randomness (subsets, sampling) is seeded with {c.seed}, derived from the run seed "
        f"({cfg.seed}) and the trial number.",
        "",
    ]

    # contamination
    parts += [
        "## Benchmark contamination",
        "",
        "These coefficients were chosen to score well on the search evaluations above, so those scores are "
        "optimistic estimates of this model's ability: report the held-out scores (or a fresh benchmark) rather "
        "than the search scores. The experts' and the base model's own training data may also overlap with any "
        "public benchmark; check their cards before comparing to published numbers."
        + (
            " This run was allowed to search on well-known public test sets (allow_public_test_sets: true); its "
            "scores on those sets are not comparable with other models' results."
            if cfg.allow_public_test_sets
            else ""
        ),
        "",
    ]

    # mergekit
    parts += ["## Reproducing with mergekit", ""]
    if c.recipe_written:
        parts.append(
            "`mergekit_config.yml` in this folder is the recipe: `mergekit-yaml mergekit_config.yml OUT` "
            "(model paths are those of the machine that exported it)."
        )
        known = MERGEKIT_KNOWN_ISSUES.get(c.model_type or "")
        if known:
            parts.append(f"It does not reproduce this merge with mergekit (architecture `{c.model_type}`): {known}")
            if not c.recipe_exact:
                parts.append("Its parameters also differ from this merge's:")
        else:
            parts.append(
                "It reproduces this merge's parameters for every tensor."
                if c.recipe_exact
                else "It cannot reproduce this merge exactly:"
            )
    else:
        parts.append("No mergekit recipe was written:")
    parts += [f"- {n}" for n in c.recipe_notes]
    parts.append("")

    # config
    parts += ["## Full config", "", "```yaml", c.config_yaml.rstrip(), "```", ""]
    return "\n".join(parts)
