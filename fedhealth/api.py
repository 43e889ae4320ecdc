"""The Python API: what the `fedhealth` command does, as functions that return results instead of printing.

The command is a thin layer over these functions (`fedhealth simulate` calls `simulate`, and so on), so a
study run from a notebook and one run from a terminal write the same run directory::

    import fedhealth as fh

    study = fh.load_study("configs/smoke.toml", {"federation.rounds": 1, "privacy.mode": "record",
                                                 "privacy.noise_multiplier": 1.0})
    run = fh.simulate(study, "runs/smoke-dp", progress=True)
    run.summary["overall"]["auroc"]["federated"]   # test AUROC of the federated model, all records
    run.metrics                                    # one row per round per hospital (pandas)
    run.ledgers["city-tertiary"][-1]["epsilon"]    # what that hospital has spent
    fh.Run.open("runs/smoke-dp")                   # the same run, read back from its directory

Everything here is simulation: the hospitals are simulated on this machine, their records included, so
the privacy figures say what a real deployment of the same study would spend, not what anyone has spent.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedhealth.data.study_file import load_config
from fedhealth.errors import UsageError
from fedhealth.runs import rundir
from fedhealth.study.config import ConfigError, StudyConfig, apply_overrides, parse_config

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

__all__ = ["Run", "contribution", "describe", "load_study", "report", "resume", "simulate", "simulate_seeds",
           "sweep"]

RoundHook = Callable[[int, dict[str, Any]], None]
Overrides = Mapping[str, Any] | Iterable[str] | None
DEFAULT_EPSILONS = "0.5,1,2,4,8,inf"


# ---- study ------------------------------------------------------------------------------------------------

def _toml(value: Any) -> str:
    """`value` as one line of TOML (tables inline), which `--set` parses back to the same value."""
    import tomli_w

    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, Mapping):
        keys = [tomli_w.dumps({str(k): 0}).partition(" = ")[0] for k in value]  # quoted where TOML needs it
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in zip(keys, value.values(), strict=True)) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).partition(" = ")[2].strip()  # TypeError: no TOML form (None, objects)


def _override_text(key: Any, value: Any) -> str:
    """`key=value` as `--set` takes it."""
    if not isinstance(key, str) or not key.strip() or "=" in key:
        raise ConfigError(f"override {key!r}: the key must be a dotted config key such as federation.rounds")
    if value is None:
        raise ConfigError(f"override {key}=None: a key cannot be unset; leave it out of the config for its default")
    try:
        return f"{key}={_toml(value)}"
    except TypeError:
        raise ConfigError(f"override {key}={value!r}: a {type(value).__name__} has no TOML form; give an int, "
                          "float, bool, str, list or dict") from None


def _override_items(overrides: Overrides) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [_override_text(k, v) for k, v in overrides.items()]
    if isinstance(overrides, str):
        raise ConfigError(f"overrides {overrides!r}: give a dict {{key: value}} or a list of 'key=value' strings")
    return [str(item) for item in overrides]


def load_study(path: str | Path, overrides: Overrides = None) -> StudyConfig:
    """Read, override and validate a study config (TOML), exactly as ``fedhealth simulate -c PATH --set ...``.

    Parameters
    ----------
    path
        The study's TOML file. Hospital data files it names are found relative to it.
    overrides
        ``{"dotted.key": value}``, applied before validation: ``{"federation.rounds": 5, "model.hidden": [8, 4],
        "privacy.mode": "record"}``. Values are Python objects (int, float, bool, str, list, dict) and are taken
        as they are: ``{"name": "123"}`` names the study "123", where ``--set name=123`` reads the integer 123.
        Otherwise they work as ``--set`` does (they go through its mechanism): a dotted key reaches into its
        section, sections that do not exist yet are created. A list of ``"key=value"`` strings is the command
        line's own form, each value read as TOML (bare words are strings).

    Returns
    -------
    StudyConfig
        The validated, frozen study: populations expanded, defaults filled, each hospital's data file hashed.
        Its ``privacy`` section says what each simulated hospital may spend (``max_epsilon``, per hospital
        ``policy``); nothing is spent by loading.

    Raises
    ------
    StudyConfigError
        (as ``fedhealth.study.config.ConfigError``) the file is missing or not TOML, an override is malformed, or the
        study cannot run; one line per problem, each naming the file, the key and the value (``... :
        federation.roundz = 3: unknown key``).
    """
    return load_config(path, _override_items(overrides))


def _check_sizes(cfg: StudyConfig) -> None:
    """Refuse, before the run directory exists, a study its hospitals' records cannot carry (too few training
    records, a delta too large for the smallest hospital): known only once every split is built."""
    from fedhealth.data.hospitals import size_problems

    problems = size_problems(cfg)
    if problems:
        raise ConfigError("\n".join(f"study {cfg.name}: {p}" for p in problems))


def _study(study: StudyConfig | str | Path, overrides: Overrides) -> StudyConfig:
    """A StudyConfig from a config object or file; overrides on an object are applied to its resolved form."""
    if not isinstance(study, StudyConfig):
        return load_study(study, overrides)
    items = _override_items(overrides)
    if not items:
        return study
    data = apply_overrides(study.model_dump(mode="json", exclude_none=True), items)
    return parse_config(data, f"study {study.name}")


# ---- runs -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """A simulation's run directory and what it says: the result of `simulate`, or `Run.open` of a directory.

    The run directory is the only source of truth (see `fedhealth.runs.rundir`); ``summary`` and ``state`` are read
    when the Run is made, ``metrics``, ``rounds`` and ``ledgers`` from its files on every access.

    Attributes
    ----------
    path : Path
        The run directory.
    state : str
        Where the run stands: ``"completed"``, ``"failed"``, ``"running"``, or ``"interrupted"`` (SIGINT or SIGTERM
        stopped it, or its state says running but the process that ran it is gone; `resume` continues it).
    summary : dict
        The study summary (``summary.json``): overall and per-hospital test AUROC of the federated model against
        local-only, pooled and best possible, equity and, with DP, the privacy spent (``summary["privacy"]``:
        each hospital's epsilon and cap, or the one hospital-level epsilon). Empty while the run is unfinished.
    report_path : Path or None
        The self-contained HTML report (``report.html``), or None when none was written.
    """

    path: Path
    state: str
    summary: dict[str, Any] = field(default_factory=dict, repr=False)
    report_path: Path | None = None

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """Load an existing run directory (written by `simulate` or ``fedhealth simulate``).

        Parameters
        ----------
        path
            The run directory.

        Returns
        -------
        Run
            The run as its files describe it now; equal to the `Run` that `simulate` returned for it.

        Raises
        ------
        RunDirectoryError
            (as ``fedhealth.runs.rundir.RunDirError``) ``path`` is not a run directory.
        """
        from fedhealth.reporting.report import REPORT_FILE

        path = Path(path)
        state = rundir.read_state(path)
        summary_file = path / rundir.SUMMARY_FILE
        report_file = path / REPORT_FILE
        return cls(path=path, state="interrupted" if rundir.interrupted(state) else str(state.get("status", "?")),
                   summary=rundir.read_json(summary_file) if summary_file.is_file() else {},
                   report_path=report_file if report_file.is_file() else None)

    @property
    def study(self) -> StudyConfig:
        """The study the run ran: its ``config.resolved.toml`` (population expanded, defaults filled)."""
        return load_config(self.path / rundir.CONFIG_FILE)

    @property
    def metrics(self) -> pd.DataFrame:
        """``metrics.jsonl`` as a DataFrame: one row per round per hospital, one column per key.

        The federated model of each round on each hospital's test split (``auroc``, ``auprc``, ``accuracy``,
        ``brier``, ``loss``, ``n``), whether the hospital trained and was aggregated, and with record-level DP
        its cumulative ``epsilon`` after the round (or why it ``declined``). ``n_train`` is None under secure
        aggregation: the record count is not sent in the clear.
        """
        import pandas as pd

        return pd.DataFrame(rundir.read_jsonl(self.path / rundir.METRICS_FILE))

    @property
    def rounds(self) -> pd.DataFrame:
        """``rounds.jsonl`` as a DataFrame: one row per round, which hospitals were aggregated, which failed or
        declined and why, and with hospital-level DP the study's epsilon after the round."""
        import pandas as pd

        return pd.DataFrame(rundir.read_jsonl(self.path / rundir.ROUNDS_FILE))

    @property
    def ledgers(self) -> dict[str, list[dict[str, Any]]]:
        """Each simulated hospital's privacy ledger (``privacy/<hospital>.json``): hospital name -> its entries.

        One entry per release the hospital made (round, noise multiplier, sample rate, steps, delta, clipping
        norm, unit ``record`` or ``hospital``), charged before the release left it; each entry's ``epsilon`` is
        the hospital's cumulative epsilon at ``delta`` after it, so the last entry's is what the hospital has
        spent. A hospital that released nothing under DP has no ledger and is absent (it spent nothing); a run
        without DP has none. The entries are returned as written; ``fedhealth budget`` verifies a ledger's chain.
        """
        ledgers: dict[str, list[dict[str, Any]]] = {}
        for file in sorted((self.path / rundir.PRIVACY_DIR).glob("*.json")):
            data = rundir.read_json(file)
            ledgers[str(data.get("hospital", file.stem))] = list(data.get("entries", []))
        return ledgers


@contextmanager
def _shown(cfg: StudyConfig, run_dir: Path, progress: bool | Console,
           on_round: RoundHook | None) -> Iterator[RoundHook | None]:
    """With `progress`: what runs, a bar of rounds on a terminal and each failed round; yields the round hook."""
    if not progress:
        yield on_round
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = progress if isinstance(progress, Console) else Console()
    done = rundir.last_completed_round(run_dir)
    console.print(f"[bold]{cfg.name}[/]: {len(cfg.hospitals)} hospitals, {cfg.federation.rounds} rounds, "
                  f"{cfg.federation.strategy.name}/{cfg.model.name} → {run_dir}"
                  + (f" (resuming after round {done})" if done else ""))
    if not cfg.federation.secure_aggregation.enabled:
        console.print("[yellow]secure aggregation is off: the server sees every hospital's update[/]")
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False,
                  disable=not (console.is_terminal or console.is_jupyter)) as bar:
        from fedhealth.metrics.headline import headline, label

        task = bar.add_task("federated rounds", total=cfg.federation.rounds, completed=done)

        top = headline(cfg.outcome_kind)

        def hook(server_round: int, info: dict[str, Any]) -> None:
            auc = info.get(f"{top}_mean")
            shown = "—" if auc is None or auc != auc else f"{auc:.3f}"
            bar.update(task, completed=server_round, description=f"round {server_round}: mean {label(top)} {shown}")
            if info.get("status") == "failed":
                console.print(f"[red]round {server_round} failed[/] (model unchanged): {info.get('failure')}")
            if on_round is not None:
                on_round(server_round, info)

        yield hook


def _run(cfg: StudyConfig, run_dir: Path, *, verbose: bool, progress: bool | Console, write_report: bool,
         on_round: RoundHook | None) -> Run:
    from fedhealth.experiments.simulate import SimulationError
    from fedhealth.experiments.simulate import simulate as simulate_study
    from fedhealth.runs.tracking import TrackingError

    with _shown(cfg, run_dir, progress, on_round) as hook:
        try:
            simulate_study(cfg, run_dir, on_round=hook, verbose=verbose)
        except (SimulationError, TrackingError, rundir.RunDirError):
            raise  # a damaged run-directory file is named by its error; resuming would meet it again
        except Exception as err:  # a crash inside Flower or a hospital: name it, the run dir stays resumable
            raise SimulationError(f"federation failed: {type(err).__name__}: {err}\nrun directory {run_dir} can "
                                  f"be resumed with: fedhealth simulate --resume {run_dir}") from err
    if write_report:
        report(run_dir)
    return Run.open(run_dir)  # the summary as summary.json holds it: NaN written as None, as Run.open reads it


def simulate(study: StudyConfig | str | Path, out: str | Path | None = None, *, overrides: Overrides = None,
             verbose: bool = False, progress: bool | Console = False, report: bool = True,
             on_round: RoundHook | None = None) -> Run:
    """Simulate a federation of hospitals on Flower's simulation engine, as ``fedhealth simulate`` does.

    Creates a fresh run directory holding the resolved config, runs every planned round (each checkpointed
    as it completes), trains the local-only and pooled references on the same splits, writes the summary
    and, unless ``report=False``, the HTML report.

    Parameters
    ----------
    study
        A `StudyConfig` (from `load_study`) or the path of a study config (TOML).
    out
        The run directory; it must not exist or be empty. Default ``runs/<time>-<study name>``.
    overrides
        Config overrides as for `load_study` (on a `StudyConfig`, applied to its resolved form).
    verbose
        Show Flower's and Ray's logs.
    progress
        Show what runs, a bar of rounds (on a terminal or in a notebook) and each failed round; a
        ``rich.console.Console`` to show them on.
    report
        Write ``report.html`` and ``figures/*.png`` into the run directory when the run completes.
    on_round
        Called after each round is checkpointed, as ``on_round(server_round, info)``; ``info`` is the round's
        row of ``rounds.jsonl`` (status, hospitals aggregated, ``auroc_mean``, ...). An exception it raises
        stops the federation as a crash would (`FederationError`; the run stays resumable).

    Returns
    -------
    Run
        The completed run: ``summary`` (what ``summary.json`` holds), ``metrics``, ``rounds``, ``ledgers``,
        ``report_path``.

    Raises
    ------
    StudyConfigError
        The study (file, overrides) cannot run; nothing was started.
    RunDirectoryError
        ``out`` exists and is not empty; nothing was started.
    FederationError
        (as ``fedhealth.experiments.simulate.SimulationError``) the federation did not complete every planned round, or
        crashed (the cause is chained); the run directory is marked failed and `resume` continues it.
    MissingExtraError
        Tracking was asked for and its extra is not installed.
    RunInterrupted
        SIGINT (Ctrl-C) or SIGTERM stopped it: the federation was wound down and Ray shut down, the run
        directory is marked ``interrupted`` at its last completed round, and `resume` continues it. A
        ``KeyboardInterrupt``, not a `FedhealthError`. Signals are handled only when called from the main thread.

    Notes
    -----
    With record-level DP (``privacy.mode = "record"``) every simulated hospital charges each release to its
    own ledger before sending it and declines rounds its cap cannot afford: ``Run.ledgers`` holds each
    hospital's epsilon spent and ``summary["privacy"]`` the spent epsilon against its cap. With
    hospital-level DP the summary has one epsilon for what the released models reveal about any one
    hospital's participation. Under secure aggregation (the default) the server sees only the sum of the
    hospitals' updates. A DP run also runs the same federation without DP beside it
    (``<run>/sibling-no-dp``) to price privacy, unless ``references.non_private_federation = false``.
    """
    cfg = _study(study, overrides)
    _check_sizes(cfg)
    run_dir = rundir.create_run_dir(cfg, Path(out) if out is not None else None)
    return _run(cfg, run_dir, verbose=verbose, progress=progress, write_report=report, on_round=on_round)


def parse_seeds(seeds: str | Iterable[int]) -> list[int]:
    """``"42,43,44"`` (or integers) as a list of at least two distinct non-negative seeds; UsageError if not."""
    items = [x.strip() for x in seeds.split(",")] if isinstance(seeds, str) else list(seeds)
    try:
        values = [int(x) for x in items if x != ""]
    except (TypeError, ValueError):
        raise UsageError(f"seeds {seeds!r}: give whole numbers separated by commas, e.g. 42,43,44") from None
    if len(values) < 2 or len(set(values)) != len(values) or min(values) < 0:
        raise UsageError(f"seeds {seeds!r}: give at least two different non-negative seeds, e.g. 42,43,44")
    return values


def simulate_seeds(study: StudyConfig | str | Path, seeds: str | Iterable[int], out: str | Path | None = None, *,
                   overrides: Overrides = None, verbose: bool = False, progress: bool | Console = False,
                   report: bool = True) -> dict[str, Any]:
    """The same study once per seed, as ``fedhealth simulate --seeds 42,43,44``: how much each figure moves.

    Parameters
    ----------
    study
        A `StudyConfig` or the path of a study config (TOML).
    seeds
        At least two distinct seeds: ``"42,43,44"`` or integers. Each replaces the study's ``seed``, which
        draws the generated records, the splits, the initial model and the training (and DP) randomness.
        A ``[population]`` study keeps the hospitals (names, sizes, tiers) its own seed drew, so that every
        run is the same federation.
    out
        A new or empty directory: one run directory per seed (``seed-42/``, ...) and ``seeds.json``.
        Default ``runs/<time>-<study name>-seeds``.
    overrides, verbose, progress, report
        As for `simulate`, for every run.

    Returns
    -------
    dict
        What ``seeds.json`` holds (`fedhealth.experiments.seeds`): mean, sd (ddof 1) and the values of each
        AUROC per model, overall and per hospital, and of each gain over local-only, with the number of runs
        in which that gain was distinguishable from zero.

    Raises
    ------
    UsageError
        Fewer than two seeds, a repeated or negative seed.
    RunDirectoryError
        ``out`` exists and is not empty; nothing was started.
    FederationError, RunInterrupted
        As for `simulate`; the runs already completed stay in ``out``.
    """
    from fedhealth.experiments.seeds import seed_summary

    cfg = _study(study, overrides)
    values = parse_seeds(seeds)
    root = Path(out) if out is not None else default_out_dir(cfg, "seeds")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise rundir.RunDirError(f"{root}: exists and is not an empty folder; --seeds writes one run directory per "
                                 "seed into a new or empty folder: choose another --out")
    studies = [_study(cfg, {"seed": seed}) for seed in values]  # every seed checked before the first run
    for each in studies:
        _check_sizes(each)
    runs = []
    for k, (seed, each) in enumerate(zip(values, studies, strict=True), start=1):
        _say(progress, f"[bold]seed {seed}[/] ({k} of {len(values)})")
        runs.append(simulate(each, root / f"seed-{seed}", verbose=verbose, progress=progress, report=report))
    result = seed_summary(values, [r.summary for r in runs], [str(r.path) for r in runs])
    rundir.write_json(root / "seeds.json", result)
    return result


def resume(run_dir: str | Path, *, verbose: bool = False, progress: bool | Console = False, report: bool = True,
           on_round: RoundHook | None = None) -> Run:
    """Continue a failed or interrupted run from its last completed round, as ``fedhealth simulate --resume``.

    The run continues with its own saved config (``config.resolved.toml``); the hospitals' ledgers are read
    from disk, so a release charged before the interruption is not charged again and epsilon composes over
    every round. Parameters as for `simulate`.

    Returns
    -------
    Run
        The completed run, as `simulate` returns it.

    Raises
    ------
    RunDirectoryError
        (as ``fedhealth.runs.rundir.RunDirError``) not a run directory, its config no longer matches the run that
        wrote it, it already completed, or a live process still runs it (also when its state says ``failed`` or
        ``interrupted``: a process that has not let go of the run may still train), or another process holds the
        run's lock (``driver.lock``: it drives the run now; the lock is taken before anything is written and
        held until the run ends, the driver lets go of it, or its process exits).
    FederationError, RunInterrupted
        As for `simulate`.
    """
    path = rundir.reopen_run_dir(Path(run_dir))
    cfg = load_config(path / rundir.CONFIG_FILE)
    return _run(cfg, path, verbose=verbose, progress=progress, write_report=report, on_round=on_round)


def report(run: Run | str | Path) -> Path:
    """Build the study report from a run directory's files alone, as ``fedhealth report RUN_DIR``.

    Parameters
    ----------
    run
        A `Run` or a run directory of a completed simulation.

    Returns
    -------
    Path
        ``report.html`` in the run directory: one self-contained page (figures inlined, nothing fetched);
        each figure is also written to ``figures/*.png``. With DP it shows each hospital's epsilon spent
        against its cap, and a membership-inference audit or contribution estimate when the run has one.

    Raises
    ------
    RunDirectoryError
        (as ``fedhealth.reporting.report.ReportError``) not a finished run directory.
    StudyConfigError
        The run's saved config cannot be read.
    """
    from fedhealth.reporting.report import build_report

    return build_report(run.path if isinstance(run, Run) else Path(run))


# ---- studies of many federations ----------------------------------------------------------------------------

def default_out_dir(cfg: StudyConfig, kind: str) -> Path:
    """Where `sweep` and `contribution` write when not told: ``runs/<time>-<study name>-<kind>``."""
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.name}-{kind}"


def _say(progress: bool | Console, text: str) -> None:
    if progress:
        from rich.console import Console

        (progress if isinstance(progress, Console) else Console()).print(text)


def _epsilons(epsilons: str | Iterable[float | None]) -> list[float]:
    import math

    from fedhealth.experiments.sweep import parse_epsilons

    try:
        if isinstance(epsilons, str):
            return parse_epsilons(epsilons)
        return parse_epsilons(",".join("inf" if e is None or math.isinf(float(e)) else repr(float(e))
                                       for e in epsilons))
    except (TypeError, ValueError) as err:
        raise UsageError(str(err) if isinstance(err, ValueError) else f"epsilons {epsilons!r}: {err}") from None


def sweep(study: StudyConfig | str | Path, epsilons: str | Iterable[float | None] = DEFAULT_EPSILONS,
          out: str | Path | None = None, *, overrides: Overrides = None, audit_references: int = 3,
          progress: bool | Console = False) -> dict[str, Any]:
    """The privacy-utility curve: the same study at each target epsilon, as ``fedhealth sweep``.

    One sibling federation per epsilon (record-level DP-SGD at that target; ``inf`` or None: no DP), same
    seed, hospitals, splits, model and rounds; each sibling's final model audited by membership inference.

    Parameters
    ----------
    study
        A `StudyConfig` or the path of a study config (TOML).
    epsilons
        Target epsilons: ``"0.5,1,2,4,8,inf"`` as the command's ``--epsilon`` takes them, or numbers
        (``math.inf`` or None: no DP).
    out
        Directory for the sibling runs, ``sweep.json`` and ``privacy_utility.png``. Default
        ``runs/<time>-<study name>-sweep``.
    overrides
        Config overrides as for `load_study`.
    audit_references
        Reference models of each sibling's membership-inference audit (0: no audit).
    progress
        Say what runs (on a ``rich.console.Console`` if one is given).

    Returns
    -------
    dict
        What ``sweep.json`` holds: ``points`` (per epsilon: test AUROC over all records, mean and worst
        hospital, per tier and hospital, and the membership-inference attack AUC with its interval, 0.5 =
        chance) and ``references`` (local-only and pooled, which do not depend on epsilon).

    Raises
    ------
    StudyConfigError
        The study cannot run.
    UsageError
        An epsilon that is not a positive number, or a negative ``audit_references``.

    Notes
    -----
    Each sibling's hospitals keep their own ledgers in its run directory (``<out>/eps-<epsilon>/privacy``):
    in a deployment every point of the curve would spend the hospitals' budget again. Simulation only.
    """
    from fedhealth.experiments.sweep import run_sweep

    cfg = _study(study, overrides)
    targets = _epsilons(epsilons)
    if audit_references < 0:
        raise UsageError(f"audit_references {audit_references}: give 0 (no audit) or more")
    out = Path(out) if out is not None else default_out_dir(cfg, "sweep")
    _say(progress, f"[bold]{cfg.name}[/]: {len(targets)} sibling federations → {out}")
    return run_sweep(cfg, targets, out, audit_references)


def contribution(study: StudyConfig | str | Path, budget: int, out: str | Path | None = None, *,
                 overrides: Overrides = None, report_into: Run | str | Path | None = None,
                 progress: bool | Console = False) -> dict[str, Any]:
    """Each hospital's contribution (leave-one-out, Shapley) by re-running the federation on coalitions, as
    ``fedhealth contribution``.

    Parameters
    ----------
    study
        A `StudyConfig` or the path of a study config (TOML).
    budget
        The most federations to run. Leave-one-out needs one per hospital plus one; exact Shapley needs
        2^n - 1; in between, Shapley is estimated from sampled permutations (with a standard error).
    out
        Directory for the coalition runs and ``contribution.json``. Default
        ``runs/<time>-<study name>-contribution``.
    overrides
        Config overrides as for `load_study`.
    report_into
        A run (directory) of the same study: the contribution is copied into it and its report rebuilt.
    progress
        Say what runs (on a ``rich.console.Console`` if one is given).

    Returns
    -------
    dict
        What ``contribution.json`` holds: per hospital its ``leave_one_out`` and ``shapley`` value (with
        ``shapley_stderr``) in the headline figure of the coalition's federated model on all test records
        (AUROC, C-index, macro AUROC or R² by the outcome kind; ``metric`` names it), the method and the
        federations run.

    Raises
    ------
    StudyConfigError
        The study, or ``report_into``'s saved config, cannot be read.
    RunDirectoryError
        (as ``fedhealth.runs.rundir.RunDirError``) ``report_into`` ran a different study.
    ValueError
        ``budget`` is below what leave-one-out needs, or leaves room for fewer than 2 sampled permutations.

    Notes
    -----
    Simulation only: in a deployment every coalition would spend its members' privacy budget again and
    expose which hospitals were in which run. Coalition runs aggregate in the clear and skip references.
    """
    from fedhealth.experiments.contribution import CONTRIBUTION_FILE, estimate_contributions

    cfg = _study(study, overrides)
    n = len(cfg.hospitals)
    out = Path(out) if out is not None else default_out_dir(cfg, "contribution")
    into = None if report_into is None else report_into.path if isinstance(report_into, Run) else Path(report_into)
    if into is not None and load_config(into / rundir.CONFIG_FILE).fingerprint() != cfg.fingerprint():
        raise rundir.RunDirError(f"{into}: that run was made from a different study config; contribution "
                                 "belongs in the report of the study it was measured on")
    _say(progress, f"[bold]{cfg.name}[/]: contribution of {n} hospitals within {budget} federations "
                   f"(leave-one-out needs {n + 1}, exact Shapley {2 ** n - 1}) → {out}")
    result = estimate_contributions(cfg, out, budget)
    if into is not None:
        import shutil

        shutil.copyfile(out / CONTRIBUTION_FILE, into / CONTRIBUTION_FILE)
        report(into)
    return result


# ---- cohort description ------------------------------------------------------------------------------------

def description_study(study: StudyConfig | str | Path, *, epsilon: float | None = None, bins: int | None = None,
                      min_cell: int | None = None, overrides: Overrides = None) -> StudyConfig:
    """The study as `fedhealth describe` runs it: one round, every hospital, no training privacy mode, and a
    `[describe]` table; the delta is the one the study's training charges at, so a hospital's ledger composes
    the description with its training.

    Parameters
    ----------
    study
        A `StudyConfig` or the path of a study config (TOML): its hospitals, schema and seed.
    epsilon
        Each hospital's epsilon for this release (Gaussian noise, charged to its ledger); None: exact
        statistics, which only simulated hospitals release.
    bins, min_cell
        Histogram bins per numeric column (default 20) and the smallest count shown (default 5).
    overrides
        As for `load_study`, applied before the description's settings.
    """
    from fedhealth.study.config import description_of

    return description_of(_study(study, overrides), epsilon=epsilon, bins=bins, min_cell=min_cell)


def describe(study: StudyConfig | str | Path, out: str | Path | None = None, *, epsilon: float | None = None,
             bins: int | None = None, min_cell: int | None = None, overrides: Overrides = None,
             report_into: Run | str | Path | None = None, force: bool = False):
    """Describe the cohort (Table 1, and Kaplan-Meier for a time-to-event study) as ``fedhealth describe``.

    One SecAgg+ round on Flower's simulation engine: each hospital computes counts, sums and histograms of its
    own records, adds Gaussian noise for `epsilon` (charged to its ledger before it leaves) and the server
    unmasks only the sum. Writes ``table1.csv``, ``table1.html``, ``description.json`` and for a time-to-event
    study ``kaplan_meier.csv`` and ``kaplan_meier.png`` into a new run directory.

    Parameters
    ----------
    study, epsilon, bins, min_cell, overrides
        As for `description_study`.
    out
        The run directory; it must not exist or be empty. Default ``runs/<time>-<study name>``.
    report_into
        A completed run (directory) of the same study (its name and hospitals): the description is copied into
        it and its report rebuilt with a "Cohort (Table 1)" section.
    force
        Replace a description already in `report_into`.

    Returns
    -------
    fedhealth.experiments.describe.Description
        The summed vector, the table, the curve, the hospitals that took part and those that declined.

    Raises
    ------
    RunDirectoryError
        ``out`` is not new or empty, or ``report_into`` ran another study or holds a description (without
        `force`); checked before anything runs.
    """
    from fedhealth.experiments.describe import describe_run

    cfg = description_study(study, epsilon=epsilon, bins=bins, min_cell=min_cell, overrides=overrides)
    into = None if report_into is None else report_into.path if isinstance(report_into, Run) else Path(report_into)
    if into is not None:
        check_report_into(cfg, into, force)
    run_dir = rundir.create_run_dir(cfg, Path(out) if out is not None else None)
    result = describe_run(cfg, run_dir)
    if into is not None:
        import shutil

        shutil.copyfile(run_dir / rundir.DESCRIPTION_FILE, into / rundir.DESCRIPTION_FILE)
        report(into)
    return result


def check_report_into(cfg: StudyConfig, into: Path, force: bool) -> None:
    """RunDirectoryError unless `into` is a run of the study `cfg` describes (same name and hospitals) and holds
    no description yet (or `force`)."""
    theirs = load_config(into / rundir.CONFIG_FILE)
    if theirs.name != cfg.name or [h.name for h in theirs.hospitals] != [h.name for h in cfg.hospitals]:
        raise rundir.RunDirError(f"{into}: that run is of another study (name or hospitals differ); a description "
                                 "belongs in the report of the study it describes")
    if (into / rundir.DESCRIPTION_FILE).exists() and not force:
        raise rundir.RunDirError(f"{into}: holds a {rundir.DESCRIPTION_FILE} already; pass force=True "
                                 "(--force) to replace it")
