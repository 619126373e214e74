"""Pickles from outside the harness (a user's data files, a network store) read without running their code.

A pickle names the callables that rebuild its objects, and `pickle.load` imports and calls whatever it
names: a file whose `__reduce__` names `os.system` runs a command while it is read. `load` and `loads`
admit only the callables an allow-list maps, following the Python documentation's advice on
restricting globals (https://docs.python.org/3/library/pickle.html#restricting-globals), and refuse
every other one with `pickle.UnpicklingError` naming it.
"""

from __future__ import annotations

import importlib
import io
import pickle
from typing import IO, Any, Callable, Mapping

Globals = Mapping[tuple[str, str], Any]


class RestrictedUnpickler(pickle.Unpickler):
    """A `pickle.Unpickler` whose `find_class` returns only what `allowed` maps (module, name) to."""

    def __init__(self, file: IO[bytes], allowed: Globals, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: this file may only hold "
                                         f"plain data (it names code to run when read)") from None


def load(file: IO[bytes], allowed: Globals, encoding: str = "ASCII") -> Any:
    """One object from the open binary `file`, rebuilt only with `allowed` callables.

    Raises pickle.UnpicklingError for any other callable the pickle names (and for a damaged pickle),
    EOFError for an empty or cut file."""
    return RestrictedUnpickler(file, allowed, encoding=encoding).load()


def loads(data: bytes, allowed: Globals, encoding: str = "ASCII") -> Any:
    """`load` of a bytes object."""
    return load(io.BytesIO(data), allowed, encoding=encoding)


def _latin1_encode(obj: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """`_codecs.encode` as Python 3 pickles bytes at protocols 0-2 (always latin1); any other codec refused."""
    if encoding not in ("latin1", "latin-1") or not isinstance(obj, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}: only latin1 rebuilds bytes")
    return obj.encode("latin1", errors)


def _numpy_part(name: str) -> Callable:
    """A numpy rebuild function from numpy 2's `numpy._core`, or numpy 1's `numpy.core`."""
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), attr)
    except ImportError:
        return getattr(importlib.import_module(f"numpy.core.{module}"), attr)


def numpy_arrays() -> dict[tuple[str, str], Any]:
    """What pickles of dicts, lists, bytes, str, ints and numpy arrays or scalars name (numpy 1 and 2
    writers, protocols 0-5, and Python 2 writers such as the CIFAR-10 python batches): numpy's
    `_reconstruct`, `scalar` and `_frombuffer`, `numpy.ndarray`, `numpy.dtype`, and latin1 bytes.
    Each rebuilds an array or a scalar from its bytes and dtype; none calls anything the file names."""
    import numpy as np

    parts = {"_reconstruct": _numpy_part("multiarray._reconstruct"), "scalar": _numpy_part("multiarray.scalar"),
             "_frombuffer": _numpy_part("numeric._frombuffer")}
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): _latin1_encode}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = parts["_reconstruct"]
        allowed[(f"{core}.multiarray", "scalar")] = parts["scalar"]
        allowed[(f"{core}.numeric", "_frombuffer")] = parts["_frombuffer"]
    return allowed
