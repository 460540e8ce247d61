"""medattn installs as a regular (non-editable) package, with kernels/ as medattn.kernels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_non_editable_install_ships_kernels_and_configs(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(ROOT)], check=True, capture_output=True,
                   timeout=300)
    assert (target / "medattn" / "kernels" / "__init__.py").is_file()
    assert not (target / "kernels").exists()
    code = (
        "import medattn, medattn.kernels, medattn.configs, importlib.resources as r;"
        "print(medattn.kernels.__file__);"
        "print(sorted(p.name for p in r.files('medattn.configs').iterdir() if p.name.endswith('.yaml')));"
        "print(sorted(p.name for p in r.files('medattn.workflows').iterdir() if p.name.endswith('.yaml')));"
        "print(medattn.kernels.selected_backend('cpu'))"
    )
    # -S: no site-packages, so neither the editable install nor the repo can be picked up
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(target)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    kernels_file, configs, workflows, backend = proc.stdout.splitlines()
    assert Path(kernels_file).is_relative_to(target)
    assert "demo_3d.yaml" in configs and backend == "reference"
    assert "seg3d_attention_unet.yaml" in workflows
