"""Shipped workflow files (``*.yaml``), installed as ``medattn.workflows`` so that ``medattn run NAME`` and
``medattn demo`` find them in an installed package too (see medattn.workflow.spec.shipped_workflows)."""
