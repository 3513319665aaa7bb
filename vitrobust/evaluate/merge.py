"""Which result results.json keeps when a benchmark is measured again (docs/architecture.md, "results as data").

A stored result is never lost to a later run that measured less:
- a skip (the benchmark could not run: no masks, no data) never replaces a measured result;
- a result measured with other settings (fewer images, another eps, other data options...) does not
  replace the stored one: it is kept beside it under `variants` (key `name@what differs`), unless the
  caller asks to overwrite;
- a result with the same settings replaces the stored one (a re-measurement).
The settings of a result are the fields below that describe how it was measured, plus `data` (which
evaluation data, added by `evaluate_path`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

VARIANTS = "variants"  # results.json key holding results measured with other settings than the main ones

# entry fields that say how a result was measured (not what it measured)
SETTING_KEYS = ("data", "n", "norm", "eps", "eps_list", "attack", "version", "attacks", "engine", "steps",
                "step_size", "restarts", "gradient", "seed", "severities", "source", "reference", "method",
                "target", "iou_threshold", "resize", "subset_seed")


def is_skip(entry: dict) -> bool:
    """The benchmark did not measure anything (it says why under `skipped`)."""
    return bool(entry.get("skipped")) and not entry.get("n")


def settings_of(entry: dict) -> dict:
    settings = {k: entry[k] for k in SETTING_KEYS if k in entry}
    sample = entry.get("sample")
    if isinstance(sample, dict) and sample.get("rule") == "balanced":
        settings["subset_seed"] = sample.get("seed")  # another seed, other images (an old entry has none)
    return settings


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def differences(stored: dict, new: dict) -> list[str]:
    """`key=value` (new's value) of every setting both entries record and in which they differ; a
    setting only one of them records (an older version's entry) is not a difference."""
    a, b = settings_of(stored), settings_of(new)
    return [f"{k}={_text(b[k])}" for k in SETTING_KEYS if k in a and k in b and a[k] != b[k]]


@dataclass(frozen=True)
class Placement:
    updates: dict  # top-level results.json keys to merge in (nothing when the result is not stored)
    note: str | None  # what happened, when it is not a plain write
    key: str | None = None  # where the entry is stored: its name, or its key under VARIANTS (None: not stored)


def place(stored: dict, name: str, entry: dict, overwrite: bool = False) -> Placement:
    """Where the new `entry` of benchmark `name` goes, given the stored results.json content."""
    old = stored.get(name)
    if not isinstance(old, dict):
        return Placement({name: entry}, None, name)
    if is_skip(entry):
        if is_skip(old):
            return Placement({name: entry}, None, name)
        return Placement({}, f"{name}: skipped ({entry['skipped']}); the stored result (n={old.get('n')}) is kept")
    diff = differences(old, entry)
    if not diff or overwrite or is_skip(old):
        note = f"{name}: replaced the stored result ({', '.join(differences(entry, old))})" if diff else None
        return Placement({name: entry}, note, name)
    key = f"{name}@{','.join(diff)}"
    variants = dict(stored.get(VARIANTS) or {})
    variants[key] = entry
    return Placement({VARIANTS: variants},
                     f"{name}: measured with other settings than the stored result ({', '.join(differences(entry, old))})"
                     f"; both kept: the stored one stays {name!r}, this one is {key!r} under {VARIANTS!r} "
                     f"(--overwrite replaces the stored one)", key)


def merge_overrides(*lists: list[str]) -> list[str]:
    """Override lists joined in order, one `key=value` per key (the last one given wins)."""
    out: dict[str, str] = {}
    for item in (i for lst in lists for i in (lst or [])):
        out.pop(item.split("=", 1)[0].strip(), None)
        out[item.split("=", 1)[0].strip()] = item
    return list(out.values())


__all__ = ["SETTING_KEYS", "VARIANTS", "Placement", "differences", "is_skip", "merge_overrides", "place",
           "settings_of"]
