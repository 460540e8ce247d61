"""medattn: attention-based medical image analysis in one pipeline.

Stages (each a sub-package): ``io`` (readers/writers with geometry), ``data`` (datasets,
transforms, synthetic generators), ``models`` (registry and networks), ``engine`` (training,
checkpoints, inference), ``evaluate`` (metrics). ``medattn.cli`` is the command line.
"""

__version__ = "0.1.0"
