"""The closure graph: the objects a program's link map would hold, and what is missing."""

from __future__ import annotations

from dataclasses import dataclass, field

from initbuilder.loader.elf import DlopenFeature, ElfInfo


@dataclass(eq=False)
class Edge:
    """One request: ``name`` asked for by an object (DT_NEEDED, or a dlopen note)."""

    name: str
    target: LoadedObject | None
    feature: DlopenFeature | None = None


@dataclass(eq=False)
class LoadedObject:
    """One object of the link map, as ld.so would hold it."""

    path: str | None  # the name the loader opened it under; None for the vDSO
    info: ElfInfo | None
    names: list[str]  # names it was requested under (first: the one that found it)
    loader: LoadedObject | None  # whose request loaded it (glibc's l_loader)
    rule: str  # which search rule found it, for people
    kind: str = ""  # the same for programs: main, interpreter, rpath, library_path, runpath,
    # cache, default, path (a DT_NEEDED with a slash), vdso
    identity: tuple[int, int] | None = None  # (st_dev, st_ino)
    origin: str | None = None  # the value of $ORIGIN for its own requests
    baseline: str | None = None  # the plain copy when found in a glibc-hwcaps subdirectory
    needed_by: list[LoadedObject] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    label: str = ""  # how reports name it: its path, or FILE for the main object
    listed: bool = False  # already in Closure.libraries

    def chain(self) -> list[str]:
        """Names from the main object down to this one along the loading chain."""
        out: list[str] = []
        obj: LoadedObject | None = self
        while obj is not None:
            out.append(obj.names[0] if obj.loader is not None else obj.label)
            obj = obj.loader
        return out[::-1]


@dataclass
class Missing:
    """A request nothing satisfied, or a candidate that would stop the loader."""

    name: str
    needed_by: list[LoadedObject]
    reason: str = "not found"

    def chain(self) -> str:
        """``main -> lib -> name`` along the first requester's loading chain."""
        return " -> ".join([*self.needed_by[0].chain(), self.name])


@dataclass
class UnmetFeature:
    """A dlopen feature below "required" whose libraries are all absent."""

    feature: DlopenFeature
    owner: LoadedObject


@dataclass
class Closure:
    """Everything one FILE brings when the loader starts it."""

    file: str
    main: LoadedObject
    interpreter: LoadedObject | None  # from PT_INTERP; None for static files and libraries
    libraries: list[LoadedObject]  # in load order; the interpreter too once something needs it
    missing: list[Missing]
    unmet: list[UnmetFeature] = field(default_factory=list)
    default_dirs: tuple[str, ...] = ()  # the loader's trusted directories, each ending in "/"

    def to_json(self) -> dict[str, object]:
        """The ``initbuilder closure --json`` object for this FILE."""
        return {
            "file": self.file,
            "interpreter": self.interpreter.path if self.interpreter else None,
            "libraries": [
                {"name": lib.names[0], "path": lib.path,
                 "needed_by": [n.label for n in lib.needed_by]}
                for lib in self.libraries
            ],
            "missing": [
                {"name": m.name, "needed_by": [n.label for n in m.needed_by]}
                for m in self.missing
            ],
        }

    def objects(self) -> list[LoadedObject]:
        """The main object, the interpreter and every library: the files to ship."""
        out = [self.main]
        if self.interpreter is not None:
            out.append(self.interpreter)
        out += [lib for lib in self.libraries if lib is not self.interpreter]
        return out


class LinkMap:
    """The loaded objects of one program while it is being resolved, with the
    lookups ld.so does before searching: by requested name or path, by SONAME,
    by file identity."""

    def __init__(self) -> None:
        self.objects: list[LoadedObject] = []
        self.libraries: list[LoadedObject] = []
        self.missing: dict[str, Missing] = {}
        self._by_name: dict[str, LoadedObject] = {}
        self._by_soname: dict[str, LoadedObject] = {}
        self._by_identity: dict[tuple[int, int], LoadedObject] = {}

    def add(self, obj: LoadedObject) -> None:
        self.objects.append(obj)
        for name in obj.names:
            self._by_name.setdefault(name, obj)
        if obj.path is not None:
            self._by_name.setdefault(obj.path, obj)
        if obj.info is not None and obj.info.soname:
            self._by_soname.setdefault(obj.info.soname, obj)
        if obj.identity is not None:
            self._by_identity.setdefault(obj.identity, obj)

    def find(self, name: str) -> LoadedObject | None:
        """The object a request for ``name`` reuses without searching (_dl_name_match_p,
        then the SONAME of every loaded object)."""
        return self._by_name.get(name) or self._by_soname.get(name)

    def same_file(self, identity: tuple[int, int]) -> LoadedObject | None:
        return self._by_identity.get(identity)

    def alias(self, obj: LoadedObject, name: str) -> None:
        """Record that ``obj`` was also requested as ``name``."""
        if name not in obj.names:
            obj.names.append(name)
        self._by_name.setdefault(name, obj)

    def note(self, target: LoadedObject, requester: LoadedObject) -> None:
        """``requester`` needs ``target``: list it (once) with everyone who needs it."""
        if requester not in target.needed_by:
            target.needed_by.append(requester)
        if not target.listed and target.path is not None and target.loader is not None:
            target.listed = True
            self.libraries.append(target)

    def note_interpreter(self, target: LoadedObject, requester: LoadedObject) -> None:
        if requester not in target.needed_by:
            target.needed_by.append(requester)
        if not target.listed:
            target.listed = True
            self.libraries.append(target)

    def lack(self, name: str, requester: LoadedObject, reason: str) -> None:
        missing = self.missing.get(name)
        if missing is None:
            self.missing[name] = Missing(name, [requester], reason)
        elif requester not in missing.needed_by:
            missing.needed_by.append(requester)
