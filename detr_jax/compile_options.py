"""Compiler options for functions that run once, such as a model's parameter initialisation.

Compiling a DETR's `init` with XLA's full backend optimisation spends most of its time on the
random-number code of every parameter (threefry), and the result runs a single time: on the
2-core CPU the tiny test model's init took 30 s of CPU to compile at the default level and 7 s
at level 0. `jit_once` compiles at level 0. The values drawn can differ from the default level's
in the last bits (a different float evaluation order), but they are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

RUN_ONCE_OPTIONS = {"xla_backend_optimization_level": 0}


def jit_once(fn: Callable[..., Any], **jit_kwargs: Any) -> Callable[..., Any]:
    """`jax.jit(fn)` compiled cheaply, for functions called once (init, state creation).

    Called inside another trace (`jax.eval_shape`, an outer `jit`), where compiler options are
    not allowed, it calls `fn` directly and the outer trace decides how it compiles.
    """
    compiled = jax.jit(fn, compiler_options=RUN_ONCE_OPTIONS, **jit_kwargs)

    def call(*args: Any, **kwargs: Any) -> Any:
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs))):
            return fn(*args, **kwargs)
        return compiled(*args, **kwargs)

    return call
