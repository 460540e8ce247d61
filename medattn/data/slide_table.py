"""The slide table of a MIL run: one CSV row per slide, with its patient and its target.

Columns (names from ``cfg.data``): ``slide_id``, ``patient_id`` and either a class ``label``
(classification) or ``time`` + ``event`` (survival; event 1 = observed, 0 = censored). An optional
``slide`` column gives the slide file, relative to the CSV's folder. Every problem is a one-line
:class:`~medattn.errors.DataError` naming the CSV, the row (file line number, header = line 1) and
the column.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from medattn.config.mil_schema import MilDataConfig
from medattn.errors import DataError


@dataclass(frozen=True)
class SlideRecord:
    """One slide of the table.

    ``label`` is the class index into :attr:`SlideTable.classes` (None for survival tables);
    ``time``/``event`` are None for classification tables; ``row`` is the CSV line (for messages).
    """

    slide_id: str
    patient_id: str
    label: int | None
    time: float | None
    event: int | None
    slide_path: Path | None
    row: int = 0


@dataclass
class SlideTable:
    """A validated slide table."""

    records: list[SlideRecord]
    classes: list[str]  #: class names in label order ([] for survival)
    task: str  #: "classification" | "survival"
    source: Path

    @property
    def slide_ids(self) -> list[str]:
        return [r.slide_id for r in self.records]

    @property
    def patient_ids(self) -> list[str]:
        return [r.patient_id for r in self.records]

    def strata(self) -> list[int]:
        """Per-slide stratification labels: the class index, or the event indicator for survival."""
        return [int(r.label if self.task == "classification" else r.event or 0) for r in self.records]

    def where(self, record: SlideRecord, column: str | None = None) -> str:
        """``"row 5, column 'label'"`` for messages."""
        return f"row {record.row}" + (f", column '{column}'" if column else "")


def _sort_classes(names: set[str]) -> list[str]:
    try:
        return sorted(names, key=float)  # "0", "1", "10" numerically
    except ValueError:
        return sorted(names)


def check_slide_id(slide_id: str, where: str, source: str | Path) -> str:
    """``slide_id`` if it is usable as a file name (no path separators, not ``.``/``..``)."""
    if not slide_id or slide_id in (".", "..") or any(c in slide_id for c in "/\\\0"):
        raise DataError(f"{where}, column 'slide_id': {slide_id!r} is not a valid slide id (it becomes a file "
                        "name: no '/', '\\' or '..')", source)
    return slide_id


def _float(value: str, where: str, source: Path) -> float:
    try:
        out = float(value)
    except ValueError:
        raise DataError(f"{where}: {value!r} is not a number", source) from None
    if not out >= 0:  # also rejects nan
        raise DataError(f"{where}: {value!r} must be a number >= 0", source)
    return out


def _event(value: str, where: str, source: Path) -> int:
    v = value.strip().lower()
    if v in ("1", "1.0", "true", "yes"):
        return 1
    if v in ("0", "0.0", "false", "no"):
        return 0
    raise DataError(f"{where}: {value!r} is not an event indicator (1 = event observed, 0 = censored)", source)


def read_slide_table(path: str | Path, data: MilDataConfig | None = None,
                     task: str = "classification") -> SlideTable:
    """Read and validate the slide CSV at ``path`` for ``task`` ("classification" or "survival").

    Classes are ``data.classes`` when given (a label outside them is an error), else the sorted
    distinct labels (numerically when all are numbers).

    Raises:
        DataError: missing file or column, empty value, unknown class, duplicate slide_id, a bad
            number, or a ``slide`` path that does not exist — naming the CSV, row and column.
    """
    data = data or MilDataConfig()
    source = Path(path)
    try:
        with open(source, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except FileNotFoundError:
        raise DataError("no such slide table (data.slides_csv)", source) from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read the slide table: {e}", source) from e
    header = [h.strip() for h in header if h is not None]
    targets = [data.label_column] if task == "classification" else [data.time_column, data.event_column]
    for col in ("slide_id", "patient_id", *targets):
        if col not in header:
            raise DataError(f"missing column '{col}' (columns: {', '.join(header) or 'none'})", source)
    if not rows:
        raise DataError("the slide table has no rows", source)
    raw_labels: list[str] = []
    parsed = []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        line = i + 2
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        for col in ("slide_id", "patient_id", *targets):
            if not row.get(col):
                raise DataError(f"row {line}, column '{col}': empty value", source)
        sid = check_slide_id(row["slide_id"], f"row {line}", source)
        if sid in seen:
            raise DataError(f"row {line}, column 'slide_id': duplicate slide_id {sid!r} (first on row {seen[sid]})",
                            source)
        seen[sid] = line
        slide_path = None
        if row.get("slide"):
            slide_path = Path(row["slide"])
            slide_path = slide_path if slide_path.is_absolute() else source.parent / slide_path
        time = event = None
        if task == "survival":
            time = _float(row[data.time_column], f"row {line}, column '{data.time_column}'", source)
            event = _event(row[data.event_column], f"row {line}, column '{data.event_column}'", source)
        else:
            raw_labels.append(row[data.label_column])
        parsed.append((sid, row["patient_id"], time, event, slide_path, line))
    classes: list[str] = []
    if task == "classification":
        classes = list(data.classes) or _sort_classes(set(raw_labels))
        if len(set(raw_labels)) < 2 and not data.classes:
            raise DataError(f"column '{data.label_column}': only one class ({raw_labels[0]!r}); classification "
                            "needs at least two", source)
    index = {c: k for k, c in enumerate(classes)}
    records = []
    for k, (sid, pid, time, event, slide_path, line) in enumerate(parsed):
        label = None
        if task == "classification":
            name = raw_labels[k]
            if name not in index:
                raise DataError(f"row {line}, column '{data.label_column}': unknown class {name!r} (data.classes: "
                                f"{', '.join(classes)})", source)
            label = index[name]
        records.append(SlideRecord(sid, pid, label, time, event, slide_path, line))
    return SlideTable(records, classes, task, source)


def find_slide_file(record: SlideRecord, slides_dir: str | Path | None,
                    source: str | Path | None = None) -> Path | None:
    """The record's slide file: its ``slide`` column, else ``<slides_dir>/<slide_id>.<any slide suffix>``.

    Raises:
        DataError: the ``slide`` column names a missing file (naming the CSV ``source`` and the row).
    """
    if record.slide_path is not None:
        if not record.slide_path.exists():
            raise DataError(f"row {record.row}, column 'slide': no such file: {record.slide_path}", source)
        return record.slide_path
    if slides_dir is None:
        return None
    from medattn.io.slide import SLIDE_SUFFIXES

    for suffix in SLIDE_SUFFIXES:
        for candidate in (Path(slides_dir) / f"{record.slide_id}{suffix}",
                          Path(slides_dir) / f"{record.slide_id}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def locate_inputs(table: SlideTable, bags_dir: str | Path,
                  slides_dir: str | Path | None = None) -> tuple[list[Path], list[Path]]:
    """``(bag paths, slides to extract)``: each record's ``<bags_dir>/<slide_id>.h5``, and the slide
    files of those whose bag is missing.

    Raises:
        DataError: a record has neither a bag nor a slide file (naming the CSV row and the bag path).
    """
    bags, to_extract = [], []
    for r in table.records:
        bag = Path(bags_dir) / f"{r.slide_id}.h5"
        bags.append(bag)
        if bag.is_file():
            continue
        slide = find_slide_file(r, slides_dir, table.source)
        if slide is None:
            hint = f" and no slide file in {slides_dir}" if slides_dir else \
                " (give data.slides_dir or a 'slide' column to extract it)"
            raise DataError(f"row {r.row}: slide {r.slide_id!r}: no feature bag {bag}{hint}", table.source)
        to_extract.append(slide)
    return bags, to_extract
