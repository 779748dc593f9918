"""Read a CTranslate2 `model.bin` into named numpy arrays, without the CTranslate2 runtime.

The layout (see CTranslate2's `models.cc` loader and `specs/model_spec.py` writer), all little-endian:

    uint32 binary_version
    [version >= 2] string spec_name, uint32 spec_revision
    uint32 num_variables, then per variable:
        string name, uint8 rank, uint32 dims[rank],
        [version >= 4] uint8 dtype_id, uint32 num_bytes
        [version <  4] uint8 item_size, uint32 num_items
        bytes data
    [version >= 3] uint32 num_aliases, then per alias: string alias, string target_name

where `string` is a uint16 length (counting a trailing NUL) followed by that many bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The newest layout this reader understands; CTranslate2 4.x writes 6.
MAX_BINARY_VERSION = 6

# Index = dtype id written by CTranslate2 (its DataType enum). bfloat16 has no numpy dtype: read as uint16.
_DTYPES_BY_ID: tuple[tuple[str, np.dtype[Any]], ...] = (
    ("float32", np.dtype("<f4")),
    ("int8", np.dtype("i1")),
    ("int16", np.dtype("<i2")),
    ("int32", np.dtype("<i4")),
    ("float16", np.dtype("<f2")),
    ("bfloat16", np.dtype("<u2")),
)
# Before version 4 only the item size was stored; these are the types it stood for.
_DTYPES_BY_ITEM_SIZE: dict[int, tuple[str, np.dtype[Any]]] = {
    4: ("float32", np.dtype("<f4")),
    2: ("int16", np.dtype("<i2")),
    1: ("int8", np.dtype("i1")),
}

# Far above any real rank or name; a bigger value means we are reading garbage, not a model.
_MAX_RANK = 8


class CT2FormatError(ValueError):
    """model.bin is truncated, corrupt or of a layout this reader does not know."""


@dataclass(slots=True)
class CT2Model:
    """The variables of one model.bin; aliases resolve to the variable they name."""

    path: Path
    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray]
    dtypes: dict[str, str]
    aliases: dict[str, str] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.variables or name in self.aliases

    def names(self) -> list[str]:
        """Every variable and alias name, sorted."""
        return sorted([*self.variables, *self.aliases])

    def get(self, name: str) -> np.ndarray:
        """The array stored under `name` (following an alias); KeyError names the file when absent."""
        target = self.aliases.get(name, name)
        try:
            return self.variables[target]
        except KeyError:
            raise KeyError(f"{self.path} has no variable {name!r}") from None

    def float32(self, name: str) -> np.ndarray:
        """The array under `name` as float32 (bfloat16 widened exactly; int types refused)."""
        target = self.aliases.get(name, name)
        array = self.get(name)
        dtype = self.dtypes[target]
        if dtype == "bfloat16":
            return (array.astype(np.uint32) << 16).view(np.float32)
        if dtype not in ("float32", "float16"):
            raise CT2FormatError(f"{self.path}: {name} is {dtype}, not a float type (quantized model?)")
        return array.astype(np.float32)


class _Cursor:
    """Sequential reads over the file's bytes that raise CT2FormatError instead of running off the end."""

    def __init__(self, data: memoryview, path: Path) -> None:
        self.data = data
        self.path = path
        self.offset = 0

    def take(self, size: int, what: str) -> memoryview:
        end = self.offset + size
        if size < 0 or end > len(self.data):
            raise CT2FormatError(
                f"{self.path} is truncated: needed {size} bytes for {what} at byte {self.offset}, "
                f"file has {len(self.data)}"
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def u8(self, what: str) -> int:
        return self.unpack("B", what)[0]

    def u16(self, what: str) -> int:
        return self.unpack("H", what)[0]

    def u32(self, what: str) -> int:
        return self.unpack("I", what)[0]

    def string(self, what: str) -> str:
        length = self.u16(f"{what} length")
        raw = bytes(self.take(length, what))
        if length == 0 or raw[-1] != 0:
            raise CT2FormatError(f"{self.path}: {what} at byte {self.offset - length} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as err:
            raise CT2FormatError(f"{self.path}: {what} at byte {self.offset - length} is not UTF-8") from err


def read_ct2_model(path: Path) -> CT2Model:
    """Parse a CTranslate2 model.bin; raises CT2FormatError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CT2FormatError(f"cannot read {path}: {err.strerror or err}") from err
    cursor = _Cursor(memoryview(data), path)

    version = cursor.u32("binary version")
    if not 1 <= version <= MAX_BINARY_VERSION:
        raise CT2FormatError(
            f"{path} is not a CTranslate2 model.bin this reader understands "
            f"(binary version {version}, expected 1..{MAX_BINARY_VERSION})"
        )
    spec_name, spec_revision = ("", 1)
    if version >= 2:
        spec_name = cursor.string("spec name")
        spec_revision = cursor.u32("spec revision")

    variables: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for index in range(cursor.u32("variable count")):
        name = cursor.string(f"name of variable #{index}")
        rank = cursor.u8(f"rank of {name}")
        if rank > _MAX_RANK:
            raise CT2FormatError(f"{path}: {name} claims rank {rank}; the file is corrupt")
        shape = cursor.unpack(f"{rank}I", f"shape of {name}") if rank else ()
        if version >= 4:
            type_id = cursor.u8(f"dtype of {name}")
            if type_id >= len(_DTYPES_BY_ID):
                raise CT2FormatError(f"{path}: {name} has unknown dtype id {type_id}; the file is corrupt")
            dtype_name, dtype = _DTYPES_BY_ID[type_id]
            num_bytes = cursor.u32(f"byte count of {name}")
        else:
            item_size = cursor.u8(f"item size of {name}")
            if item_size not in _DTYPES_BY_ITEM_SIZE:
                raise CT2FormatError(f"{path}: {name} has unknown item size {item_size}; the file is corrupt")
            dtype_name, dtype = _DTYPES_BY_ITEM_SIZE[item_size]
            num_bytes = cursor.u32(f"item count of {name}") * item_size
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if num_bytes != expected:
            raise CT2FormatError(
                f"{path}: {name} has shape {list(shape)} of {dtype_name} ({expected} bytes) "
                f"but stores {num_bytes} bytes; the file is corrupt"
            )
        raw = cursor.take(num_bytes, f"data of {name}")
        # Copy out of the file buffer so the arrays are writable and the bytes object can be freed.
        variables[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        dtypes[name] = dtype_name

    aliases: dict[str, str] = {}
    if version >= 3:
        for index in range(cursor.u32("alias count")):
            alias = cursor.string(f"alias #{index}")
            target = cursor.string(f"target of alias {alias}")
            if target not in variables:
                raise CT2FormatError(f"{path}: alias {alias} points to missing variable {target}")
            aliases[alias] = target
    if cursor.offset != len(data):
        raise CT2FormatError(
            f"{path}: {len(data) - cursor.offset} unexpected bytes after the last record; the file is corrupt"
        )
    return CT2Model(path, version, spec_name, spec_revision, variables, dtypes, aliases)
