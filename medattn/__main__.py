"""``python -m medattn`` runs the command line (also what ``torchrun -m medattn`` uses)."""

from medattn.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
