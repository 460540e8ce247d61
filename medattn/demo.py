"""``medattn demo``: the ``seg3d_attention_unet`` workflow on generated phantoms, in a few minutes on CPU.

The demo is the shipped workflow ``workflows/seg3d_attention_unet.yaml`` (synth → train → infer →
evaluate → explain → report) run by :mod:`medattn.workflow` into one folder (default ``./medattn_demo``)::

    data/          synthetic dataset (dataset.json, imagesTr/, labelsTr/, imagesTs/, labelsTs/)
    run/           training run (config.yaml, log.csv, checkpoints/best.pt, last.pt)
    predictions/   predicted label maps in each input's geometry, one JSON manifest per case
    evaluation/    metrics.csv, summary.json, summary.txt
    explanation/   gate maps and occlusion sensitivity of the first test case (explanation.npz, report.html)
    report/        the self-contained report.html with the evaluation metrics
    logs/          one log per stage
    manifest.json  stages, durations, hashes, versions, device; index.html links everything

Stages are cached: running the demo again with the same settings does nothing but print the
results; an interrupted demo resumes where it stopped. Same as
``medattn run seg3d_attention_unet -o medattn_demo``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from medattn.evaluate import format_summary_table
from medattn.workflow import load_workflow, run_workflow

DEMO_WORKFLOW = "seg3d_attention_unet"


def run_demo(out_dir: str | Path = "medattn_demo", epochs: int | None = None, progress: bool = True,
             n_train: int = 8, n_test: int = 4) -> dict:
    """Run the demo workflow into ``out_dir`` and print the Dice table and output paths.

    Returns the evaluation summary (see medattn.evaluate).
    """
    out = Path(out_dir)
    overrides = [f"data.params.n_train={n_train}", f"data.params.n_test={n_test}",
                 f"explanation.inputs.input=@data/imagesTs/case_{n_train:03d}_0000.nii.gz"]
    if epochs is not None:
        overrides.append(f"run.config.train.epochs={epochs}")
    wf = load_workflow(DEMO_WORKFLOW, overrides)
    t0 = time.perf_counter()
    print(f"demo: workflow {wf.path} → {out}")
    result = run_workflow(wf, out, progress=progress)
    summary = json.loads((result.run_dir / "evaluation" / "summary.json").read_text(encoding="utf-8"))
    ckpt = result.run_dir / "run" / "checkpoints" / "best.pt"
    if "evaluation" not in result.ran:  # else the evaluate stage has just printed it
        print()
        print(format_summary_table(summary))
    print()
    print(f"demo finished in {time.perf_counter() - t0:.0f} s ({len(result.ran)} stage(s) ran, "
          f"{len(result.skipped)} up to date)")
    print(f"  dataset:     {out / 'data' / 'dataset.json'}")
    print(f"  run:         {out / 'run'}  (config.yaml, log.csv)")
    print(f"  checkpoint:  {ckpt}")
    print(f"  predictions: {out / 'predictions'}")
    print(f"  metrics:     {out / 'evaluation' / 'metrics.csv'}")
    print(f"  summary:     {out / 'evaluation' / 'summary.json'}")
    print(f"  report:      {out / 'report' / 'report.html'}  (gate maps, occlusion, metrics)")
    print(f"  index:       {out / 'index.html'}  (every stage's outputs and logs)")
    return summary
