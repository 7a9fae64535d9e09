"""The official CIFAR-10 batch files, read with little more memory than the pixels' destination.

Each file (`data_batch_1` .. `data_batch_5`, `test_batch`) is a pickle of a dict: `b"data"`, an
(N, 3072) uint8 array whose rows are images stored channel-major (3, 32, 32), and `b"labels"`,
N class indices. Unpickling one the usual way holds its pixels two or three times over (the
pickle's string, the bytes made of it, the array): 30 to 90 MB a file, on top of the decoded
dataset. Here a file is read in two steps instead:

1. `scan` unpickles everything but the pixels, with the pure-Python unpickler, which notes where
   the pixels' bytes lie in the file and skips them;
2. `copy_rows` streams those bytes, 64 rows at a time, into the caller's (N, 32, 32, 3)
   buffer, each image straight into the row the caller gives it.

Python 2 wrote the real files, so their pixels are one raw string (BINSTRING). A pickle that
Python 3 writes at protocol 2 carries bytes as `_codecs.encode(text, "latin1")`, the text stored
as UTF-8 (BINUNICODE), twice as long for the upper half of the byte values: it is streamed
through an incremental decoder. Only numpy's array rebuilders and `_codecs.encode` are allowed as
globals, so a batch file cannot run code.
"""

from __future__ import annotations

import codecs
import io
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from struct import unpack
from typing import Any, BinaryIO, ClassVar

import numpy as np

from cvexp.errors import UserError

SIDE = 32  # each image is 32 x 32 pixels, 3 channels
ROW_BYTES = 3 * SIDE * SIDE
_SKIP_BYTES = 1 << 16  # strings this long or longer are left in the file (only pixels are)
_CHUNK_ROWS = 64  # rows per copy step: 192 KiB of bounce buffer


def corrupt(name: str) -> UserError:
    """The one message for a batch file that cannot be read."""
    return UserError(
        f"The CIFAR-10 batch file {name} is truncated or corrupt; delete it and download it "
        "again (data.download=true) or replace it with a good copy."
    )


@dataclass(frozen=True)
class _Span:
    """A pickled string left in the file: where its bytes start, how many there are, and whether
    they are UTF-8 text standing for latin-1 bytes (a Python 3 pickle's bytes) or the bytes."""

    offset: int
    length: int
    text: bool


@dataclass(frozen=True)
class BatchScan:
    """A batch file without its pixels: its labels, and where and how its pixel rows lie."""

    name: str
    labels: np.ndarray  # (N,) int64
    pixels: _Span | bytes  # the rows' bytes: left in the file, or (a small file) in memory
    fortran: bool  # stored column-major (numpy's is_fortran); never so in the real files

    @property
    def rows(self) -> int:
        return len(self.labels)


class _ArrayStub:
    """A pickled ndarray, not built: numpy's `_reconstruct` and `__setstate__` stand-in, which
    keeps the state (shape, dtype, order, bytes) for `_array_state` to check."""

    def __init__(self, *args: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> Any:
    """`_codecs.encode` as a batch file may call it: on a string left in the file, only
    `encode(text, "latin1")`, a Python 3 pickle's bytes, which the span already stands for."""
    if isinstance(obj, _Span):
        if obj.text and codecs.lookup(encoding).name == "iso8859-1" and errors == "strict":
            return obj
        raise pickle.UnpicklingError(f"unsupported encoding of a long string: {encoding}")
    return codecs.encode(obj, encoding, errors)


class _StreamError(Exception):
    """The file itself failed (a disk error, an archive cut short): not the pickle's fault."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Guarded:
    """A binary file whose own errors are raised as `_StreamError`, so that they are told apart
    from a malformed pickle (whose unpickler raises EOFError, ValueError, ...)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file

    def read(self, size: int = -1) -> bytes:
        try:
            return self.file.read(size)
        except Exception as error:
            raise _StreamError(error) from error

    def readline(self) -> bytes:
        try:
            return self.file.readline()
        except Exception as error:
            raise _StreamError(error) from error

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        try:
            return self.file.seek(offset, whence)
        except Exception as error:
            raise _StreamError(error) from error

    def tell(self) -> int:
        try:
            return self.file.tell()
        except Exception as error:
            raise _StreamError(error) from error


class _Memo:
    """The unpickler's memo as a list: picklers number the entries 0, 1, 2, ..., and a dict would
    hold an int key and a hash slot beside each of a batch file's 20,000 entries."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.others: dict[int, Any] = {}  # an index out of sequence, from an unusual pickler

    def __setitem__(self, index: int, value: Any) -> None:
        if index == len(self.items) and index not in self.others:
            self.items.append(value)
        elif 0 <= index < len(self.items):
            self.items[index] = value
        else:
            self.others[index] = value

    def __getitem__(self, index: int) -> Any:
        if 0 <= index < len(self.items):
            return self.items[index]
        return self.others[index]  # KeyError, as the unpickler expects of a missing entry

    def __len__(self) -> int:
        return len(self.items) + len(self.others)


class _ScanUnpickler(pickle._Unpickler):  # the pure-Python one: its string opcodes can be changed
    """Unpickles a batch file but leaves its long strings in the file (as `_Span`s), refusing
    every global except numpy's array rebuilders and `_codecs.encode`."""

    GLOBALS: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): _ArrayStub,
        ("numpy._core.multiarray", "_reconstruct"): _ArrayStub,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _encode,
    }
    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: _Guarded) -> None:
        super().__init__(file, encoding="bytes")
        self._stream = file
        self.memo = _Memo()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return self.GLOBALS[(module, name)]

    def _string(self, length: int, *, text: bool) -> None:
        """Push a string of `length` bytes: a `_Span` when it is long and read straight from the
        file (outside a protocol-4 frame, which would already be in memory), else its value."""
        unframer = getattr(self, "_unframer", None)  # the pure unpickler's reader since 3.4
        if length >= _SKIP_BYTES and unframer is not None and unframer.current_frame is None:
            offset = self._stream.tell()
            self._stream.seek(length, io.SEEK_CUR)
            self.append(_Span(offset, length, text))
            return
        data = self.read(length)
        if len(data) != length:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(str(data, "utf-8", "surrogatepass") if text else data)

    def _load_binstring(self) -> None:  # Python 2's str: bytes, as encoding="bytes" reads it
        (length,) = unpack("<i", self.read(4))
        if length < 0:
            raise pickle.UnpicklingError("BINSTRING pickle has negative byte count")
        self._string(length, text=False)

    def _load_binbytes(self) -> None:
        self._string(unpack("<I", self.read(4))[0], text=False)

    def _load_binbytes8(self) -> None:
        self._string(unpack("<Q", self.read(8))[0], text=False)

    def _load_binunicode(self) -> None:
        self._string(unpack("<I", self.read(4))[0], text=True)

    def _load_binunicode8(self) -> None:
        self._string(unpack("<Q", self.read(8))[0], text=True)

    dispatch[pickle.BINSTRING[0]] = _load_binstring
    dispatch[pickle.BINBYTES[0]] = _load_binbytes
    dispatch[pickle.BINBYTES8[0]] = _load_binbytes8
    dispatch[pickle.BINUNICODE[0]] = _load_binunicode
    dispatch[pickle.BINUNICODE8[0]] = _load_binunicode8


def _array_state(stub: Any) -> tuple[tuple[int, ...], np.dtype, bool, _Span | bytes]:
    """(shape, dtype, fortran, bytes) of a pickled array, checked as numpy's `__setstate__`
    checks them; the byte count of a UTF-8 span is only bounded here (see `_copy_from`)."""
    if not isinstance(stub, _ArrayStub) or not isinstance(stub.state, tuple):
        raise ValueError("not an array")
    state = stub.state[1:] if len(stub.state) == 5 else stub.state  # (version, ...) or not
    shape, dtype, fortran, raw = state
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError("bad shape")
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise ValueError("bad dtype")
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    length = raw.length if isinstance(raw, _Span) else len(raw)
    if isinstance(raw, _Span) and raw.text:  # one or two UTF-8 bytes a latin-1 byte
        fits = size <= length <= 2 * size
    else:
        fits = isinstance(raw, (bytes, _Span)) and size == length
    if not fits:
        raise ValueError("the array's bytes do not match its shape")
    return shape, dtype, bool(fortran), raw


def _materialize(stub: Any, file: _Guarded) -> np.ndarray:
    """A small pickled array (labels stored as an ndarray, not a list), read whole."""
    shape, dtype, fortran, raw = _array_state(stub)
    if isinstance(raw, _Span):
        raw = b"".join(_chunks(file, raw))
    if len(raw) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise ValueError("the array's bytes do not match its shape")
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def scan(file: BinaryIO, name: str, classes: int) -> BatchScan:
    """Read a batch file's labels and where its pixels are, leaving the pixels in the file.

    `name` is the file's name in messages; labels must lie in range(classes). A malformed or
    refused pickle, or data of the wrong shape, type or labels, raises the `corrupt` UserError;
    the file's own read errors (OSError, an archive's EOFError) propagate as they are.
    """
    guarded = _Guarded(file)
    try:
        batch = _ScanUnpickler(guarded).load()
        shape, dtype, fortran, raw = _array_state(batch[b"data"])
        labels = batch.get(b"labels", batch.get(b"fine_labels"))
        if isinstance(labels, _ArrayStub):
            labels = _materialize(labels, guarded)
        labels = np.asarray(labels, dtype=np.int64)
    except _StreamError as error:
        raise error.error from None
    except Exception:
        raise corrupt(name) from None
    if dtype != np.uint8 or len(shape) != 2 or shape[1] != ROW_BYTES:
        raise corrupt(name)
    if labels.shape != (shape[0],) or (
        len(labels) and not 0 <= labels.min() <= labels.max() < classes
    ):
        raise corrupt(name)
    return BatchScan(name, labels, raw, fortran)


def copy_rows(file: BinaryIO, batch: BatchScan, out: np.ndarray, rows: np.ndarray) -> None:
    """Stream a scanned batch's pixels from `file` into `out`, (M, 32, 32, 3) uint8: its i-th
    image into `out[rows[i]]`, 64 rows at a time (the channel-major rows transposed)."""
    guarded = _Guarded(file)
    try:
        if isinstance(batch.pixels, bytes):
            guarded, span = _Guarded(io.BytesIO(batch.pixels)), _Span(0, len(batch.pixels), False)
        else:
            span = batch.pixels
        if batch.fortran:  # never so in the real files: built whole, then copied
            stub = _ArrayStub()
            stub.state = ((batch.rows, ROW_BYTES), np.dtype(np.uint8), True, span)
            array = _materialize(stub, guarded)
            out[rows] = array.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
            return
        _copy_from(_chunks(guarded, span), out, rows)
    except _StreamError as error:
        raise error.error from None
    except Exception:
        raise corrupt(batch.name) from None


def _chunks(file: _Guarded, span: _Span, size: int = _CHUNK_ROWS * ROW_BYTES) -> Iterator[bytes]:
    """The span's bytes, a chunk at a time (UTF-8 text as the latin-1 bytes it stands for)."""
    file.seek(span.offset)
    decoder = codecs.getincrementaldecoder("utf-8")("surrogatepass") if span.text else None
    left = span.length
    while left:
        data = file.read(min(size, left))
        if not data:
            raise EOFError("the file ends inside the pixels")
        left -= len(data)
        yield data if decoder is None else decoder.decode(data).encode("latin-1")
    if decoder is not None:
        yield decoder.decode(b"", final=True).encode("latin-1")  # raises on a cut character


def _copy_from(chunks: Iterator[bytes], out: np.ndarray, rows: np.ndarray) -> None:
    """Fill `out[rows]` from byte chunks of channel-major rows, through a bounce buffer."""
    bounce = np.empty((_CHUNK_ROWS, 3, SIDE, SIDE), dtype=np.uint8)
    flat, filled, row = bounce.reshape(-1), 0, 0

    def flush() -> None:
        nonlocal filled, row
        count = filled // ROW_BYTES
        if row + count > len(rows):
            raise ValueError("more pixels than the array's shape says")
        out[rows[row : row + count]] = bounce[:count].transpose(0, 2, 3, 1)
        row, filled = row + count, 0

    for chunk in chunks:
        data = np.frombuffer(chunk, dtype=np.uint8)
        while len(data):
            take = min(len(data), len(flat) - filled)
            flat[filled : filled + take] = data[:take]
            filled, data = filled + take, data[take:]
            if filled == len(flat):
                flush()
    if filled % ROW_BYTES:
        raise ValueError("the pixels end inside a row")
    flush()
    if row != len(rows):
        raise ValueError("fewer pixels than the array's shape says")
