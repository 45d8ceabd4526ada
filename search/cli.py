"""The ``search`` command line. Subcommands import their heavy modules lazily."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .errors import ConfigError, MergeSearchError

EXIT_USER_ERROR = 2
_REPLAY_HELP = ("continue a run written by an older mergesearch (pickled strategy state, never loaded): "
                "upgrade the store and re-tell its trials to a new strategy (not exact)")


def _print_issues(err: ConfigError) -> None:
    for issue in err.issues:
        print(f"error: {issue}", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    from .config import load_config
    from .validation import check_run

    cfg = load_config(args.config)
    checked = check_run(cfg, check_files=not args.no_files, source=args.config)
    dim = f", {checked.space.dim} coordinates" if checked.space is not None else ""
    print(f"{args.config}: ok (run '{cfg.name}', strategy {cfg.strategy.name}, budget {cfg.strategy.budget}, "
          f"{len(cfg.models.experts)} experts, {len(cfg.objectives)} objectives, method {cfg.merge.method}{dim})")
    if checked.note:
        print(f"note: {checked.note}")
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from .controller import launch

    return launch(args.config, address=args.address, budget=args.budget, store=args.store, fresh=args.fresh, replay=args.replay)


def cmd_resume(args: argparse.Namespace) -> int:
    from .controller import resume

    return resume(args.run, store=args.store, address=args.address, replay=args.replay)


def cmd_status(args: argparse.Namespace) -> int:
    from .report import print_status

    return print_status(args.run, store=args.store)


def cmd_front(args: argparse.Namespace) -> int:
    from .report import print_front

    return print_front(args.run, store=args.store, as_json=args.json)


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_cli

    return export_cli(args)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from .dashboard.server import serve

    return serve(args.runs, host=args.host, port=args.port, store=args.store)


def cmd_zoo(args: argparse.Namespace) -> int:
    from .zoo import PROBLEMS, zoo_path

    problems = args.problems or list(PROBLEMS)
    for p in problems:
        first = PROBLEMS[p][1][0] if p in PROBLEMS else "x"
        path = zoo_path(f"zoo:{p}/{first}", build=True)
        print(f"zoo:{p} ready in {path.parent}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="search", description="mergesearch: search model-merge coefficients")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a config without running it")
    p.add_argument("config")
    p.add_argument("--no-files", action="store_true", help="skip checks of model folders")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("launch", help="run a search (continues an existing run of the same name)")
    p.add_argument("config")
    p.add_argument("--address", help="Ray cluster address ('auto', 'ray://host:10001'); implies the ray backend")
    p.add_argument("--budget", type=int, help="override strategy.budget")
    p.add_argument("--store", help="override the store path / URL")
    p.add_argument("--fresh", action="store_true", help="refuse to continue an existing run of this name")
    p.add_argument("--replay", action="store_true", help=_REPLAY_HELP)
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("resume", help="continue an interrupted run")
    p.add_argument("run", help="run name, or a store path (runs/<name>.db)")
    p.add_argument("--store")
    p.add_argument("--address")
    p.add_argument("--replay", action="store_true", help=_REPLAY_HELP)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("status", help="progress of a run")
    p.add_argument("run")
    p.add_argument("--store")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("front", help="the Pareto front of a run")
    p.add_argument("run")
    p.add_argument("--store")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_front)

    p = sub.add_parser("export", help="write a trial's merge as a Hugging Face model folder")
    p.add_argument("run")
    p.add_argument("--store")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--trial", type=int)
    g.add_argument("--best", metavar="OBJECTIVE")
    g.add_argument("--prefer", metavar="'obj=w,obj=w'")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("dashboard", help="serve the live Pareto-front dashboard")
    p.add_argument("runs", nargs="+")
    p.add_argument("--store")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("zoo", help="build the local model zoo")
    p.add_argument("action", choices=["build"])
    p.add_argument("problems", nargs="*")
    p.set_defaults(func=cmd_zoo)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        _print_issues(e)
        return EXIT_USER_ERROR
    except MergeSearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as e:
        exc = sys.modules.get("sqlalchemy.exc")
        if exc is None or not isinstance(e, exc.DatabaseError) or isinstance(e, exc.IntegrityError):
            raise
        from .store import damaged, default_store_for

        run = getattr(args, "run", None) or (getattr(args, "runs", None) or [None])[0]
        where = getattr(args, "store", None) or (default_store_for(run) if run else "the store")
        print(f"error: {where}: {damaged(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
