"""Package layout only; all metadata lives in pyproject.toml.

Two top-level folders of the repository ship as sub-packages of ``medattn``:
- ``kernels/`` as ``medattn.kernels``: the Triton kernels keep their own folder (with their tests
  and benchmarks beside them) while users import them as ``medattn.kernels``;
- ``configs/`` as ``medattn.configs``: the shipped YAML configs, so that ``medattn train NAME`` finds
  them in an installed package too;
- ``workflows/`` as ``medattn.workflows``: the shipped workflows (``medattn run NAME``, ``medattn demo``).
"""

from setuptools import find_packages, setup

medattn_packages = find_packages(include=["medattn", "medattn.*"])
kernel_packages = ["medattn." + p for p in find_packages(include=["kernels", "kernels.*"])]

setup(
    packages=[*medattn_packages, *kernel_packages, "medattn.configs", "medattn.workflows"],
    package_dir={"medattn.kernels": "kernels", "medattn.configs": "configs", "medattn.workflows": "workflows"},
    package_data={"medattn.configs": ["*.yaml"], "medattn.workflows": ["*.yaml", "README.md"],
                  "medattn": ["py.typed"]},
)
