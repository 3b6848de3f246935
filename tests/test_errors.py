"""The one table from the C core's return codes to exceptions (scaleml/errors.py) covers csrc/core/errors.h."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import scaleml
from scaleml import _native, errors

ERRORS_H = Path(__file__).resolve().parent.parent / "csrc" / "core" / "errors.h"


def c_error_codes() -> dict[str, int]:
    """``SCALEML_*`` name -> value of the enum in csrc/core/errors.h."""
    text = re.sub(r"/\*.*?\*/", "", ERRORS_H.read_text(), flags=re.S)
    body = re.search(r"enum\s*\{(.*?)\}", text, flags=re.S)
    assert body, "no enum in errors.h"
    codes = dict(re.findall(r"(SCALEML_\w+)\s*=\s*(\d+)", body.group(1)))
    assert len(codes) == len([e for e in body.group(1).split(",") if e.strip()]), "an enum entry without a value"
    return {name: int(value) for name, value in codes.items()}


def test_the_header_enum_is_parsed():
    codes = c_error_codes()
    assert codes["SCALEML_OK"] == 0
    assert codes["SCALEML_ERR_MALFORMED"] == 3
    assert len(codes) >= 6


def test_every_c_error_code_has_an_exception_and_a_python_constant():
    codes = c_error_codes()
    for name, value in codes.items():
        assert getattr(errors, name[len("SCALEML_"):]) == value, name
        if value:
            assert value in errors.EXCEPTIONS, f"{name} = {value} is missing from scaleml.errors.EXCEPTIONS"
    assert set(errors.EXCEPTIONS) == {v for v in codes.values() if v}, "the table holds a code errors.h lacks"


@pytest.mark.parametrize("code,expected", [
    (errors.ERR_NOMEM, MemoryError),
    (errors.ERR_MPI, errors.ScaleMLError),
    (errors.ERR_MALFORMED, errors.CorruptBufferError),
    (errors.ERR_ARG, ValueError),
    (errors.ERR_TOO_LARGE, MemoryError),
])
def test_check_raises_the_class_of_the_table_with_the_c_message(code, expected):
    # a real C failure sets the message: a header shorter than 48 bytes is an argument error
    assert _native.lib.scaleml_compressed_header_crc(_native.ffi.NULL, 0, _native.ffi.new("uint32_t *")) == 4
    with pytest.raises(expected, match="at least 48 bytes") as info:
        errors.check(code)
    assert type(info.value) is expected


def test_check_accepts_ok_and_maps_unknown_codes_to_scaleml_error():
    errors.check(errors.OK)
    with pytest.raises(errors.ScaleMLError):
        errors.check(99)


def test_exception_hierarchy():
    assert issubclass(errors.CorruptBufferError, errors.MalformedMessageError)
    assert issubclass(errors.CorruptBufferError, ValueError)
    assert issubclass(errors.MalformedMessageError, errors.ScaleMLError)
    assert issubclass(errors.ScaleMLError, RuntimeError)


def test_one_set_of_classes_everywhere():
    # the names other modules import from _native and the package are the classes of scaleml.errors
    assert _native.ScaleMLError is errors.ScaleMLError is scaleml.ScaleMLError
    assert _native.MalformedMessageError is errors.MalformedMessageError is scaleml.MalformedMessageError
    assert _native.CorruptBufferError is errors.CorruptBufferError
    assert _native.check is errors.check
