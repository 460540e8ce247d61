"""The ``medattn`` command line. Each command parses its arguments and calls one function.

=========  =====================================================  ============================================
command    does                                                   calls
=========  =====================================================  ============================================
synth      synthetic phantoms, whole slides or feature bags       medattn.data.synth / wsi_synth / bag_synth
train      train a segmentation model, or cross-validate a MIL    medattn.engine.trainer.train,
           model (``pipeline: mil`` configs)                      medattn.engine.mil_trainer.train_mil
infer      segmentation of images, or slide-level MIL             medattn.engine.infer.infer,
           predictions with attention heatmaps                    medattn.engine.mil_infer.infer_slides
evaluate   Dice/IoU/HD95/NSD of label maps, or AUC/BA/F1/C-index  medattn.evaluate.evaluate_folders,
           of slide predictions                                   medattn.evaluate.mil_evaluate
features   whole-slide images → HDF5 feature bags (resumable)     medattn.data.features.extract_features
explain    counterfactuals (MIL) or gate maps/occlusion           medattn.explain.cli
           (segmentation) → a self-contained report.html
report     rebuild an explanation folder's report.html            medattn.report.build_report
demo       synth → train → infer → evaluate on generated data     medattn.demo.run_demo
run        a workflow file's stages, cached and resumable         medattn.workflow.run_workflow
watch      folder-watch batch inference with a ledger             medattn.watch.watch
info       versions, attention backends, models and configs       (here)
=========  =====================================================  ============================================

User errors print one line (``medattn: error: <file>: <problem>``) and exit with status 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from medattn import __version__
from medattn.data import features_cli, synth_cli
from medattn.errors import find_user_error
from medattn.explain import cli as explain_cli
from medattn.watch import cli as watch_cli
from medattn.workflow import cli as workflow_cli


def cmd_synth(a: argparse.Namespace) -> int:
    from medattn.data.synth import write_synthetic_dataset

    if (done := synth_cli.run(a)) is not None:  # --kind wsi | bags
        return done
    path = write_synthetic_dataset(a.out, spatial_dims=a.dims, n_train=a.n_train, n_test=a.n_test,
                                   n_organs=a.organs, file_ending=a.format, seed=a.seed, channels=a.channels,
                                   oblique=not a.no_oblique)
    print(f"wrote {path}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from medattn.config import load_config
    from medattn.engine.distributed import env_ranks
    from medattn.engine.trainer import train

    cfg = load_config(a.config, a.set)
    if getattr(cfg, "pipeline", None) == "mil":  # whole-slide MIL: patient-level k-fold cross-validation
        from medattn.engine.mil_trainer import train_mil_cli

        return train_mil_cli(cfg, resume=a.resume, progress=not a.no_progress)
    result = train(cfg, resume=a.resume, progress=not a.no_progress)
    if env_ranks()[0] != 0:
        return 0  # under torchrun, rank 0 reports
    print(f"run folder:      {result.run_dir}")
    print(f"best checkpoint: {result.best_checkpoint} (epoch {result.best_epoch}, val Dice "
          f"{result.best_metric:.4f})" if result.best_metric >= 0 else f"best checkpoint: {result.best_checkpoint}")
    print(f"last checkpoint: {result.last_checkpoint}")
    return 0


def cmd_infer(a: argparse.Namespace) -> int:
    from medattn.engine.infer import infer
    from medattn.engine.mil_checkpoint import is_mil_checkpoint

    if is_mil_checkpoint(a.checkpoint):  # whole-slide MIL: slides and/or .h5 bags
        from medattn.engine.mil_infer import infer_slides

        result = infer_slides(a.checkpoint, a.inputs, a.output, overwrite=a.overwrite, progress=not a.no_progress,
                              mpp=a.mpp, magnification=a.magnification, shard=a.shard, device=a.device)
    else:
        result = infer(a.checkpoint, a.inputs, a.output, overwrite=a.overwrite,
                       save_probabilities=a.save_probabilities or None, overlap=a.overlap, blend=a.blend,
                       tta=True if a.tta else None, sw_batch_size=a.sw_batch_size, device=a.device,
                       progress=not a.no_progress, shard=a.shard)
    print(f"{len(result.done)} predicted, {len(result.skipped)} skipped (already done), "
          f"{len(result.failed)} failed → {a.output}")
    for name, message in result.failed:
        print(f"medattn: error: {name}: {message}", file=sys.stderr)
    return 2 if result.failed else 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from medattn.evaluate import evaluate_folders, format_summary_table
    from medattn.evaluate.mil_evaluate import evaluate_cli, is_mil_predictions

    if is_mil_predictions(a.predictions):  # MIL: predictions.csv (or a folder with one) vs the slide CSV
        return evaluate_cli(a.predictions, a.references, a.output)
    labels = _labels_from(a.labels) if a.labels else None
    out = a.output or str(Path(a.predictions) / "evaluation")
    summary = evaluate_folders(a.predictions, a.references, out, labels=labels, nsd_tolerance=a.nsd_tolerance,
                               num_workers=a.workers)
    print(format_summary_table(summary))
    print(f"per-case metrics: {Path(out) / 'metrics.csv'}\nsummary:          {Path(out) / 'summary.json'}")
    return 0


def _labels_from(source: str) -> dict[int, str]:
    """Label names from a dataset description or a checkpoint."""
    if source.endswith((".pt", ".pth", ".ckpt")):
        from medattn.engine.checkpoint import labels_from_checkpoint, load_checkpoint

        return labels_from_checkpoint(load_checkpoint(source))
    from medattn.data.dataset import load_dataset

    return load_dataset(source).labels


def cmd_demo(a: argparse.Namespace) -> int:
    from medattn.demo import run_demo

    run_demo(a.output, epochs=a.epochs, progress=not a.no_progress)
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    import monai
    import torch

    from medattn.config import shipped_configs
    from medattn.kernels import available_backends
    from medattn.models import list_models

    print(f"medattn {__version__}  torch {torch.__version__}  monai {monai.__version__}")
    print(f"cuda available: {torch.cuda.is_available()}")
    print("attention backends: " + ", ".join(k for k, ok in available_backends().items() if ok))
    print("models: " + ", ".join(list_models()))
    print("shipped configs: " + ", ".join(sorted(shipped_configs())))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks instead of one-line errors")
    p = argparse.ArgumentParser(prog="medattn", parents=[common],
                                description="Attention-based medical image analysis.")
    p.add_argument("--version", action="version", version=f"medattn {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", parents=[common], help="write a synthetic dataset (phantoms, slides or bags)")
    s.add_argument("out", help="output folder (phantom: dataset.json, imagesTr/, labelsTr/, imagesTs/, labelsTs/; "
                               "wsi: slides/, annotations/, slides.csv; bags: bags/, slides.csv, instances.csv)")
    s.add_argument("--dims", type=int, choices=(2, 3), default=3)
    s.add_argument("--n-train", type=int, default=8)
    s.add_argument("--n-test", type=int, default=2)
    s.add_argument("--organs", type=int, default=2, help="number of foreground classes")
    s.add_argument("--channels", type=int, default=1)
    s.add_argument("--format", default=None, help="file ending: .nii.gz, .nrrd, .mha (3-D) or .png (2-D)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-oblique", action="store_true", help="identity directions instead of oblique ones")
    synth_cli.add_arguments(s)  # --kind wsi | bags and their options
    s.set_defaults(func=cmd_synth)

    t = sub.add_parser("train", parents=[common],
                       help="train a segmentation model, or cross-validate a MIL model (pipeline: mil)")
    t.add_argument("config", help="YAML config file, or the name of a shipped config (see `medattn info`)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue the run in output_dir from last.pt")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    i = sub.add_parser("infer", parents=[common], help="predict images with a checkpoint")
    i.add_argument("checkpoint")
    i.add_argument("inputs", nargs="+", help="image files, DICOM series folders, or folders of images")
    i.add_argument("-o", "--output", required=True, help="output folder")
    i.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default 0.5)")
    i.add_argument("--blend", choices=("gaussian", "constant"), default=None)
    i.add_argument("--tta", action="store_true", help="average over flips along every axis")
    i.add_argument("--sw-batch-size", type=int, default=None)
    i.add_argument("--save-probabilities", action="store_true")
    i.add_argument("--overwrite", action="store_true", help="recompute cases that are already done")
    i.add_argument("--device", default="auto")
    i.add_argument("--shard", default=None, metavar="I/N", help="predict only shard I of N (0-based) of the "
                   "cases, sorted by name; under torchrun the default is RANK/WORLD_SIZE")
    i.add_argument("--mpp", type=float, default=None, help="MIL: µm per pixel for slides whose metadata lacks it")
    i.add_argument("--magnification", type=float, default=None,
                   help="MIL: objective power for slides whose metadata lacks it")
    i.add_argument("--no-progress", action="store_true")
    i.set_defaults(func=cmd_infer)

    e = sub.add_parser("evaluate", parents=[common], help="score predictions against reference labels")
    e.add_argument("predictions", help="folder of predicted label maps; MIL: predictions.csv or a folder with one")
    e.add_argument("references", help="folder of reference label maps (matched by case name); MIL: the slide CSV")
    e.add_argument("-o", "--output", default=None, help="output folder (default: PREDICTIONS/evaluation)")
    e.add_argument("--labels", default=None, help="dataset.json or checkpoint to take class names from")
    e.add_argument("--nsd-tolerance", type=float, default=1.0, help="NSD tolerance in mm")
    e.add_argument("--workers", type=int, default=0)
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", parents=[common], help="synth → train → infer → evaluate on generated data")
    d.add_argument("-o", "--output", default="medattn_demo", help="demo folder (default: ./medattn_demo)")
    d.add_argument("--epochs", type=int, default=None, help="override the demo's number of epochs")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=cmd_demo)
    workflow_cli.add_parser(sub, common)  # medattn run

    n = sub.add_parser("info", parents=[common], help="versions, backends, models and shipped configs")
    n.set_defaults(func=cmd_info)
    watch_cli.add_parser(sub, common)  # medattn watch
    features_cli.add_parser(sub, common)  # medattn features
    explain_cli.add_parser(sub, common)  # medattn explain, medattn report
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medattn`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("medattn: interrupted (finished outputs and checkpoints are kept)", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        user = find_user_error(exc)
        if user is not None:
            print(f"medattn: error: {user}", file=sys.stderr)
            return 2
        print(f"medattn: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
