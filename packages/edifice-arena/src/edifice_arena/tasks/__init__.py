"""The arena's tasks: synthetic sequence problems generated on the fly from a seed, and a shipped small corpus.

Each task is a :class:`Task` (a :class:`~edifice_arena.batches.BatchSource`) that states its metric and chance level:

============================  ==================================================  ===============  ==============
name                          what the model must do                              metric           chance
============================  ==================================================  ===============  ==============
``mqar``                      recall the value of each queried key (Zoology)      accuracy         1 / (V - V/2)
``selective_copying``         copy scattered data tokens in order (Mamba)         accuracy         1 / (V - 2)
``induction_heads``           after ``... S x ... S`` predict ``x``               accuracy         1 / (V - 1)
``parity``                    running parity of a bit stream                      accuracy         1 / 2
``char_lm``                   next character of Shakespeare                       bits per char    log2 V
============================  ==================================================  ===============  ==============
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from edifice.errors import ConfigError
from edifice_arena.tasks.base import SPLITS, Metric, Task
from edifice_arena.tasks.char_lm import CharLM
from edifice_arena.tasks.induction_heads import InductionHeads
from edifice_arena.tasks.mqar import MQAR
from edifice_arena.tasks.parity import Parity
from edifice_arena.tasks.selective_copying import SelectiveCopying

__all__ = [
    "MQAR",
    "SPLITS",
    "TASKS",
    "CharLM",
    "InductionHeads",
    "Metric",
    "Parity",
    "SelectiveCopying",
    "Task",
    "make_task",
    "task_fields",
]

#: Every task class by registry name.
TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (MQAR, SelectiveCopying, InductionHeads, Parity, CharLM)}


def task_fields(name: str) -> list[str]:
    """The fields task ``name`` accepts (``seq_len``, ``seed`` and its own)."""
    return [f.name for f in dataclasses.fields(_task_class(name)) if f.init]


def make_task(name: str, **fields: Any) -> Task:
    """Build task ``name`` with ``fields``; unknown names or fields raise :class:`ConfigError` naming the choices."""
    cls = _task_class(name)
    valid = task_fields(name)
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        raise ConfigError(f"task {name}: unknown field {unknown[0]!r}; valid fields are {', '.join(valid)}")
    return cls(**fields)


def _task_class(name: str) -> type[Task]:
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}.{hint}")
    return TASKS[name]
