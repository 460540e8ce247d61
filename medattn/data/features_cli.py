"""``medattn features``: slides → tissue masks, thumbnails and HDF5 feature bags (resumable)."""

from __future__ import annotations

import argparse
import sys


def cmd_features(a: argparse.Namespace) -> int:
    from medattn.config.loader import load_mil_config
    from medattn.data.features import extract_features
    from medattn.errors import ConfigError

    cfg = load_mil_config(a.config, a.set)
    for flag, value in (("--mpp", a.mpp), ("--magnification", a.magnification)):
        if value is not None and not value > 0:
            raise ConfigError(f"{flag} must be > 0, got {value:g}")
    if a.mpp is not None:
        cfg.slide.mpp = a.mpp
    if a.magnification is not None:
        cfg.slide.magnification = a.magnification
    result = extract_features(a.slides, a.output, cfg, overwrite=a.overwrite, progress=not a.no_progress)
    print(f"{len(result.done)} extracted, {len(result.skipped)} skipped (already done), "
          f"{len(result.failed)} failed → {a.output}")
    for name, message in result.failed:
        print(f"medattn: error: {name}: {message}", file=sys.stderr)
    return 2 if result.failed else 0


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``features`` subcommand to ``sub``."""
    f = sub.add_parser("features", parents=[common], help="extract feature bags (HDF5) from whole-slide images",
                       description="Tissue detection, patching and patch encoding of whole-slide images into "
                       "OUT/<slide_id>.h5 (CLAM/TRIDENT layout), with OUT/masks/ (PNG + GeoJSON) and "
                       "OUT/thumbnails/. Finished slides are skipped; exit status 2 if any slide failed.")
    f.add_argument("slides", nargs="+", help="slide files or folders of slides")
    f.add_argument("-o", "--output", required=True, help="output folder for the bags")
    f.add_argument("--config", default=None, help="MIL config file (pipeline: mil); default: built-in defaults")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set encoder.batch_size=32 (repeatable)")
    f.add_argument("--mpp", type=float, default=None, help="µm per pixel at level 0 where the metadata has none")
    f.add_argument("--magnification", type=float, default=None,
                   help="objective power at level 0 where the metadata has none")
    f.add_argument("--overwrite", action="store_true", help="recompute bags that are already done")
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=cmd_features)
