"""The slide table: targets parsed per task, classes, and one-line errors naming CSV, row and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from medattn.config.mil_schema import MilDataConfig
from medattn.data.slide_table import locate_inputs, read_slide_table
from medattn.errors import DataError


def _csv(tmp_path: Path, text: str, name: str = "slides.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_classification_table_with_sorted_classes_and_slide_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.tif").write_bytes(b"x")
    path = _csv(tmp_path, "slide_id,patient_id,label,slide\na,p1,tumour,imgs/a.tif\nb,p1,normal,\nc,p2,tumour,\n")
    table = read_slide_table(path)
    assert table.classes == ["normal", "tumour"] and table.task == "classification"
    assert [(r.slide_id, r.patient_id, r.label, r.row) for r in table.records] == [
        ("a", "p1", 1, 2), ("b", "p1", 0, 3), ("c", "p2", 1, 4)]
    assert table.records[0].slide_path == tmp_path / "imgs" / "a.tif" and table.records[1].slide_path is None
    assert table.strata() == [1, 0, 1]


def test_numeric_labels_sort_numerically_and_config_classes_set_the_order(tmp_path):
    path = _csv(tmp_path, "slide_id,patient_id,label\na,1,10\nb,2,2\nc,3,1\n")
    assert read_slide_table(path).classes == ["1", "2", "10"]
    table = read_slide_table(path, MilDataConfig(classes=["10", "2", "1"]))
    assert [r.label for r in table.records] == [0, 1, 2]


def test_survival_table_with_custom_column_names(tmp_path):
    path = _csv(tmp_path, "slide_id,patient_id,os_months,dead\na,p1,12.5,1\nb,p2,30,0\n")
    table = read_slide_table(path, MilDataConfig(time_column="os_months", event_column="dead"), "survival")
    assert [(r.time, r.event, r.label) for r in table.records] == [(12.5, 1, None), (30.0, 0, None)]
    assert table.classes == [] and table.strata() == [1, 0]


@pytest.mark.parametrize(("text", "task", "expected"), [
    ("slide_id,label\na,x\n", "classification", "missing column 'patient_id'"),
    ("slide_id,patient_id,label\na,p1,x\nb,p2,\n", "classification", "row 3, column 'label': empty value"),
    ("slide_id,patient_id,label\na,p1,x\na,p2,y\n", "classification", "row 3, column 'slide_id': duplicate"),
    ("slide_id,patient_id,label\na,p1,x\nb,p2,x\n", "classification", "only one class"),
    ("slide_id,patient_id,label\n../a,p1,x\nb,p2,y\n", "classification", "row 2, column 'slide_id'"),
    ("slide_id,patient_id,time,event\na,p1,-3,1\n", "survival", "row 2, column 'time': '-3' must be a number"),
    ("slide_id,patient_id,time,event\na,p1,3,maybe\n", "survival", "row 2, column 'event': 'maybe'"),
    ("slide_id,patient_id,label\n", "classification", "no rows"),
])
def test_bad_tables_give_one_line_errors_naming_csv_row_and_column(tmp_path, text, task, expected):
    path = _csv(tmp_path, text)
    with pytest.raises(DataError) as e:
        read_slide_table(path, task=task)
    assert str(e.value).startswith(f"{path}: ") and expected in str(e.value) and "\n" not in str(e.value)


def test_a_missing_slide_file_matters_only_where_the_slide_is_needed(tmp_path):
    path = _csv(tmp_path, "slide_id,patient_id,label,slide\na,p1,x,gone.svs\nb,p2,y,gone2.svs\n")
    table = read_slide_table(path)  # evaluation and training from existing bags never open the slides
    assert table.records[0].slide_path == tmp_path / "gone.svs"
    (tmp_path / "bags").mkdir()
    (tmp_path / "bags" / "a.h5").write_bytes(b"")
    with pytest.raises(DataError) as e:
        locate_inputs(table, tmp_path / "bags")  # b has no bag, so its slide is needed
    assert str(e.value) == f"{path}: row 3, column 'slide': no such file: {tmp_path / 'gone2.svs'}"


def test_unknown_class_and_missing_file(tmp_path):
    path = _csv(tmp_path, "slide_id,patient_id,label\na,p1,x\nb,p2,z\n")
    with pytest.raises(DataError, match=r"row 3, column 'label': unknown class 'z' \(data.classes: x, y\)"):
        read_slide_table(path, MilDataConfig(classes=["x", "y"]))
    with pytest.raises(DataError, match="no such slide table"):
        read_slide_table(tmp_path / "nope.csv")


def test_locate_inputs_finds_bags_and_slides_to_extract_or_names_the_missing_bag(tmp_path):
    path = _csv(tmp_path, "slide_id,patient_id,label\na,p1,x\nb,p2,y\nc,p3,y\n")
    table = read_slide_table(path)
    (tmp_path / "bags").mkdir()
    (tmp_path / "bags" / "a.h5").write_bytes(b"")
    (tmp_path / "wsi").mkdir()
    for name in ("b.svs", "c.tiff", "c.txt"):
        (tmp_path / "wsi" / name).write_bytes(b"")
    bags, extract = locate_inputs(table, tmp_path / "bags", tmp_path / "wsi")
    assert bags == [tmp_path / "bags" / f"{s}.h5" for s in "abc"]
    assert extract == [tmp_path / "wsi" / "b.svs", tmp_path / "wsi" / "c.tiff"]
    with pytest.raises(DataError, match=r"row 3: slide 'b': no feature bag .*b\.h5 \(give data.slides_dir"):
        locate_inputs(table, tmp_path / "bags", None)
