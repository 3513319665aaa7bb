"""Training objectives by name. A method is an Objective; the trainer is the same for all.

An objective declares its options as a pydantic `Params` model; the config's `objective:`
section is `{name: ..., <params>}` and is validated against it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from vitrobust.objectives.base import Objective, TrainState
from vitrobust.objectives.standard import Standard

OBJECTIVES: dict[str, type[Objective]] = {"standard": Standard}


def register_objective(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES[cls.name] = cls
    return cls


from vitrobust.objectives import adversarial, dat, relevance  # noqa: E402, F401  (registers pgd_at, trades, fgsm_rs, dat, relevance)


def objective_params(section: dict[str, Any]):
    from vitrobust.config import ConfigError, suggest

    section = dict(section)
    name = section.pop("name", "standard")
    if name not in OBJECTIVES:
        raise ConfigError(f"objective.name: unknown objective {name!r}; {suggest(str(name), list(OBJECTIVES))}"
                          f"known: {', '.join(OBJECTIVES)}")
    params_cls = OBJECTIVES[name].Params
    try:
        return params_cls.model_validate(section)
    except ValidationError as err:
        msgs = []
        valid = list(params_cls.model_fields)
        for item in err.errors():
            key = ".".join(map(str, item["loc"]))
            if item["type"] == "extra_forbidden":
                msgs.append(f"objective.{key}: unknown key for objective {name!r}; {suggest(key, valid)}"
                            f"valid: {', '.join(valid)}")
            else:
                msgs.append(f"objective.{key}: {item['msg']} (got {item.get('input')!r})")
        raise ConfigError("; ".join(msgs)) from None


def build_objective(section: dict[str, Any], **context) -> Objective:
    params = objective_params(section)
    return OBJECTIVES[section.get("name", "standard")](params, **context)


__all__ = ["OBJECTIVES", "Objective", "TrainState", "build_objective", "objective_params", "register_objective"]
