"""``medattn run WORKFLOW [-o RUN_DIR]``: run a workflow file's out-of-date stages."""

from __future__ import annotations

import argparse

from medattn.workflow.runner import run_workflow
from medattn.workflow.spec import load_workflow


def cmd_run(a: argparse.Namespace) -> int:
    wf = load_workflow(a.workflow, a.set)
    result = run_workflow(wf, a.output, from_stage=a.from_stage, only=a.only, force=a.force, dry_run=a.dry_run,
                          progress=not a.no_progress)
    if a.dry_run:
        print(f"dry run: {len(result.ran)} stage(s) would run, {len(result.skipped)} up to date; nothing written")
    else:
        print(f"{len(result.ran)} stage(s) ran, {len(result.skipped)} up to date → {result.run_dir}")
        print(f"index:    {result.run_dir / 'index.html'}\nmanifest: {result.run_dir / 'manifest.json'}")
    return 0


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``run`` command to the ``medattn`` sub-command parsers."""
    r = sub.add_parser("run", parents=[common], help="run a workflow (cached, resumable stages)",
                       description="Run the stages of a workflow file that are out of date.")
    r.add_argument("workflow", help="workflow YAML file, or the name of a shipped workflow (workflows/)")
    r.add_argument("-o", "--output", default=None, help="run folder (default: runs/<workflow name>)")
    r.add_argument("--from", dest="from_stage", metavar="STAGE", default=None,
                   help="re-run STAGE, then the later stages that are out of date (those reading STAGE "
                        "re-run too); earlier stages are not run")
    r.add_argument("--only", metavar="STAGE", default=None, help="re-run only STAGE (its inputs must exist)")
    r.add_argument("--force", action="store_true", help="re-run every selected stage even if up to date")
    r.add_argument("--dry-run", action="store_true", help="print what would run and why; run nothing")
    r.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   help="override a stage setting: STAGE.params.KEY=V, STAGE.inputs.KEY=PATH, or for a train "
                        "stage STAGE.config.KEY=V (e.g. model.config.train.epochs=5); repeatable")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=cmd_run)
    return r
