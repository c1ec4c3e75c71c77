"""libc's functions for the guest init, bound through _ctypes, the C half of ctypes.

Importing the ctypes package costs ~25 ms of every boot under TCG (its Python layer,
struct, types) for five functions; _ctypes gives them directly. Its interface (CFuncPtr,
_SimpleCData, dlopen) is CPython's own rather than a documented one, so any surprise
there falls back to the ctypes package. guest.system calls these; nothing else does.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, which is slow at boot
if TYPE_CHECKING:
    from collections.abc import Callable

# libc's functions and their C signatures: "i" int, "l" long, "z" char * (bytes or
# None). Each returns a C int. The unsigned longs (mount's flags, ioctl's request) are
# passed as longs: the same bits for every value below 2**63, and one ctypes type less to
# make at every boot (each costs ~0.5 ms under TCG).
SIGNATURES = {
    "mount": ("z", "z", "z", "l", "z"),
    "umount2": ("z", "i"),
    "syscall": ("l", "l", "z", "l"),  # finit_module(fd, params, flags)
    "ioctl": ("i", "l", "l"),
    "reboot": ("i",),
    "prctl": ("i", "l", "l", "l", "l"),
}


def bind(lean: bool = True) -> dict[str, Callable[..., int]]:
    """The functions of SIGNATURES by name, each keeping errno for "get_errno" (also
    in the result); through _ctypes unless ``lean`` is false or that fails."""
    if lean:
        try:
            return bind_with_ctypes_core()
        except (ImportError, AttributeError, TypeError):
            pass
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    types = {"i": ctypes.c_int, "l": ctypes.c_long, "z": ctypes.c_char_p}
    functions: dict[str, Callable[..., int]] = {"get_errno": ctypes.get_errno}
    for name, signature in SIGNATURES.items():
        function = getattr(libc, name)
        function.argtypes = [types[code] for code in signature]
        function.restype = ctypes.c_int
        functions[name] = function
    return functions


def bind_with_ctypes_core() -> dict[str, Callable[..., int]]:
    """bind() through _ctypes alone, as ctypes.CDLL(None, use_errno=True) would."""
    import _ctypes

    # ctypes.c_int and friends are these same one-line classes.
    types = {code: type(f"c_{code}", (_ctypes._SimpleCData,), {"_type_": code})
             for code in "ilz"}

    class Function(_ctypes.CFuncPtr):  # what ctypes.CDLL(None, use_errno=True) makes
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        _restype_ = types["i"]

    class Library:  # CFuncPtr((name, library)) looks the name up in library._handle
        # dlopen(NULL): the program and what it loaded, libc among them. typeshed's
        # _ctypes takes a path only, and a CDLL below; CPython takes these two.
        _handle = _ctypes.dlopen(None, 0)  # type: ignore[arg-type]

    functions: dict[str, Callable[..., int]] = {"get_errno": _ctypes.get_errno}
    for name, signature in SIGNATURES.items():
        function = Function((name, Library))  # type: ignore[arg-type]  # see Library
        function.argtypes = [types[code] for code in signature]
        functions[name] = function
    return functions
