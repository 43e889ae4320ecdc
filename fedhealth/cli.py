"""The `fedhealth` command, the project's one command line: simulate a study, write synthetic hospitals,
report, and (sub-apps from fedhealth/deployment/cli.py) `certs`, `app`, `audit` and `deploy`, the last being
what the deployment scripts run.

Errors a user can fix (bad config, missing file, non-empty run directory) print one line per
problem and exit with status 2; a federation that fails exits with status 1.

One error path for every command (`_Guarded`): a `FedhealthError` no command caught prints its message;
anything else prints one line (the command, the file if one is known, the exception's type, never its
text, which may quote a patient's value) and the traceback only under `fedhealth --debug` (or
FEDHEALTH_DEBUG=1), never with local variables. Exit codes: 0 ok, 1 failed or unusable, 2 bad input,
3 still running (`status`), 130 interrupted.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import click  # noqa: E402
import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from fedhealth import errors  # noqa: E402
from fedhealth.data.study_file import load_config  # noqa: E402
from fedhealth.metrics.headline import label as figure_label  # noqa: E402
from fedhealth.runs import rundir  # noqa: E402
from fedhealth.study.config import ConfigError, StudyConfig  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_RUNNING, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
# An error no command caught: bad input (2) for what the user can fix, failed (1) for what ran and failed.
_BAD_INPUT = (errors.StudyConfigError, errors.DataError, errors.RunDirectoryError, errors.UsageError,
              errors.TrustError, errors.MissingExtraError, errors.DeploymentError)


class _SafeConsole(Console):
    """rich's console with every string argument made terminal-safe: a path or a name the user gave, printed
    in a table or a line, cannot carry an escape sequence to the terminal (rich passes ESC through)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().print(*(errors.terminal_safe(o, keep_newlines=True) if isinstance(o, str) else o
                        for o in objects), **kwargs)


# Piped output (CI logs, files) gets a wide console so the results table is never truncated.
console = _SafeConsole(width=None if sys.stdout.isatty() else 160)
err_console = _SafeConsole(stderr=True, width=None if sys.stderr.isatty() else 160)


def _fail(message: str, code: int = 2) -> None:
    for line in message.splitlines():
        err_console.print(f"error: {line}", style="bold red",
                          markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _refuse_inputs(target: Path, option: str, inputs: list[Path | None]) -> None:
    """An output that is one of the command's inputs is refused even with --force: it would destroy what the
    command reads (a hospital's CSV replaced by its own validation report)."""
    for given in inputs:
        if given is not None and _same_file(target, given):
            _fail(f"{option} {target}: is also an input of this command ({given}); choose another {option}")


def _check_target(target: Path, option: str, inputs: list[Path | None], force: bool, *,
                  folder: bool = False) -> None:
    """Refuse (exit 2) an output that is one of the command's inputs (even with --force: it would destroy
    what the command reads), a target that exists unless `force` (a folder: one that is not empty), and a
    file whose folder does not exist."""
    _refuse_inputs(target, option, inputs)
    if folder:
        if target.exists() and not target.is_dir():
            _fail(f"{option} {target}: is a file, not a folder; choose a folder")
        if target.is_dir() and any(target.iterdir()) and not force:
            _fail(f"{option} {target}: the folder is not empty; pass --force to write into it (files of the "
                  f"same names are replaced), or choose another {option}")
        return
    if target.is_dir():
        _fail(f"{option} {target}: is a folder; give a file name")
    if target.exists() and not force:
        _fail(f"{option} {target}: exists; pass --force to replace it, or choose another {option}")
    if not target.parent.is_dir():
        _fail(f"{option} {target}: the folder {target.parent} does not exist; create it first")


def _fresh_folder(out: Path | None, *inputs: Path | None) -> None:
    """`--out` of the commands that run sibling federations (sweep, fairness, contribution): like simulate's run
    directory, a folder that does not exist or is empty; its runs are never replaced (no --force)."""
    if out is None:
        return
    for given in inputs:
        if given is not None and _same_file(out, given):
            _fail(f"--out {out}: is also an input of this command; choose another --out")
    if out.exists() and not out.is_dir():
        _fail(f"--out {out}: is a file, not a folder; choose a new folder")
    if out.is_dir() and any(out.iterdir()):
        _fail(f"--out {out}: the folder is not empty; choose a new --out (earlier results are never replaced)")


def _command_name(ctx: click.Context) -> str:
    """`fedhealth certs init`, whatever the program was called (`python -m fedhealth.cli`, a test runner)."""
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(["fedhealth", *reversed(names)])


def _where(err: BaseException) -> str:
    """The file an unexpected error involves: the path of an OSError, else the last line of fedhealth's own
    code it passed through (for a bug report); never the exception's text."""
    if isinstance(err, OSError) and err.filename is not None:
        return f" on {os.fsdecode(err.filename)}" + (f": {err.strerror}" if err.strerror else "")
    tb, last = err.__traceback__, None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if f"{os.sep}fedhealth{os.sep}" in filename:
            last = f"{Path(filename).name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return f" in {last}" if last else ""


def _debug_requested(ctx: click.Context) -> bool:
    return bool(ctx.find_root().params.get("debug"))  # the option, or FEDHEALTH_DEBUG (its envvar)


class _Guarded(TyperGroup):
    """The one error path of every command (the main app and each sub-app is one of these): see the module
    docstring. The innermost group handles an error, naming its own subcommand; the outer ones see an Exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            err_console.print(f"error: {_command_name(ctx)} {ctx.invoked_subcommand or ''}: interrupted",
                              style="bold red", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except errors.FedhealthError as err:
            if _debug_requested(ctx):
                _print_traceback(err)
            _fail(str(err) or type(err).__name__, EXIT_BAD_INPUT if isinstance(err, _BAD_INPUT) else EXIT_FAILED)
        except Exception as err:
            command = " ".join(filter(None, (_command_name(ctx), ctx.invoked_subcommand)))
            if _debug_requested(ctx):
                _print_traceback(err)
                hint = "the traceback is above"
            else:
                hint = "rerun with --debug for the traceback"
            _fail(f"{command}: unexpected {type(err).__name__}{_where(err)}; {hint} (fedhealth --debug "
                  f"{command.removeprefix('fedhealth ')} ...)", EXIT_FAILED)


def _print_traceback(err: BaseException) -> None:
    """The traceback as Python prints it: frames and lines only, never local variables."""
    import traceback

    err_console.print("".join(traceback.format_exception(err)).rstrip(), markup=False, highlight=False,
                      soft_wrap=True)


app = typer.Typer(cls=_Guarded, add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Privacy-preserving federated learning across hospitals.")


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", envvar="FEDHEALTH_DEBUG",
                                        help="on an unexpected error, show its traceback (never local variables)")]
    = False,
) -> None:
    """Privacy-preserving federated learning across hospitals."""


def _interrupted(err: BaseException) -> None:
    """SIGINT or SIGTERM stopped the run: say where it stands and exit 130 at once.

    At once (`os._exit`): by now the run directory holds the `interrupted` state, Ray is shut down and its
    processes are gone; what is left is the interpreter's own teardown of torch, Ray and Flower, which took
    4 s on a loaded machine, and a stop must end promptly. Logs and the console are flushed first."""
    err_console.print(f"interrupted: {err}", style="bold yellow", markup=False, highlight=False, soft_wrap=True)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def _load(config: Path | None, overrides: list[str], trains: bool = False) -> StudyConfig:
    """The study, checked; `trains`: the command trains on it, so its hospitals' splits are built and checked
    too (`size_problems`: enough training records, a delta small enough for the smallest hospital)."""
    if config is None:
        _fail("--config is required (e.g. --config configs/default.toml)")
    try:
        cfg = load_config(config, overrides)
    except ConfigError as err:
        _fail(str(err))
    if trains:
        from fedhealth.data.hospitals import size_problems

        problems = size_problems(cfg)
        if problems:
            _fail("\n".join(f"{config}: {p}" for p in problems))
    return cfg


def _fmt(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and v != v) else f"{v:.3f}"


def _with_ci(value: Any, ci: list[float | None] | None) -> str:
    """0.848 [0.79, 0.90]: the figure to 3 decimals, its interval to 2 (the interval is that coarse)."""
    if ci is None or ci[0] is None or _fmt(value) == "—":
        return _fmt(value)
    return f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _print_undefined(rows: list[tuple[str, dict[str, Any]]], metric: str = "auroc") -> None:
    """Under a sweep or fairness table: which hospitals had no defined headline figure in which row (e.g. a
    one-class test side, or no model there), left out of that row's mean, worst and tier figures."""
    for label, scores in rows:
        missing = scores.get("undefined_hospitals") or []
        if missing:
            console.print(f"{label}: {figure_label(metric)} undefined at {', '.join(missing)} (its test records "
                          "cannot give it, or no model there); left out of this row's mean, worst and tier "
                          "figures", markup=False, highlight=False, soft_wrap=True)


def _headline_cells(scores: dict[str, Any], tiers: list[str], metric: str = "auroc") -> list[str]:
    """A sweep row's cells of the headline figure (all records, mean of hospitals, worst hospital, each tier),
    each with its interval where the scores carry one."""
    cells = [_with_ci(scores[k], scores.get(f"{k}_ci"))
             for k in (f"all_records_{metric}", f"mean_hospital_{metric}", f"worst_hospital_{metric}")]
    return [*cells, *(_with_ci(scores["by_tier"].get(t), scores.get("by_tier_ci", {}).get(t)) for t in tiers)]


def _interval_method(metric: str) -> str:
    if metric == "auroc":
        return "DeLong; a mean combines the hospitals' variances"
    return "bootstrap; a mean combines the hospitals' standard errors"


def _spread_cell(v: dict[str, Any] | None, signed: bool = False) -> str:
    if not v or v["mean"] is None:
        return "undefined" if v else "—"
    sign = "+" if signed else ""
    cell = f"{v['mean']:{sign}.3f} ± {v['sd']:.3f}" if v["sd"] is not None else f"{v['mean']:{sign}.3f}"
    runs = len(v.get("values", []))
    if v.get("defined_in", runs) < runs:  # undefined in some runs (a one-class side): say over how many
        cell += f" ({v['defined_in']} of {runs})"
    return cell


def print_seeds_table(result: dict[str, Any]) -> None:
    """Mean ± sd over the seeds of each hospital's AUROC per model, and of its gain over local-only."""

    n = len(result["seeds"])
    seeds = ", ".join(map(str, result["seeds"]))
    top = result.get("headline", "auroc")
    table = Table(title=f"{result['study']}: test {figure_label(top)}, mean ± sd over {n} seeds ({seeds})")
    table.add_column("hospital")
    models = result["models"]
    for key in models:
        table.add_column(key.replace("_", "-"), justify="right")
    gains = "gain" in result["overall"]
    if gains:
        table.add_column("gain over local-only", justify="right")
        table.add_column(f"gain beyond noise (of {n})", justify="right")
    for h in result["hospitals"]:
        extra = [_spread_cell(h.get("gain"), True), str(h["gain"]["distinguishable_in"])] if gains else []
        table.add_row(h["name"], *(_spread_cell(h[top][k]) for k in models), *extra)
    table.add_section()
    o = result["overall"]
    for name, figure, gain in (("mean of hospitals", f"mean_hospital_{top}", "mean_hospital_gain"),
                               ("all test records", top, "gain")):
        extra = [_spread_cell(o.get(gain), True), str(o[gain]["distinguishable_in"])] if gains else []
        table.add_row(name, *(_spread_cell(o[figure][k]) for k in models), *extra)
    console.print(table)
    console.print("[dim]sd: standard deviation over the seeds (each seed draws its own records, splits, initial "
                  "model and training); 'beyond noise': runs whose gain had a 95 % interval excluding zero; "
                  "(k of n): over the k runs where the figure is defined (see each run's summary for why).[/dim]")


def print_summary_table(summary: dict[str, Any]) -> None:

    top = summary.get("headline", "auroc")  # AUROC, or Harrell's C-index for a time-to-event study
    table = Table(title=f"{summary['study']}: test {figure_label(top)} per hospital ({summary['strategy']}, "
                        f"{summary['model']}, {summary['rounds']} rounds)")
    dp = "federated_no_dp" in summary["overall"][top]
    keys = [k for k in ("local_only", "federated", *(["federated_no_dp"] if dp else []), "pooled", "best_possible")
            if k in summary["overall"][top]]
    titles = {"local_only": "local-only", "federated": "federated (DP)" if dp else "federated",
              "federated_no_dp": "federated, no DP", "pooled": "pooled", "best_possible": "best possible"}
    for col in ("hospital", "tier", "region", "records"):
        table.add_column(col, justify="right" if col == "records" else "left")
    for key in keys:
        table.add_column(titles[key], justify="right")
    from fedhealth.reporting.report import gain_text

    gains = "gain" in summary["overall"]
    if gains:
        table.add_column("gain over local-only", justify="right")

    def cells(values: dict[str, Any], cis: dict[str, Any], gain: dict[str, Any] | None) -> list[str]:
        row = [_with_ci(values.get(k), cis.get(k)) for k in keys]
        return [*row, gain_text(gain)] if gains else row

    for h in summary["hospitals"]:
        row = cells(h[top], h.get(f"{top}_ci", {}), h.get("gain"))
        if h.get("undefined"):  # say "undefined" (with the reason under the table), never a bare dash
            row = ["undefined†" if c in ("—", "–") else c for c in row]
        table.add_row(h["name"], h["tier"], h["region"], str(h["records"]), *row)
    table.add_section()
    o = summary["overall"]
    table.add_row("mean of hospitals", "", "", "",
                  *cells(o[f"mean_hospital_{top}"], o.get(f"mean_hospital_{top}_ci", {}), o.get("mean_hospital_gain")))
    table.add_row("all test records", "", "", "", *cells(o[top], o.get(f"{top}_ci", {}), o.get("gain")))
    console.print(table)
    for h in summary["hospitals"]:
        for reason in (h.get("undefined") or {}).values():
            console.print(f"† {h['name']}: {reason}", markup=False, highlight=False, soft_wrap=True)
    if "intervals" in summary and top == "auroc":
        console.print("[dim]In brackets: 95 % intervals over the test records (AUROC: DeLong; gain: paired "
                      "DeLong). * the gain's interval excludes zero; without it the gain is not distinguishable "
                      "from zero on this test set.[/dim]")
    elif "intervals" in summary:
        what = {"c_index": "C-index: Harrell's, of the predicted risk of the event by the last horizon. ",
                "macro_auroc": "macro AUROC: the mean over classes of each class's one-vs-rest AUROC. ",
                "r2": "R²: 1 minus the model's squared error over the spread of the test values. "}.get(top, "")
        console.print(f"[dim]{what}In brackets: 95 % intervals over the test records (bootstrap; gain: paired "
                      "bootstrap). * the gain's interval excludes zero; without it the gain is not "
                      "distinguishable from zero on this test set.[/dim]")
    privacy = summary.get("privacy")
    if privacy and privacy["mode"] == "hospital":
        console.print(f"privacy spent: hospital-level DP, epsilon {privacy['epsilon']:.3f} at delta="
                      f"{privacy['delta']:g} over {privacy['rounds']} rounds (noise multiplier "
                      f"{privacy['noise_multiplier']:.3f}, update clipping norm {privacy['clipping_norm']:g})")
    elif privacy:
        t = Table(title=f"privacy spent: record-level DP-SGD, epsilon at delta={privacy['delta']:g} (RDP)")
        for col in ("hospital", "epsilon", "cap", "rounds trained", "stopped"):
            t.add_column(col, justify="left" if col in ("hospital", "stopped") else "right")
        refused = [h for h in privacy["hospitals"] if h.get("epsilon") is None]
        for h in privacy["hospitals"]:
            why = "budget" if "budget" in str(h.get("stop_reason")) else "declined"
            stopped = f"round {h['stopped_at_round']}: {why}" if h["stopped_at_round"] else ""
            # a ledger the hospital refused (or cannot read) has no epsilon to show: never the file's figure
            spent = f"{h['epsilon']:.3f}" if h.get("epsilon") is not None else f"{h.get('ledger', '?')} ledger"
            t.add_row(h["name"], spent, f"{h['cap']:g}", str(len(h["rounds_trained"])), stopped)
        console.print(t)
        for h in refused:
            console.print(f"ledger of {h['name']} {h.get('ledger', '?')} by the hospital, so no epsilon is reported "
                          f"for it: {h.get('ledger_problem')}", style="yellow", markup=False, highlight=False,
                          soft_wrap=True)


@app.command()
def simulate(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="study config (TOML)")] = None,
    out: Annotated[Path | None, typer.Option(help="run directory (default runs/<time>-<name>)")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue this run directory from its last round")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key: federation.rounds=5")] = None,
    rounds: Annotated[int | None, typer.Option(help="override federation.rounds")] = None,
    seed: Annotated[int | None, typer.Option(help="override seed")] = None,
    seeds: Annotated[str | None, typer.Option(
        help="run the study once per seed (42,43,44) into --out/seed-N and report mean ± sd")] = None,
    strategy: Annotated[str | None, typer.Option(help="override federation.strategy.name")] = None,
    model: Annotated[str | None, typer.Option(help="override model.name")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Flower's and Ray's logs")] = False,
) -> None:
    """Simulate a federation of hospitals on Flower's simulation engine and write a run directory."""
    from fedhealth import api
    from fedhealth.errors import RunInterrupted
    from fedhealth.experiments.simulate import SimulationError
    from fedhealth.runs.tracking import TrackingError

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    overrides = list(set_ or [])
    for key, value in (("federation.rounds", rounds), ("seed", seed), ("federation.strategy.name", strategy),
                       ("model.name", model)):
        if value is not None:
            overrides.append(f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}")
    if resume is not None and (config is not None or overrides):
        _fail("--resume continues a run with its own saved config: drop --config and overrides")
    if resume is None and config is None:
        _fail("--config is required (e.g. --config configs/default.toml)")
    if seeds is not None and (resume is not None or seed is not None):
        _fail("--seeds runs the study once per seed: drop --seed and --resume (resume each seed-N run on its own)")
    try:
        if seeds is not None:
            result = api.simulate_seeds(config, seeds, out, overrides=overrides, verbose=verbose, progress=console)
            print_seeds_table(result)
            console.print(f"runs and seeds.json: {Path(result['runs'][0]).parent}")
            return
        if resume is not None:
            run = api.resume(resume, verbose=verbose, progress=console)
        else:
            run = api.simulate(config, out, overrides=overrides, verbose=verbose, progress=console)
    except (ConfigError, rundir.RunDirError, TrackingError, errors.UsageError) as err:
        _fail(str(err))
    except SimulationError as err:
        _fail(str(err), code=1)
    except RunInterrupted as err:
        _interrupted(err)
    print_summary_table(run.summary)
    _announce_report(run.path, run.report_path)
    console.print(f"run directory: {run.path}")


def _report(run_dir: Path) -> None:
    from fedhealth import api

    _announce_report(run_dir, api.report(run_dir))


def _announce_report(run_dir: Path, path: Path | None) -> None:
    equity = rundir.read_json(run_dir / rundir.SUMMARY_FILE).get("equity", {})
    if equity.get("sentence"):
        console.print(equity["sentence"])
    console.print(f"report: {path}")


@app.command()
def status(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (simulation or deployment)")],
) -> None:
    """Where a run stands. Exit 0 completed, 1 failed or interrupted, 3 still running, 2 not a run directory
    (or its state.json is damaged: the message names it).

    "Interrupted": stopped by SIGINT or SIGTERM, or a state that says running although the server process that
    wrote it is gone (killed together with its SuperLink, say): such a run can be continued with `resume=true`
    / `--resume`.
    """
    try:
        line = rundir.describe_state(run_dir)
        state = rundir.read_state(run_dir)
    except (rundir.RunDirError, OSError, ValueError) as err:
        _fail(str(err))
    console.print(f"{run_dir}: {line}", highlight=False, soft_wrap=True)
    if state.get("status") == "completed":
        return
    raise typer.Exit(3 if state.get("status") == "running" and not rundir.interrupted(state) else 1)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by `fedhealth simulate`")],
    force: Annotated[bool, typer.Option("--force", help="replace an existing report.html and figures")] = False,
) -> None:
    """Build the study report (report.html and figures/*.png) from a run directory's files alone."""
    from fedhealth.reporting.report import REPORT_FILE, ReportError

    if (run_dir / REPORT_FILE).exists() and not force:
        _fail(f"{run_dir / REPORT_FILE}: exists (simulate writes it); pass --force to rebuild it and its figures")
    try:
        _report(run_dir)
    except (ReportError, ConfigError, rundir.RunDirError) as err:  # RunDirDamaged: a file named, line and all
        _fail(str(err))


@app.command()
def describe(
    config: Annotated[Path, typer.Option("--config", "-c", help="study config (TOML)")],
    epsilon: Annotated[float | None, typer.Option(
        help="each hospital's epsilon for this release (Gaussian noise, charged to its ledger); "
             "omit for exact statistics (simulation only)")] = None,
    out: Annotated[Path | None, typer.Option(help="run directory (default runs/<time>-<name>)")] = None,
    bins: Annotated[int | None, typer.Option(help="histogram bins per numeric column (default 20)")] = None,
    min_cell: Annotated[int | None, typer.Option(help="smallest count shown; smaller ones are withheld "
                                                      "(default 5)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key: dotted.key=value")] = None,
    report_into: Annotated[Path | None, typer.Option(help="a run directory of the same study: add Table 1 to "
                                                          "its report")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace a description in --report-into")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Flower's and Ray's logs")] = False,
) -> None:
    """Describe the cohort (Table 1; Kaplan-Meier for a time-to-event study) without pooling any record.

    One SecAgg+ round: each hospital sends counts, sums and histograms of its own records, noised for
    --epsilon and charged to its ledger first; the server unmasks only their sum."""
    from fedhealth import api
    from fedhealth.errors import RunInterrupted
    from fedhealth.experiments.describe import TABLE_CSV, TABLE_HTML, DescriptionError, describe_run, figure_text
    from fedhealth.experiments.simulate import SimulationError

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = api.description_study(config, epsilon=epsilon, bins=bins, min_cell=min_cell,
                                    overrides=list(set_ or []))
        if report_into is not None:
            api.check_report_into(cfg, report_into, force)  # before anything runs
        run_dir = rundir.create_run_dir(cfg, out)
    except (ConfigError, rundir.RunDirError, errors.UsageError) as err:
        _fail(str(err))
    console.print(f"{cfg.name}: describing {len(cfg.hospitals)} hospitals in one SecAgg+ round → {run_dir}")
    try:
        result = describe_run(cfg, run_dir)
    except (DescriptionError, SimulationError) as err:
        _fail(str(err), code=1)
    except RunInterrupted as err:
        _interrupted(err)
    table = Table(title=f"{cfg.name}: Table 1, {result.table.n:,} records from {len(result.hospitals)} hospitals "
                        f"({result.label})")
    for col in ("variable", "statistic", "value", "± (95 %)"):
        table.add_column(col, justify="left" if col in ("variable", "statistic") else "right")
    for f in result.table.figures:
        value = figure_text(f.value, f.unit, f.statistic) if f.suppressed is None else f"withheld ({f.suppressed})"
        error = figure_text(f.error, f.unit, f.statistic) if f.value is not None and f.error else ""
        table.add_row(f.variable, f.statistic, value, error)
    console.print(table)
    for d in result.declined:
        console.print(f"declined: hospital {d.get('hospital')} ({d.get('reason')})")
    console.print(f"written: {run_dir / TABLE_CSV}, {run_dir / TABLE_HTML}")
    if report_into is not None:
        import shutil

        shutil.copyfile(run_dir / rundir.DESCRIPTION_FILE, report_into / rundir.DESCRIPTION_FILE)
        _announce_report(report_into, api.report(report_into))


@app.command()
def contribution(
    config: Annotated[Path, typer.Option("--config", "-c", help="study config (TOML)")],
    budget: Annotated[int, typer.Option(help="most federations to run (coalitions of hospitals)")],
    out: Annotated[Path | None, typer.Option(help="directory for the coalition runs and contribution.json")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key: dotted.key=value")] = None,
    report_into: Annotated[Path | None, typer.Option(help="a run directory of the same study: add the "
                                                          "contribution to its report")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace a contribution.json in --report-into")] = False,
) -> None:
    """Each hospital's contribution (leave-one-out, Shapley): re-runs the federation on coalitions.

    Simulation only: in a deployment every coalition would spend its members' privacy budget again."""
    from fedhealth import api
    from fedhealth.errors import RunInterrupted

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = _load(config, list(set_ or []), trains=True)
    _fresh_folder(out, config)
    if report_into is not None and (report_into / rundir.CONTRIBUTION_FILE).exists() and not force:
        _fail(f"--report-into {report_into}: holds a {rundir.CONTRIBUTION_FILE} already; pass --force to replace it")
    out = out or api.default_out_dir(cfg, "contribution")
    try:
        result = api.contribution(cfg, budget, out, report_into=report_into, progress=console)
    except ValueError as err:  # report_into's config (ConfigError) or study (RunDirError), the budget
        _fail(str(err))
    except RunInterrupted as err:
        _interrupted(err)
    name = figure_label(result["metric"])
    table = Table(title=f"{cfg.name}: contribution to the federated {name} ({result['method']}, "
                        f"{result['federations_run']} federations)")
    for col in ("hospital", "tier", "records", "leave-one-out", "Shapley", "± s.e."):
        table.add_column(col, justify="left" if col in ("hospital", "tier") else "right")
    for h in result["hospitals"]:
        table.add_row(h["name"], h["tier"], f"{h['records']:,}", f"{h['leave_one_out']:+.4f}", f"{h['shapley']:+.4f}",
                      f"{h['shapley_stderr']:.4f}")
    console.print(table)
    console.print(f"all hospitals: {name} {_fmt(result['grand_coalition_value'])}; "
                  f"none: {result['empty_coalition_value']}")
    console.print(f"written: {out / rundir.CONTRIBUTION_FILE}")
    if report_into is not None:
        from fedhealth.reporting.report import REPORT_FILE

        _announce_report(report_into, report_into / REPORT_FILE)


@app.command()
def sweep(
    config: Annotated[Path, typer.Option("--config", "-c", help="study config (TOML)")],
    epsilon: Annotated[str, typer.Option(help="target epsilons, comma-separated; inf = no DP")] = "0.5,1,2,4,8,inf",
    out: Annotated[Path | None, typer.Option(help="directory for the sibling runs, sweep.json and the figure")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key: dotted.key=value")] = None,
    audit_references: Annotated[int, typer.Option(help="reference models of each sibling's membership-inference "
                                                       "audit (0: no audit)")] = 3,
) -> None:
    """The privacy-utility curve: the same study at each target epsilon (record-level DP), side by side, each
    sibling's final model audited by membership inference (calibrated attack AUC, 0.5 = chance)."""
    from fedhealth import api
    from fedhealth.errors import RunInterrupted, UsageError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = _load(config, list(set_ or []), trains=True)
    if audit_references < 0:
        _fail(f"--audit-references {audit_references}: give 0 (no audit) or more")
    _fresh_folder(out, config)
    out = out or api.default_out_dir(cfg, "sweep")
    try:
        result = api.sweep(cfg, epsilon, out, audit_references=audit_references, progress=console)
    except UsageError as err:  # an epsilon that is not a positive number
        _fail(str(err))
    except RunInterrupted as err:
        _interrupted(err)
    m = result["metric"]
    table = Table(title=f"{cfg.name}: test {figure_label(m)} against target epsilon (record-level DP)")
    tiers = sorted({t for p in result["points"] for t in p["by_tier"]})
    audited = result["membership_inference"] is not None
    for col in ("epsilon", "all records", "mean of hospitals", "worst hospital", *tiers,
                *(["membership AUC"] if audited else [])):
        table.add_column(col, justify="right")
    for p in result["points"]:
        mia = [_auc_ci(p["membership_inference"]) if p["membership_inference"] else "—"] if audited else []
        table.add_row("∞ (no DP)" if p["epsilon"] is None else f"{p['epsilon']:g}", *_headline_cells(p, tiers, m),
                      *mia)
    for key in ("local_only", "pooled"):
        table.add_row(key.replace("_", "-"), *_headline_cells(result["references"][key], tiers, m),
                      *([""] if audited else []))
    console.print(table)
    _print_undefined([("ε " + ("∞" if p["epsilon"] is None else f"{p['epsilon']:g}"), p) for p in result["points"]]
                     + [(k.replace("_", "-"), result["references"][k]) for k in ("local_only", "pooled")], m)
    console.print(f"[dim]In brackets: 95 % intervals over the test records ({_interval_method(m)}). The worst "
                  "hospital's is its own and does not allow for its being picked as the worst.[/dim]")
    console.print(f"written: {out / rundir.SWEEP_FILE}, {out / rundir.PRIVACY_UTILITY_FIGURE}")


@app.command()
def fairness(
    config: Annotated[Path, typer.Option("--config", "-c", help="study config (TOML), without DP")],
    q: Annotated[str, typer.Option(help="q values for q-FedAvg, comma-separated")] = "0.5,1,2",
    qffl_learning_rate: Annotated[float | None, typer.Option(
        help="q-FedAvg's 1/L; default: federation.strategy.qffl_learning_rate of the config")] = None,
    out: Annotated[Path | None, typer.Option(help="directory for the sibling runs and fairness.json")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key: dotted.key=value")] = None,
) -> None:
    """Is q-FedAvg fairer than FedAvg here? The same study under FedAvg and q-FedAvg at each q, side by side:
    worst-hospital, mean and overall test AUROC (sibling federations, as `sweep` runs them)."""
    from datetime import datetime

    from fedhealth.experiments.fairness import FAIRNESS_FILE, compare_strategies

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = _load(config, list(set_ or []), trains=True)
    try:
        values = [float(v) for v in q.split(",") if v.strip()]
    except ValueError:
        _fail(f"--q {q!r}: give numbers separated by commas, e.g. 0.5,1,2")
    if any(v < 0 for v in values):
        _fail(f"--q {q!r}: q must be 0 or more")
    _fresh_folder(out, config)
    out = out or Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.name}-fairness"
    try:
        result = compare_strategies(cfg, values, out, qffl_learning_rate)
    except ValueError as err:
        _fail(str(err))
    m = result["metric"]
    table = Table(title=f"{cfg.name}: FedAvg against q-FedAvg (test {figure_label(m)})")
    for col in ("strategy", "worst hospital", "mean of hospitals", "all records", "spread"):
        table.add_column(col, justify="right")
    for r in result["runs"]:
        table.add_row(r["strategy"] if r["q"] is None else f"q-FedAvg q={r['q']:g}",
                      *(_with_ci(r[k], r.get(f"{k}_ci")) for k in (f"worst_hospital_{m}", f"mean_hospital_{m}",
                                                                      f"all_records_{m}")), _fmt(r[f"spread_{m}"]))
    console.print(table)
    _print_undefined([(r["strategy"] if r["q"] is None else f"q-FedAvg q={r['q']:g}", r) for r in result["runs"]]
                     + [("local-only", result["local_only"])], m)
    console.print(f"[dim]In brackets: 95 % intervals over the test records ({_interval_method(m)}). The worst "
                  "hospital's is its own and does not allow for its being picked as the worst.[/dim]")
    console.print(f"written: {out / FAIRNESS_FILE}")


@app.command("audit-privacy")
def audit_privacy(
    run_dir: Annotated[Path, typer.Argument(help="a completed simulation run directory")],
    references: Annotated[int, typer.Option(help="reference models for the calibrated attack")] = 3,
    seed: Annotated[int | None, typer.Option(help="seed of the reference draws and bootstrap (default: study's)")]
    = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing privacy_audit.json")] = False,
) -> None:
    """Membership-inference audit of the final model: can an attacker tell a hospital's training records
    from its held-out ones? Attack AUC per hospital and overall (0.5 = chance), written to
    RUN_DIR/privacy_audit.json and the report. Simulation only: it needs the records themselves."""
    from fedhealth.experiments.privacy_audit import AUDIT_FILE, AuditError, audit_run

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = audit_run(run_dir, references=references, seed=seed, force=force)
    except (AuditError, rundir.RunDirError, ConfigError) as err:
        _fail(str(err))
    print_audit_table(result)
    console.print(f"written: {run_dir / AUDIT_FILE}")
    from fedhealth.reporting.report import REPORT_FILE

    if (run_dir / REPORT_FILE).is_file():  # the run has a report: add the audit's section to it
        _report(run_dir)


def _auc_ci(attack: dict[str, Any]) -> str:
    return f"{attack['auc']:.3f} [{attack['ci_low']:.3f}, {attack['ci_high']:.3f}]"


def print_audit_table(result: dict[str, Any]) -> None:
    """One row per hospital and one for all records: the two attacks' AUC with their intervals."""
    level = f"{result['overall']['attacks']['loss']['confidence']:.0%}"
    table = Table(title=f"{result['study']}: membership-inference attack AUC (0.5 = chance; {level} interval)")
    for col in ("hospital", "members", "non-members", "epsilon", "loss attack", "calibrated attack"):
        table.add_column(col, justify="left" if col == "hospital" else "right")
    for h in result["hospitals"]:
        a = h["attacks"]
        table.add_row(h["name"], str(a["loss"]["members"]), str(a["loss"]["non_members"]), _fmt(h["epsilon"]),
                      _auc_ci(a["loss"]), _auc_ci(a["calibrated"]))
    table.add_section()
    a = result["overall"]["attacks"]
    table.add_row("all records", str(a["loss"]["members"]), str(a["loss"]["non_members"]), "",
                  _auc_ci(a["loss"]), _auc_ci(a["calibrated"]))
    console.print(table)
    console.print("membership leaks measurably (an interval lies above 0.5)" if result["overall"]["leak_detected"]
                  else "no leak measurable by these attacks at this sample size (not a proof of privacy)")


@app.command()
def synth(
    config: Annotated[Path, typer.Option("--config", "-c", help="study config (TOML)")],
    out: Annotated[Path, typer.Option(help="directory for one CSV per hospital")],
    force: Annotated[bool, typer.Option("--force", help="replace files of the same names in --out")] = False,
) -> None:
    """Write each hospital's synthetic records as CSV, with the schema, the data dictionary and a config
    (<name>-files.toml) that simulates the same study from these files."""
    from fedhealth.data.export import study_files, write_synthetic_study

    cfg = _load(config, [])
    if cfg.from_files:
        _fail(f"{config}: this study already reads its hospitals from files; synth writes generated hospitals")
    if out.exists() and not out.is_dir():
        _fail(f"--out {out}: is a file, not a folder; choose a folder")
    files = study_files(cfg, out)
    for path in files.values():
        _refuse_inputs(path, "--out", [config])
    existing = [p.name for p in files.values() if p.exists()]
    if existing and not force:
        _fail(f"--out {out}: would replace {len(existing)} existing file(s) ({', '.join(existing[:5])}"
              f"{', ...' if len(existing) > 5 else ''}); pass --force to replace them, or choose another --out")
    paths = write_synthetic_study(cfg, out)
    console.print(f"wrote {len(paths)} hospital files, schema.toml, the data dictionary and "
                  f"{cfg.name}-files.toml to {out}")


@app.command()
def validate(
    schema: Annotated[Path, typer.Option(help="the study schema (TOML)")],
    data: Annotated[list[Path], typer.Option(help="a hospital's CSV or Parquet file (repeatable)")],
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the report(s) as JSON")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing --json file")] = False,
    max_bytes: Annotated[int | None, typer.Option(
        min=1, help="refuse a data file larger than this many bytes (default 2 GiB, or FEDHEALTH_MAX_DATA_BYTES)")
    ] = None,
) -> None:
    """Check hospital files against the study schema: rows accepted, rows rejected and why, and per column
    the missing rate and out-of-range count. Prints counts only, never a patient's value. Exit 0 when
    every file is usable, 1 when one is not, 2 when the schema or a file cannot be read. The verdict is the
    one a study's loading gives the same file (`check_hospital_file`), so what passes here trains."""
    import json

    from fedhealth.data.validation import DataFileError, check_hospital_file
    from fedhealth.study.schema import SchemaError, load_schema

    if json_out is not None:  # before any work: a report that cannot be written, or would replace a file
        _check_target(json_out, "--json", [schema, *data], force)
    try:
        study = load_schema(schema)
    except SchemaError as err:
        _fail(str(err))
    reports, usable = [], True
    for path in data:
        try:
            report = check_hospital_file(path, study, keep_values=False, max_bytes=max_bytes).report
        except DataFileError as err:
            _fail(str(err))
        reports.append(report.as_dict())
        usable &= report.ok
        for line in report.lines():
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        console.print("usable" if report.ok else "NOT usable: fix the errors above", style="green" if report.ok
                      else "bold red")
    if json_out is not None:
        rundir.atomic_write_text(json_out, json.dumps({"schema": study.study.name, "files": reports}, indent=2) + "\n")
    if not usable:
        raise typer.Exit(1)


from fedhealth.deployment.cli import app_app, audit_app, certs_app, deploy_app  # noqa: E402


@app.command()
def budget(
    ledger: Annotated[Path, typer.Argument(help="the hospital's privacy ledger (<ledger-dir>/<hospital>.json)")],
    policy: Annotated[Path | None, typer.Option(help="the hospital's site policy (its cap wins)")] = None,
    audit_log: Annotated[Path | None, typer.Option(help="cross-check against the hospital's audit log")] = None,
    audit_key: Annotated[Path | None, typer.Option(help="public key that signs the audit log")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Spent and remaining epsilon at this hospital, per study and in all, from its verified ledger.

    Exit 0 verified; 1 the ledger or the audit cross-check failed; 2 a file is missing or unreadable."""
    import json as json_lib

    from fedhealth.durable import regular_file_problem
    from fedhealth.privacy.budget import read_budget
    from fedhealth.privacy.ledger import LedgerError, LedgerUnreadable
    from fedhealth.study.policy import SitePolicy

    for label, path in (("ledger", ledger), ("policy", policy), ("audit log", audit_log), ("audit key", audit_key)):
        problem = regular_file_problem(path) if path is not None else None
        if problem:  # a FIFO or a device is never opened
            _fail(f"{path}: the {label} {problem}; give the path of the file itself")
        if path is not None and not path.is_file():
            _fail(f"{path}: {label} not found (no such file)")
    try:
        cap = SitePolicy.from_file(policy).max_epsilon if policy is not None else None
        result = read_budget(ledger, cap, audit_log, audit_key)
    except LedgerUnreadable as err:  # not a ledger at all (damaged, special, not JSON): bad input, exit 2
        _fail(str(err), 2)
    except LedgerError as err:
        _fail(f"the ledger does not verify, so no budget can be read from it: {err}", 1)
    except (ValueError, OSError) as err:
        _fail(str(err))
    if json_out:
        console.print_json(json_lib.dumps(result.as_dict()))
    else:
        table = Table(title=f"privacy budget of hospital {result.hospital} (epsilon at delta {result.delta:g})")
        for col in ("study", "unit", "releases", "rounds", "epsilon"):
            table.add_column(col, justify="right" if col in ("releases", "epsilon") else "left")
        for s in result.studies:
            rounds = f"{s.rounds[0]}–{s.rounds[-1]}" if len(s.rounds) > 1 else str(s.rounds[0])
            table.add_row(s.study, s.unit, str(s.releases), rounds, f"{s.epsilon:.3f}")
        for unit, eps in result.total.items():
            table.add_row("all studies", unit, "", "", f"{eps:.3f}", style="bold")
        console.print(table)
        console.print(f"record-level: spent {result.total.get('record', 0.0):.3f} of a cap of {result.cap:g}, "
                      f"{result.remaining:.3f} left", highlight=False)
        if result.audit:
            console.print(f"audit log: {result.audit}", highlight=False)
    for problem in result.problems:
        err_console.print(f"error: {problem}", style="bold red", markup=False, highlight=False)
    if result.problems:
        raise typer.Exit(1)


app.add_typer(certs_app, name="certs", cls=_Guarded)
app.add_typer(audit_app, name="audit", cls=_Guarded)
app.add_typer(app_app, name="app", cls=_Guarded)
app.add_typer(deploy_app, name="deploy", cls=_Guarded)


def main() -> None:
    """The `fedhealth` command. A simulation leaves torch, Flower and their threads loaded; tearing the
    interpreter down module by module after the work is done and every file is closed costs seconds and
    saves nothing, so the command exits the way a process does once Python's own exit handlers have run
    (what was registered to run at exit still runs, output is flushed, every run-directory file was
    already written durably and closed)."""
    try:
        app()
        code = 0
    except SystemExit as done:  # click ends every command with one, carrying the code the command chose
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    _exit_now(code)


def _exit_now(code: int) -> None:
    """What the interpreter's own exit does that matters (non-daemon threads joined, exit handlers run,
    logging and output flushed), then the process ends without the module-by-module teardown."""
    import atexit
    import contextlib
    import threading

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
