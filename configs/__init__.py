"""Shipped configs (YAML). Installed as ``medattn.configs``; ``medattn train NAME`` finds them by name."""
