"""One small registry type for every extension point: objectives, benchmarks, datasets, attack
engines and checkpoint formats (docs/architecture.md, "Registries").

A registry maps names to entries (a class, a function or a small record). Looking up a name that is
not there raises the registry's error with a did-you-mean hint and the known names, so every
"unknown X" message reads the same.

A registry lives in the lowest room that looks names up, and is filled by the room that defines the
entries, which sits above it. `fill` names that package: it is imported on the first lookup, so a
lookup from below never finds a registry that nobody has filled yet (the same idea as a plugin entry
point). This is the only way a room reaches a room above it, and it goes through a name, not an import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from vitrobust.errors import ConfigError, InputError, UserError, suggest

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind.

    kind:  what an entry is, for messages ("objective", "benchmark", ...).
    error: the UserError subclass raised for an unknown name (ConfigError where names come from configs).
    fill:  dotted name of the package whose import registers the entries (see the module docstring).
    """

    def __init__(self, kind: str, *, error: type[UserError] = InputError, fill: str | None = None):
        self.kind, self.error, self.fill = kind, error, fill
        self._entries: dict[str, T] = {}
        self._filled = fill is None

    def _ensure_filled(self) -> None:
        if not self._filled:
            self._filled = True  # set first: the package may look names up while it registers them
            importlib.import_module(self.fill)

    def add(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Register `entry` under `name`. Another entry under a taken name is a bug unless `replace` (a
        user's own version of a shipped entry, or a test's stand-in)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty string name, got {name!r}")
        if name in self._entries and self._entries[name] is not entry and not replace:
            raise ValueError(f"{self.kind} {name!r} is registered twice ({self._entries[name]!r} and {entry!r})")
        self._entries[name] = entry
        return entry

    def register(self, entry: T) -> T:
        """Decorator / call for entries that carry their own `name` (objective classes, records)."""
        return self.add(getattr(entry, "name", None), entry)

    def get(self, name: str, key: str | None = None) -> T:
        """The entry called `name`; an unknown name raises `error`, prefixed with the config `key` if given."""
        self._ensure_filled()
        if name in self._entries:
            return self._entries[name]
        known = list(self._entries)
        prefix = f"{key}: " if key else ""
        raise self.error(f"{prefix}unknown {self.kind} {name!r}; {suggest(str(name), known)}known: {', '.join(known)}")

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        self._ensure_filled()
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._ensure_filled()
        return list(self._entries.items())

    def select(self, keep: Callable[[T], bool]) -> list[str]:
        """Names of the entries for which `keep(entry)` is true, in registration order."""
        return [name for name, entry in self.items() if keep(entry)]

    def __contains__(self, name: object) -> bool:
        self._ensure_filled()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


# The registries whose names configs check (objective.name, evaluate.attack.engine); the others live with
# the package that looks them up (BENCHMARKS in evaluate, DATASETS in data, CHECKPOINT_FORMATS in models).
OBJECTIVES: Registry = Registry("objective", error=ConfigError, fill="vitrobust.objectives")
ATTACK_ENGINES: Registry = Registry("AutoAttack engine", error=ConfigError, fill="vitrobust.attacks")

__all__ = ["ATTACK_ENGINES", "OBJECTIVES", "Registry"]
