"""benchmarks/gpu_r50.py: runs without ml_collections / TensorFlow / clu (the GPU machine lacks
them), and its --smoke mode runs end to end on CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_r50.py")


def _blocked_env(tmp_path):
    """PYTHONPATH with stand-ins for the packages that the GPU machine lacks: importing one
    raises ImportError."""
    for name in ("ml_collections", "clu", "tensorflow"):
        (tmp_path / "block" / name).mkdir(parents=True)
        (tmp_path / "block" / name / "__init__.py").write_text(
            f"raise ImportError('{name} is not on the GPU machine')\n"
        )
    return dict(os.environ, PYTHONPATH=str(tmp_path / "block"), JAX_PLATFORMS="cpu")


def test_gpu_script_builds_the_r50_model_without_ml_collections(tmp_path):
    code = (
        "import runpy, types, jax\n"
        f"g = runpy.run_path({SCRIPT!r})\n"
        "args = types.SimpleNamespace(smoke=False, mask=False, attention='dot_product',"
        " remat='all')\n"
        "from detr_jax.models import build_model, variable_shapes\n"
        "m = build_model(g['model_config'](args, 'bfloat16'))\n"
        "shapes = variable_shapes(m, (64, 64))['params']\n"
        "n = sum(x.size for x in jax.tree.leaves(shapes))\n"
        "assert 41e6 < n < 42e6, n  # DETR-R50: 41.3M parameters with 91 classes\n"
        "assert g['peak_tflops']('NVIDIA H100 80GB HBM3', 'bfloat16') == 989.4\n"
        "assert g['peak_tflops']('NVIDIA A100-SXM4-40GB', 'float32') == 156.0\n"
        "import sys; assert 'ml_collections' not in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_blocked_env(tmp_path),
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_gpu_script_smoke_runs_on_cpu(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--smoke", f"--profile={tmp_path / 'trace'}", f"--json={out}"],
        cwd=ROOT, env=_blocked_env(tmp_path), capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for dtype in ("float32", "bfloat16"):
        row = results["jax"][dtype]
        assert row["train_images_s"] > 0 and row["tflop_per_step"] > 0
        assert math.isfinite(row["loss"])
        assert row["infer_fps_b1"] > 0 and row["infer_fps_b2"] > 0
        assert results["hf"][dtype]["train_images_s"] > 0
    assert "backbone fwd+bwd" in results["jax"]["float32"]["breakdown_ms"]
    assert any((tmp_path / "trace").rglob("*.xplane.pb"))
