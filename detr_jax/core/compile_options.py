"""XLA compiler options: for functions that run once (`jit_once`) and for the jitted steps.

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

# XLA:CPU hands convolutions, dots, elementwise ops and reductions to YNNPACK library fusions by
# default (jax 0.10). For DETR they are slower than XLA's own Eigen kernels on the 2-core AVX2
# machine measured (docs/benchmarks.md: a convolution's kernel gradient 2-3x, the small config's
# train step ~1.3x), so the steps turn them off on CPU unless `xla_cpu_ynnpack` is set.
_NO_YNNPACK = {"xla_cpu_experimental_ynn_fusion_type": ""}


def step_compiler_options(xla_cpu_ynnpack: bool = False) -> dict[str, Any] | None:
    """Compiler options for the train / eval / inference jits: None (XLA's defaults) except on
    the CPU backend without `xla_cpu_ynnpack`, where YNNPACK fusions are switched off."""
    if xla_cpu_ynnpack or jax.default_backend() != "cpu":
        return None
    return dict(_NO_YNNPACK)


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
