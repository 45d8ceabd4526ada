"""``search export``: any trial of a run as a Hugging Face model folder.

The folder holds the merged weights (safetensors, sharded with an index above
``max_shard_size``), the tokenizer, the generation config, a model card (``README.md``,
see :mod:`search.card`), a mergekit recipe (``mergekit_config.yml``, see
:mod:`search.recipe`) where the method has a mergekit equivalent, and
``mergesearch.json`` (run, trial, coefficients, scores).

The merge is rebuilt exactly as the trial's worker built it: the run's stored config,
the trial's stored coefficients and the trial number (which seeds DARE's masks) go
through the same :class:`~search.merge.materializer.Materializer`, so evaluating the
exported folder reproduces the stored scores.

Picking a trial
    ``--trial N``
        that trial; it must be COMPLETE (an unknown, failed or running trial is refused
        with the nearest complete trial numbers).
    ``--best OBJECTIVE``
        the COMPLETE trial with the best search value of that objective, in its direction
        (ties: the lowest trial number).
    ``--prefer "math=0.7,code=0.3"``
        among the Pareto-front members (search values, see :mod:`search.pareto`), the one
        with the largest preference score ``sum_j w_j * n_j``, where ``n_j`` is objective
        ``j`` min-max normalised over the front members (``(v - min) / (max - min)``;
        ``1 - that`` for minimised objectives, so 1 is always best; an objective on which
        all members agree counts 1) and ``w_j`` its weight (objectives not named weigh 0;
        weights need not sum to 1, but must be >= 0 and not all 0). Ties: the lowest trial
        number.

Output folder
    Refused if it exists and is not empty, unless ``force``; with ``force``, earlier weight
    files (``*.safetensors``, their index, ``pytorch_model*.bin``) are removed so shards of
    an older export never mix with the new ones, and other files are overwritten or kept.
    Files are written to a temporary folder beside the output and moved in at the end. A
    symlinked output folder, a symlink inside it at a path the export writes, and (with
    ``root``) an output outside ``root`` (through ``..`` or a symlink) are refused.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, ConfigIssue, MergeSearchError, did_you_mean
from .store import COMPLETE, RUNNING, Store, Trial

if TYPE_CHECKING:
    from .config import SearchConfig
    from .report import RunData

log = logging.getLogger("search.export")

DEFAULT_MAX_SHARD_SIZE = "5GB"
_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json")


class ExportError(MergeSearchError):
    """The export cannot be done as asked (trial not exportable, output folder unsafe...)."""


# ----------------------------------------------------------------------------- picking


def _nearest(numbers: Sequence[int], n: int, k: int = 3) -> list[int]:
    return sorted(sorted(numbers, key=lambda m: (abs(m - n), m))[:k])


def _nearest_hint(data: RunData, n: int) -> str:
    done = [t.number for t in data.trials if t.state == COMPLETE]
    if not done:
        return f"run {data.name!r} has no complete trial yet"
    near = _nearest(done, n)
    return "nearest complete trials: " + ", ".join(str(m) for m in near)


def trial_front_rank(data: RunData, trial: Trial) -> int | None:
    """Front rank of ``trial`` among the COMPLETE trials with finite values (None if it has none)."""
    from .pareto import all_finite, non_dominated_ranks

    m = len(data.directions)
    done = [t for t in data.trials if t.state == COMPLETE and all_finite(t.values) and len(t.values or []) == m]
    numbers = [t.number for t in done]
    if trial.number not in numbers:
        return None
    ranks = non_dominated_ranks(np.asarray([t.values for t in done]), data.directions)
    return int(ranks[numbers.index(trial.number)])


def parse_prefer(text: str, objectives: Sequence[str]) -> dict[str, float]:
    """``"math=0.7,code=0.3"`` -> ``{"math": 0.7, "code": 0.3}`` (ConfigError naming the form)."""
    form = "expected 'objective=weight,...' with weights >= 0, e.g. " + repr(
        ",".join(f"{o}={w}" for o, w in zip(objectives[:2], ("0.7", "0.3"), strict=False))
    )

    def bad(why: str) -> ConfigError:
        return ConfigError(ConfigIssue("--prefer", f"{text!r}: {why}; {form}"))

    out: dict[str, float] = {}
    items = [s.strip() for s in (text or "").split(",")]
    if not any(items):
        raise bad("no preferences given")
    for item in items:
        if not item:
            raise bad("empty entry")
        name, eq, w = (s.strip() for s in item.partition("="))
        if not eq or not name or not w:
            raise bad(f"{item!r} is not 'objective=weight'")
        if name not in objectives:
            raise ConfigError(ConfigIssue("--prefer", f"unknown objective {name!r}{did_you_mean(name, objectives)}"))
        if name in out:
            raise bad(f"{name!r} is given twice")
        try:
            wf = float(w)
        except ValueError:
            raise bad(f"weight {w!r} of {name!r} is not a number") from None
        if not math.isfinite(wf) or wf < 0:
            raise bad(f"weight {w!r} of {name!r} must be a finite number >= 0")
        out[name] = wf
    if not any(v > 0 for v in out.values()):
        raise bad("all weights are 0")
    return out


def preference_scores(values: np.ndarray, directions: Sequence[str], weights: Sequence[float]) -> np.ndarray:
    """Preference score of each row: weighted sum of min-max normalised values (1 = best)."""
    v = np.asarray(values, dtype=np.float64).reshape(len(values), len(directions))
    lo, hi = v.min(axis=0), v.max(axis=0)
    span = hi - lo
    norm = np.where(span > 0, (v - lo) / np.where(span > 0, span, 1.0), 1.0)
    flip = np.asarray([d == "minimize" for d in directions])
    norm = np.where(flip & (span > 0), 1.0 - norm, norm)
    return norm @ np.asarray(weights, dtype=np.float64)


def pick_trial(
    data: RunData, *, trial: int | None = None, best: str | None = None, prefer: str | None = None
) -> tuple[Trial, str]:
    """The trial to export and a phrase saying how it was picked (exactly one way must be given)."""
    given = [k for k, v in (("--trial", trial), ("--best", best), ("--prefer", prefer)) if v is not None]
    if len(given) != 1:
        raise ConfigError(ConfigIssue("", "give exactly one of --trial N, --best OBJECTIVE, --prefer 'obj=w,...'"))
    if trial is not None:
        t = data.trial(trial)
        if t is None:
            raise ExportError(f"run {data.name!r} has no trial {trial}; {_nearest_hint(data, trial)}")
        if t.state == RUNNING:
            raise ExportError(f"trial {trial} of run {data.name!r} is still running; {_nearest_hint(data, trial)}")
        if t.state != COMPLETE:
            why = f" ({t.error})" if t.error else ""
            raise ExportError(f"trial {trial} of run {data.name!r} failed{why}; {_nearest_hint(data, trial)}")
        return t, f"`--trial {trial}`"

    if best is not None:
        if best not in data.objectives:
            raise ConfigError(ConfigIssue("--best", f"unknown objective {best!r}{did_you_mean(best, data.objectives)}"))
        _, d, t = data.best()[data.objectives.index(best)]  # ties: the lowest trial number
        if t is None:
            raise ExportError(f"run {data.name!r} has no complete trial yet")
        return t, f"`--best {best}` ({d}: {t.values[data.objectives.index(best)]:.6g})"  # type: ignore[index]

    weights = parse_prefer(prefer or "", data.objectives)
    front = data.front_trials
    if not front:
        raise ExportError(f"run {data.name!r} has no complete trial yet, so no front to choose from")
    w = [weights.get(o, 0.0) for o in data.objectives]
    scores = preference_scores(np.asarray([t.values for t in front]), data.directions, w)
    i = min(range(len(front)), key=lambda i: (-scores[i], front[i].number))
    t = front[i]
    pref = ",".join(f"{k}={v:g}" for k, v in weights.items())
    return t, f"`--prefer {pref}` (score {scores[i]:.4g}, the best of {len(front)} front members)"


# ----------------------------------------------------------------------------- output folder


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def resolve_out_dir(out_dir: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> Path:
    """The output folder as an absolute path; refuses a symlinked folder and (with ``root``)
    one that leaves ``root`` through ``..`` or a symlink."""
    p = Path(out_dir).expanduser()
    if root is not None:
        r = Path(root).expanduser().resolve()
        if p.is_absolute() or ".." in p.parts:
            raise ExportError(f"output folder {str(out_dir)!r} must be a plain relative path inside {r} (no '..', not absolute)")
        p = r / p
        if not _inside(p.resolve(), r):
            raise ExportError(f"output folder {str(out_dir)!r} leads outside {r} through a symlink")
    if p.is_symlink():
        raise ExportError(f"output folder {p} is a symlink to {os.path.realpath(p)}; give the real folder instead")
    p = Path(os.path.abspath(p))
    if p.exists() and not p.is_dir():
        raise ExportError(f"output {p} exists and is not a folder")
    return p


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty folder without ``force``, and any symlink in it that leads outside."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise ExportError(f"output folder {out} is not empty; choose a new folder or pass --force to write into it")
    real = out.resolve()
    for p in out.rglob("*"):
        if p.is_symlink() and not _inside(Path(os.path.realpath(p)), real):
            raise ExportError(
                f"{p} is a symlink to {os.path.realpath(p)}, outside {out}; the export will not write through it: "
                "remove it or choose another folder"
            )


def _move_into(stage: Path, out: Path, force: bool) -> None:
    """Move every staged file into ``out``; nothing may leave ``out`` through '..' or symlinks."""
    real_out = out.resolve() if out.exists() else None
    files = [p for p in sorted(stage.rglob("*")) if not p.is_dir()]
    # some writers (safetensors) create private files: give every file the mode a new file gets
    probe = stage / ".mode-probe"
    probe.touch()
    mode = probe.stat().st_mode & 0o777
    probe.unlink()
    for f in files:
        if not f.is_symlink():
            os.chmod(f, mode)
    for f in files:
        rel = f.relative_to(stage)
        if f.is_symlink() or ".." in rel.parts:
            raise ExportError(f"refusing to write {rel}: the export produced a link or a path with '..'")
        if real_out is not None:
            dest = out / rel
            cur = out
            for part in rel.parts:
                cur = cur / part
                if cur.is_symlink():
                    raise ExportError(
                        f"{cur} is a symlink (to {os.path.realpath(cur)}); the export will not write through it: remove it or choose another folder"
                    )
            if not _inside(Path(os.path.realpath(dest)), real_out):
                raise ExportError(f"{dest} leads outside {out}; the export will not write there")
    if real_out is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage, out)
        return
    if force:  # never mix shards of an older export with the new ones
        for pat in _WEIGHT_PATTERNS:
            for old in out.glob(pat):
                if old.is_file() and not old.is_symlink():
                    old.unlink()
    for f in files:
        dest = out / f.relative_to(stage)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, dest)


# ----------------------------------------------------------------------------- rebuilding the merge


def stored_config(data: RunData) -> SearchConfig:
    """The run's config as stored, with relative paths resolving where the run was launched."""
    import yaml

    from .config import parse_config

    cfg = parse_config(yaml.safe_load(data.study.config_yaml), f"{data.name} (stored config)")
    return cfg.with_base_dir(data.study.space.get("base_dir"))


def materialize(cfg: SearchConfig, trial: Trial, device: str = "cpu") -> tuple[Any, Any, Any, np.ndarray]:
    """Base model with the trial's merge written in place, tokenizer, space, coefficient vector."""
    import torch

    from .merge.materializer import build_materializer
    from .models import load_model, load_tokenizer
    from .space import CoefficientSpace

    model = load_model(cfg.models.base, cfg, device=device)
    tokenizer = load_tokenizer(cfg)
    names = [n for n, _ in model.named_parameters()]
    space = CoefficientSpace.build(names, [e.name for e in cfg.models.experts], cfg.merge)
    try:
        x = space.from_dict(trial.params)
    except KeyError as e:
        raise ExportError(
            f"trial {trial.number}'s stored coefficients do not match the run's coefficient space ({e.args[0]}); "
            "were the models changed since the run?"
        ) from None
    mat = build_materializer(cfg.merge, cfg.models, model, space, device, base_dir=cfg.base_dir, seed=cfg.seed)
    with torch.no_grad():
        mat.apply(x, trial.number)
    close = getattr(mat, "close", None)
    if callable(close):
        close()
    del mat
    return model, tokenizer, space, x


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("mergesearch", "torch", "transformers", "lm_eval"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _eval_settings(cfg: SearchConfig) -> dict[str, tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each objective's evaluator settings with the evaluator's defaults filled in (as given
    when the evaluator cannot be loaded here)."""
    out = {}
    for o in cfg.objectives:
        held = None if o.heldout is None else {**o.settings, **o.heldout}
        try:
            from evaluators import EVALUATORS

            cls = EVALUATORS.get(o.evaluator)
            out[o.name] = (
                cls.Settings(**o.settings).model_dump(mode="json"),
                None if held is None else cls.Settings(**held).model_dump(mode="json"),
            )
        except Exception:  # noqa: BLE001 - the card then shows the settings as written
            out[o.name] = (dict(o.settings), held)
    return out


def _write_weights(cfg: SearchConfig, model: Any, tokenizer: Any, stage: Path, max_shard_size: int | str) -> None:
    from .models import resolve_source

    if cfg.models.factory:
        from safetensors.torch import save_model

        base = Path(resolve_source(cfg.models.base, cfg.base_dir))
        if base.is_dir():  # the factory reads its config files from the folder: keep them
            for f in sorted(base.iterdir()):
                if f.is_file() and not f.name.startswith(".") and not any(f.match(p) for p in _WEIGHT_PATTERNS):
                    shutil.copy2(f, stage / f.name)
        save_model(model, str(stage / "model.safetensors"))
        (stage / "mergesearch_factory.json").write_text(
            json.dumps({"factory": cfg.models.factory, "dtype": cfg.models.dtype, "weights": "model.safetensors"}, indent=1)
            + "\n"
        )
    else:
        model.save_pretrained(stage, max_shard_size=max_shard_size)
        gen = getattr(model, "generation_config", None)
        if gen is not None and not (stage / "generation_config.json").exists():
            gen.save_pretrained(stage)
    if tokenizer is not None:
        tokenizer.save_pretrained(stage)


def export_trial(
    run_name: str,
    store: str | Store | None,
    trial_number: int,
    out_dir: str | os.PathLike[str],
    force: bool = False,
    *,
    root: str | os.PathLike[str] | None = None,
    picked_by: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    device: str = "cpu",
) -> Path:
    """Write trial ``trial_number`` of run ``run_name`` as a model folder; returns the folder.

    ``store``: store path / URL (default ``runs/<run>.db``) or an open :class:`Store`.
    ``root``: if given, ``out_dir`` is relative to it and must stay inside it.
    """
    from .report import load_run

    data = load_run(run_name, store, with_metrics=True)
    out = resolve_out_dir(out_dir, root)
    check_out_dir(out, force)
    trial, how = pick_trial(data, trial=trial_number)
    return _export(data, trial, out, force, picked_by or how, max_shard_size, device)


def _export(data: RunData, trial: Trial, out: Path, force: bool, picked_by: str, max_shard_size: int | str, device: str) -> Path:
    from .card import MERGEKIT_KNOWN_ISSUES, CardInfo, is_hub_id, render_card
    from .models import resolve_source
    from .recipe import build_recipe
    from .seeding import trial_seed

    cfg = stored_config(data)
    t0 = time.perf_counter()
    model, tokenizer, space, x = materialize(cfg, trial, device)
    log.info("rebuilt trial %d of %s in %.1fs", trial.number, data.name, time.perf_counter() - t0)

    base_res = resolve_source(cfg.models.base, cfg.base_dir)
    exp_res = [resolve_source(e.path, cfg.base_dir) for e in cfg.models.experts]
    recipe = build_recipe(
        cfg,
        space,
        x,
        {n: p.numel() for n, p in model.named_parameters()},
        base_res,
        exp_res,
        architecture_known=cfg.models.factory is None,
    )
    model_type = str(getattr(getattr(model, "config", None), "model_type", "") or "") or None
    card = render_card(
        CardInfo(
            run=data.name,
            cfg=cfg,
            config_yaml=data.study.config_yaml,
            trial=trial,
            space=space,
            x=x,
            objectives=list(zip(data.objectives, data.directions, strict=True)),
            front_rank=trial_front_rank(data, trial),
            n_complete=sum(1 for t in data.trials if t.state == COMPLETE),
            picked_by=picked_by,
            base_source=cfg.models.base,
            base_resolved=base_res,
            base_is_hub=is_hub_id(cfg.models.base, base_res),
            expert_sources=[
                (e.name, e.path, r, is_hub_id(e.path, r)) for e, r in zip(cfg.models.experts, exp_res, strict=True)
            ],
            recipe_written=recipe.config is not None,
            recipe_exact=recipe.exact,
            recipe_notes=recipe.notes,
            model_type=model_type,
            package_versions=_versions(),
            seed=trial_seed(cfg.seed, trial.number),
            eval_settings=_eval_settings(cfg),
        )
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.export-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage.mkdir()  # the usual mode (mkdtemp's would be private), since it may become ``out``
    try:
        _write_weights(cfg, model, tokenizer, stage, max_shard_size)
        (stage / "README.md").write_text(card)
        if recipe.config is not None:
            (stage / "mergekit_config.yml").write_text(recipe.to_yaml())
        meta = {
            "run": data.name,
            "trial": trial.number,
            "strategy": trial.strategy,
            "generation": trial.generation,
            "objectives": [{"name": n, "direction": d} for n, d in zip(data.objectives, data.directions, strict=True)],
            "values": trial.values,
            "heldout": trial.heldout,
            "params": trial.params,
            "seed": trial_seed(cfg.seed, trial.number),
            "recipe_exact": recipe.exact if recipe.config is not None else None,
            # why mergekit cannot run the recipe on this architecture (None: nothing known)
            "mergekit_issue": MERGEKIT_KNOWN_ISSUES.get(model_type or "") if recipe.config is not None else None,
        }
        (stage / "mergesearch.json").write_text(json.dumps(meta, indent=1) + "\n")
        check_out_dir(out, force)  # again: something may have appeared while we merged
        _move_into(stage, out, force)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------- CLI


def export_cli(args: Any) -> int:
    """``search export RUN (--trial N | --best OBJ | --prefer 'a=w,b=w') --out DIR [--force]``."""
    from .report import load_run

    data = load_run(args.run, getattr(args, "store", None), with_metrics=True)
    out = resolve_out_dir(args.out)
    force = bool(getattr(args, "force", False))
    check_out_dir(out, force)
    trial, how = pick_trial(
        data, trial=getattr(args, "trial", None), best=getattr(args, "best", None), prefer=getattr(args, "prefer", None)
    )
    print(f"exporting trial {trial.number} of run {data.name!r} (picked by {how.replace('`', '')}) ...", flush=True)
    t0 = time.perf_counter()
    path = _export(data, trial, out, force, how, DEFAULT_MAX_SHARD_SIZE, "cpu")
    print(f"wrote {path} in {time.perf_counter() - t0:.1f}s (README.md model card"
          + (", mergekit_config.yml recipe" if (path / "mergekit_config.yml").exists() else "") + ")")
    return 0
