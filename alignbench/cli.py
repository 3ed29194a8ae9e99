"""Command line: ``alignbench list | sweep | report``. Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import yaml

from .errors import AlignbenchError


def _kv(items: list[str] | None, flag: str, nested: bool) -> dict[str, Any]:
    """Parse repeated ``name.field=value`` (nested) or ``field=value`` flags; values are YAML scalars."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise AlignbenchError(f"{flag}: expected KEY=VALUE, got '{item}'")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw else ""
        if nested:
            if "." not in key:
                raise AlignbenchError(f"{flag}: expected NAME.FIELD=VALUE, got '{item}'")
            name, field = key.split(".", 1)
            out.setdefault(name, {})[field] = value
        else:
            out[key] = value
    return out


def _grid(items: list[str] | None) -> dict[str, list[Any]]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise AlignbenchError(f"--grid: expected METHOD=V1,V2,..., got '{item}'")
        name, raw = item.split("=", 1)
        out[name] = [yaml.safe_load(v) for v in _csv(raw, f"--grid {name}") or []]
    return out


def _csv(s: str | None, flag: str = "") -> list[str] | None:
    """Comma-separated values; an explicitly empty list (``--methods ,``) is an error, not the default."""
    if s is None:
        return None
    vals = [x.strip() for x in s.split(",") if x.strip()]
    if not vals and flag:
        raise AlignbenchError(f"{flag}: empty list (omit the flag for the default)")
    return vals


def _numbers(s: str | None, flag: str) -> list[Any] | None:
    if s is None:
        return None
    vals = []
    for x in _csv(s, flag) or []:
        try:
            vals.append(float(x) if any(c in x.lower() for c in ".en") else int(x))
        except ValueError:
            raise AlignbenchError(f"{flag}: '{x}' is not a number") from None
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alignbench", description="Comparative alignment benchmark: the same data, "
                                "reference model and KL budget for every method; reward-vs-KL frontiers.")
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="list registered methods and tasks")
    ls.add_argument("--verbose", "-v", action="store_true", help="also show each config field with its default and help")
    ls.add_argument("--plugins", help="extra plugin files or folders (comma-separated)")

    sw = sub.add_parser("sweep", help="train every method over its sweep grid and write a report",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Run (or resume) a sweep. Completed runs in --out are skipped. Flags override "
                                    "the fields of --config.\nMethod and task fields (--method-arg, --task-arg): "
                                    "`alignbench list --verbose`.",
                        epilog=_train_fields_help())
    sw.add_argument("--config", help="YAML file with SweepConfig fields (tasks, methods, betas, grid, seeds, ...)")
    sw.add_argument("--task", "--tasks", dest="tasks", help="comma-separated tasks (default: exact)")
    sw.add_argument("--methods", help="comma-separated methods (default: the task's default set)")
    sw.add_argument("--betas", help="comma-separated beta grid for every beta-swept method")
    sw.add_argument("--grid", action="append", metavar="METHOD[.FIELD]=V1,V2",
                    help="grid of one method's sweep axis (bon=1,4,16), or of any field of its config or of the "
                         "training config, crossed with the axis (dpo.lr=1e-4,1e-3); repeatable")
    sw.add_argument("--seeds", help="comma-separated seeds (default: 0)")
    sw.add_argument("--data-seeds", help="comma-separated data seeds crossed with --seeds: each reseeds the task's "
                                         "preference data (and the reward model trained on it), not its reference, "
                                         "gold reward or prompts (default: the task's own data; docs/budgets.md)")
    sw.add_argument("--steps", help="training budget of every run: optimizer steps, or iterations for methods "
                                    "counted in iterations (ppo, ppo-gt; an explicit --method-arg ppo.iterations "
                                    "wins); best-of-N has none (default: the task's)")
    sw.add_argument("--eval-every", help="evaluate every N steps or iterations (and at the last step); the "
                                         "checkpoints the report's early-stopped and envelope frontiers choose "
                                         "from (default: the task's; a run's value is in its config.json, "
                                         "train.eval_every)")
    sw.add_argument("--out", help="results folder (default: results/default); a folder made by another sweep "
                                  "(sweep.json) is refused unless --force")
    sw.add_argument("--force", action="store_true", help="add this sweep's runs to a folder made by another sweep")
    sw.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    sw.add_argument("--cache-dir", help="cache folder (default: .cache/alignbench or $ALIGNBENCH_CACHE)")
    sw.add_argument("--method-arg", action="append", metavar="METHOD.FIELD=VALUE", help="method config field (repeatable)")
    sw.add_argument("--task-arg", action="append", metavar="TASK.FIELD=VALUE", help="task config field (repeatable)")
    sw.add_argument("--train-arg", action="append", metavar="FIELD=VALUE", help="training config field (repeatable)")
    sw.add_argument("--report-to", help="comma-separated trackers: tensorboard, wandb (default: none)")
    sw.add_argument("--plugins", help="extra plugin files or folders (comma-separated)")
    sw.add_argument("--workers", help="parallel worker processes (up to --runs-per-gpu per GPU, or CPU workers); default: "
                                      "one per CPU core, or --runs-per-gpu per GPU ($ALIGNBENCH_WORKERS sets it)")
    sw.add_argument("--runs-per-gpu", help="local workers placed on each GPU (round-robin); default 1")
    sw.add_argument("--executor", help="local (default) or ray")
    sw.add_argument("--ray-address", help="Ray cluster address for --executor ray (default: a local Ray instance)")
    sw.add_argument("--no-progress", action="store_true", help="hide per-step progress bars (the one-line run starts and ends stay; "
                                                               "ALIGNBENCH_QUIET=1 hides them too)")

    rp = sub.add_parser("report", help="rebuild DIR/report.md and its figures from the files in DIR")
    rp.add_argument("dir", help="results folder written by `alignbench sweep`")

    cp = sub.add_parser("compare", help="compare two results folders run by run (bit-identical, or how far apart)",
                        description="Match the runs of two results folders by run id and say, for each, whether "
                                    "its summary.csv numbers are bit-identical or the largest relative difference "
                                    "and its column (time columns are ignored). Exit 0: the same numbers; 1: they "
                                    "differ; 2: an input error. `make reproduce` reruns the default sweep into "
                                    ".reproduce/default and compares it with results/default.")
    cp.add_argument("dir_a", help="a results folder (e.g. results/default)")
    cp.add_argument("dir_b", help="another results folder (e.g. .reproduce/default)")
    return p


def _train_fields_help() -> str:
    """The TrainConfig fields with their defaults and help, generated from the dataclass."""
    import textwrap
    from dataclasses import fields

    from .config import TrainConfig

    lines = ["training fields (--train-arg FIELD=VALUE; tasks set their own defaults, shown by `alignbench list "
             "--verbose`):"]
    for f in fields(TrainConfig):
        lines.append(textwrap.fill(f"{f.name} = {f.default!r}: {f.metadata.get('help', '')}", 100,
                                   initial_indent="  ", subsequent_indent="      "))
    lines.append("exit status: 0 every run ok; 1 some run failed (count printed, reasons in summary.csv); "
                 "2 bad input (one line on stderr, nothing written); 130 interrupted (rerun the same command "
                 "to resume)")
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> None:
    from dataclasses import MISSING, fields

    from . import registry

    registry.load_plugins(_csv(args.plugins))
    print("Methods:")
    for name, cls in registry.methods().items():
        needs = [a for a in ("needs_reference", "needs_reward_model", "needs_gold_reward") if getattr(cls, a)]
        print(f"  {name:<10} [{cls.data_format}; sweeps {cls.sweep_param}] {cls.description}"
              + (f" (needs: {', '.join(n[6:] for n in needs)})" if needs and args.verbose else ""))
        if args.verbose:
            for f in fields(cls.config_cls):
                default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
                print(f"      {f.name} = {default!r}: {f.metadata.get('help', '')}")
    print("Tasks:")
    for name, cls in registry.tasks().items():
        print(f"  {name:<10} {cls.description}")
        if args.verbose:
            for f in fields(cls.config_cls):
                default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
                print(f"      {f.name} = {default!r}: {f.metadata.get('help', '')}")


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import load_sweep_config, run_sweep

    overrides: dict[str, Any] = {
        "tasks": _csv(args.tasks, "--task"), "methods": _csv(args.methods, "--methods"),
        "betas": _numbers(args.betas, "--betas"), "seeds": _numbers(args.seeds, "--seeds"), "data_seeds": _numbers(args.data_seeds, "--data-seeds"), "steps": args.steps, "eval_every": args.eval_every, "out": args.out, "device": args.device,
        "cache_dir": args.cache_dir or os.environ.get("ALIGNBENCH_CACHE"),
        "report_to": _csv(args.report_to), "plugins": _csv(args.plugins),
        "workers": args.workers, "runs_per_gpu": args.runs_per_gpu, "executor": args.executor, "ray_address": args.ray_address,
    }
    if args.grid:
        overrides["grid"] = _grid(args.grid)
    if args.method_arg:
        overrides["method_args"] = _kv(args.method_arg, "--method-arg", nested=True)
    if args.task_arg:
        overrides["task_args"] = _kv(args.task_arg, "--task-arg", nested=True)
    if args.train_arg:
        overrides["train_args"] = _kv(args.train_arg, "--train-arg", nested=False)
    if args.no_progress:
        overrides["progress"] = False
    if args.force:
        overrides["force"] = True
    cfg = load_sweep_config(args.config, overrides)
    summary = run_sweep(cfg)
    from .distributed import is_main_process

    if not is_main_process():
        return 0
    mine = summary[summary["run_id"].isin(summary.attrs["plan"])] if len(summary) else summary
    n_ok = int((mine["status"] == "ok").sum()) if len(mine) else 0
    failed = len(mine) - n_ok
    others = f" ({len(summary) - len(mine)} more runs of the folder in summary.csv)" if len(summary) > len(mine) else ""
    print(f"{n_ok}/{len(mine)} runs ok" + (f", {failed} failed (reasons in summary.csv)" if failed else "")
          + f"{others}; report: {cfg.out}/report.md")
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace) -> None:
    from .report import write_report

    print(write_report(args.dir))


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare, render

    res = compare(args.dir_a, args.dir_b)
    print(render(res, args.dir_a, args.dir_b))
    return 0 if res.same else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .models import quiet_transformers

    quiet_transformers()
    try:
        return {"list": cmd_list, "sweep": cmd_sweep, "report": cmd_report,
                "compare": cmd_compare}[args.command](args) or 0
    except AlignbenchError as e:
        print(f"alignbench: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a folder made read-only or removed under a running sweep, a full disk, ...
        where = f"{e.filename}: " if e.filename else ""
        print(f"alignbench: error: {where}{e.strerror or type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alignbench: interrupted; rerun the same command to resume (completed runs are kept, "
              "interrupted ones continue from their last checkpoint)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
