"""User-facing errors: one line naming the file; found again behind wrapping exceptions."""

from medattn.errors import DataError, MedattnError, find_user_error


def test_message_names_the_path():
    err = DataError("cannot read image: truncated", "/data/a.nii.gz")
    assert str(err) == "/data/a.nii.gz: cannot read image: truncated"
    assert str(MedattnError("plain")) == "plain"


def test_found_behind_a_wrapping_runtime_error():
    inner = DataError("bad label", "x.nii.gz")
    try:
        try:
            raise inner
        except DataError as e:
            raise RuntimeError("applying transform LoadCased") from e
    except RuntimeError as outer:
        assert find_user_error(outer) is inner
    assert find_user_error(ValueError("not ours")) is None
