"""Running a workflow: decide which stages are out of date, run them in order, record everything.

Run folder layout (``RUN_DIR``, default ``runs/<workflow name>``)::

    <stage output>/        one folder per stage (its ``output``, default its name), complete or absent;
                           ``.medattn-stage.json`` inside records its cache key, inputs and duration
    logs/<stage>.log       everything the stage printed, with the traceback when it failed
    manifest.json          this run: stages, status, reasons, durations, hashes, versions, device
    index.html             links to every stage's output, log and main files
    .<output>.partial-<key>/  an interrupted or failed attempt (hidden; resumed or removed next time)

A stage runs in a temporary folder that is renamed onto its output folder only after the stage
function returned and its stamp was written, so an interrupted (Ctrl-C) or failed stage never leaves
a half-written output folder. A stage re-runs when its cache key changed (configuration, input
content, medattn version), its output is missing, a stage it reads re-ran, or it was selected with
``from_stage``/``only``/``force``. An attempt with the same key that was interrupted is resumed
(train continues from ``checkpoints/last.pt``, infer keeps its finished cases).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medattn import __version__
from medattn.errors import find_user_error
from medattn.io.atomic import atomic_write_json, atomic_write_text
from medattn.workflow.cache import STAMP, canonical_hash, change_reason, read_stamp, sha256_path, stage_key
from medattn.workflow.report import environment, write_index
from medattn.workflow.spec import Stage, Workflow, WorkflowError
from medattn.workflow.stagelog import stage_log
from medattn.workflow.stages import STAGE_KINDS, StageContext, fingerprint

__all__ = ["RunResult", "StageDecision", "run_workflow"]


@dataclass
class StageDecision:
    """Whether a stage runs in this invocation and why."""

    stage: Stage
    action: str  # "run", "skip" or "not selected"
    reason: str
    key: str | None = None
    config: dict[str, Any] | None = None  # medattn.workflow.stages.fingerprint
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class RunResult:
    """What :func:`run_workflow` did: the run folder, its manifest, the stages it ran and skipped."""

    run_dir: Path
    manifest: dict[str, Any]
    ran: list[str]
    skipped: list[str]


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / ".lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkflowError("another `medattn run` is using this run folder", run_dir) from None
        yield


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _input_path(run_dir: Path, wf: Workflow, stage: Stage, name: str) -> Path:
    ref = stage.inputs[name]
    if ref.stage is None:
        return Path(ref.path)
    return run_dir / wf.stage(ref.stage).output / ref.path


def _decide(wf: Workflow, run_dir: Path, stage: Stage, forced: str | None, runs: set[str],
            dry: bool = False) -> StageDecision:
    ran_up = [u for u in stage.upstream if u in runs]
    if ran_up and dry:  # the inputs it would read do not exist yet
        return StageDecision(stage, "run", f"stage {ran_up[0]!r} that it reads runs first")
    inputs = {}
    for name, ref in stage.inputs.items():
        path = _input_path(run_dir, wf, stage, name)
        if not path.exists():
            hint = f" (stage {ref.stage!r} has not finished; run it first)" if ref.stage else ""
            raise WorkflowError(f"stage {stage.name!r}: input {name}={ref}: {path} does not exist{hint}", wf.path)
        inputs[name] = {"ref": str(ref), "path": str(path), "sha256": sha256_path(path)}
    config = fingerprint(stage)
    config_hash = canonical_hash(config)
    key = stage_key(config_hash, {k: v["sha256"] for k, v in inputs.items()})
    d = StageDecision(stage, "run", "", key, config, inputs)
    stamp = read_stamp(run_dir / stage.output)
    if forced:
        d.reason = forced
    elif ran_up:
        d.reason = f"stage {ran_up[0]!r} that it reads re-ran"
    elif stamp is None:
        attempts = list(run_dir.glob(f".{stage.output}.partial-*"))
        d.reason = "its last attempt did not finish" if attempts else "it has no finished output"
    elif stamp["key"] != key:
        d.reason = change_reason(stamp, config, {k: v["sha256"] for k, v in inputs.items()})
    else:
        d.action, d.reason = "skip", "up to date"
    return d


def _swap_in(tmp: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _relocate(tmp: Path, final: Path, limit: int = 1 << 20) -> None:
    """Point the text records a stage wrote (JSON, YAML, CSV, TXT) at its final folder, not the temporary one."""
    for p in tmp.rglob("*"):
        if p.is_file() and p.suffix in (".json", ".yaml", ".yml", ".csv", ".txt") and p.stat().st_size < limit:
            text = p.read_text(encoding="utf-8", errors="surrogateescape")
            if str(tmp) in text:
                atomic_write_text(p, text.replace(str(tmp), str(final)))


def _attempt_dir(run_dir: Path, stage: Stage, key: str) -> tuple[Path, bool]:
    """The temporary folder for this attempt; True when it holds an unfinished attempt with this key."""
    tmp = run_dir / f".{stage.output}.partial-{key[:16]}"
    for stale in run_dir.glob(f".{stage.output}.partial-*"):
        if stale != tmp:
            shutil.rmtree(stale)
    resume = tmp.is_dir() and any(tmp.iterdir())
    tmp.mkdir(exist_ok=True)
    return tmp, resume


def _one_line(exc: BaseException) -> str:
    user = find_user_error(exc)
    if user is not None:
        return str(user)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def _execute(wf: Workflow, run_dir: Path, d: StageDecision, rec: dict[str, Any], progress: bool) -> None:
    stage = d.stage
    assert d.key is not None and d.config is not None
    log_path = run_dir / "logs" / f"{stage.name}.log"
    rec.update(status="running", started=_now(), log=str(log_path.relative_to(run_dir)))
    tmp, resume = _attempt_dir(run_dir, stage, d.key)
    t0 = time.perf_counter()
    inputs = {k: Path(v["path"]) for k, v in d.inputs.items()}
    ctx = StageContext(stage, inputs, tmp, resume=resume, progress=progress)
    try:
        with stage_log(log_path, f"{_now()} stage {stage.name} ({stage.kind}): {d.reason}") as log:
            try:
                links = STAGE_KINDS[stage.kind].run(ctx)
            except BaseException:
                log.write(traceback.format_exc())
                raise
    except KeyboardInterrupt:
        rec.update(status="interrupted", duration_s=round(time.perf_counter() - t0, 3),
                   error="interrupted (Ctrl-C); the next run resumes this stage")
        raise
    except Exception as exc:
        msg = _one_line(exc)
        rec.update(status="failed", duration_s=round(time.perf_counter() - t0, 3), error=msg)
        raise WorkflowError(f"stage {stage.name!r} ({stage.kind}) failed: {msg} — log: {log_path}", wf.path) from exc
    duration = round(time.perf_counter() - t0, 3)
    _relocate(tmp, run_dir / stage.output)
    stamp = {"stage": stage.name, "kind": stage.kind, "key": d.key, "config_hash": canonical_hash(d.config),
             "config": d.config, "inputs": d.inputs, "medattn_version": __version__, "finished": _now(),
             "duration_s": duration, "output_sha256": sha256_path(tmp), "links": links}
    atomic_write_json(tmp / STAMP, stamp)
    _swap_in(tmp, run_dir / stage.output)
    rec.update(status="ran", duration_s=duration, output_sha256=stamp["output_sha256"], links=links)


def _selection(wf: Workflow, from_stage: str | None, only: str | None, force: bool) -> dict[str, str | None]:
    """Stage name → forced-run reason (None: run only if out of date); stages not in it are not selected."""
    if from_stage and only:
        raise WorkflowError("give --from or --only, not both", wf.path)
    names = [s.name for s in wf.stages]
    if only:
        wf.stage(only)
        return {only: f"selected with --only {only}"}
    if from_stage:
        wf.stage(from_stage)
        i = names.index(from_stage)
        later = "forced (--force)" if force else None
        return {n: (f"selected with --from {from_stage}" if n == from_stage else later) for n in names[i:]}
    return {n: ("forced (--force)" if force else None) for n in names}


def run_workflow(wf: Workflow, run_dir: str | Path | None = None, *, from_stage: str | None = None,
                 only: str | None = None, force: bool = False, dry_run: bool = False, progress: bool = True,
                 echo: Callable[[str], None] = print) -> RunResult:
    """Run the out-of-date stages of ``wf`` in ``run_dir`` (default ``runs/<workflow name>``).

    Args:
        from_stage: re-run this stage and consider the stages after it; earlier stages are not run.
        only: re-run just this stage (the outputs it reads must exist).
        force: re-run every selected stage.
        dry_run: print what would run and why; run and write nothing.
        progress: let stages draw progress bars.
        echo: where the per-stage status lines go.

    Raises:
        WorkflowError: a missing input, or a stage failed (the message names the stage and its log).
        KeyboardInterrupt: after recording the interrupted stage; no half-written output is left.
    """
    run_dir = Path(run_dir if run_dir is not None else Path("runs") / wf.name).resolve()
    selected = _selection(wf, from_stage, only, force)
    if dry_run:
        return _dry_run(wf, run_dir, selected, echo)
    with _locked(run_dir):
        return _run(wf, run_dir, selected, progress, echo)


def _dry_run(wf: Workflow, run_dir: Path, selected: dict[str, str | None], echo: Callable[[str], None]) -> RunResult:
    runs: set[str] = set()
    ran, skipped = [], []
    for i, stage in enumerate(wf.stages, 1):
        head = f"[{i}/{len(wf.stages)}] {stage.name} ({stage.kind})"
        if stage.name not in selected:
            echo(f"{head}: not selected")
            continue
        d = _decide(wf, run_dir, stage, selected[stage.name], runs, dry=True)
        if d.action == "run":
            runs.add(stage.name)
            ran.append(stage.name)
            echo(f"{head}: would run — {d.reason}")
        else:
            skipped.append(stage.name)
            echo(f"{head}: skip — {d.reason}")
    return RunResult(run_dir, {}, ran, skipped)


def _previous(run_dir: Path, stage: Stage) -> dict[str, Any]:
    stamp = read_stamp(run_dir / stage.output) or {}
    return {k: stamp[k] for k in ("duration_s", "output_sha256", "links", "inputs", "key") if k in stamp} | (
        {"finished": stamp["finished"]} if "finished" in stamp else {})


def _run(wf: Workflow, run_dir: Path, selected: dict[str, str | None], progress: bool,
         echo: Callable[[str], None]) -> RunResult:
    for old in run_dir.glob(".*.old"):
        shutil.rmtree(old, ignore_errors=True)
    t_start = time.perf_counter()
    records = {s.name: {"name": s.name, "kind": s.kind, "output": s.output, "status": "pending", "reason": "",
                        "upstream": s.upstream} | _previous(run_dir, s) for s in wf.stages}
    manifest: dict[str, Any] = {
        "workflow": {"name": wf.name, "path": str(wf.path), "sha256": sha256_path(wf.path)},
        "medattn_version": __version__, "run_dir": str(run_dir), "started": _now(), "status": "running",
        "selection": {k: v for k, v in selected.items()}, **environment(), "stages": list(records.values())}

    def save(status: str | None = None) -> None:
        if status:
            manifest.update(status=status, finished=_now(), duration_s=round(time.perf_counter() - t_start, 3))
        atomic_write_json(run_dir / "manifest.json", manifest)
        write_index(run_dir, manifest)

    runs: set[str] = set()
    ran, skipped = [], []
    status = "failed"
    try:
        for i, stage in enumerate(wf.stages, 1):
            rec, head = records[stage.name], f"[{i}/{len(wf.stages)}] {stage.name} ({stage.kind})"
            if stage.name not in selected:
                rec.update(status="not selected")
                echo(f"{head}: not selected")
                continue
            d = _decide(wf, run_dir, stage, selected[stage.name], runs)
            rec.update(reason=d.reason, key=d.key, inputs=d.inputs)
            if d.action == "skip":
                rec["status"] = "skipped"
                skipped.append(stage.name)
                echo(f"{head}: up to date, skipped")
                continue
            echo(f"{head}: running — {d.reason}")
            save()
            _execute(wf, run_dir, d, rec, progress)
            runs.add(stage.name)
            ran.append(stage.name)
            echo(f"{head}: done in {rec['duration_s']:.1f} s → {run_dir / stage.output}")
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        save(status)
    return RunResult(run_dir, manifest, ran, skipped)
