"""Workflows: stages chained from a YAML file, cached by content hash, resumable (``medattn run``).

``spec`` parses and validates workflow files, ``stages`` holds the stage kinds, ``cache`` the content
hashes and cache keys, ``runner`` runs a workflow, ``report`` writes the run's ``index.html``.
"""

from medattn.workflow.runner import RunResult, run_workflow
from medattn.workflow.spec import Workflow, WorkflowError, load_workflow, shipped_workflows

__all__ = ["RunResult", "Workflow", "WorkflowError", "load_workflow", "run_workflow", "shipped_workflows"]
