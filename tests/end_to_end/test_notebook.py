"""The notebook's code cells run headless (tiny model, two training steps).

Slow: compiling the train, eval and predict steps costs 2-3 minutes on the shared 2-core CPU.
"""

from __future__ import annotations

import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(ROOT, "notebooks", "detr_jax_demo.ipynb")


@pytest.mark.slow
def test_notebook_code_cells_run(tmp_path, monkeypatch):
    nb = json.load(open(NOTEBOOK))
    monkeypatch.setenv("DETR_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("DETR_JAX_ROOT", ROOT)
    monkeypatch.setenv("DETR_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__notebook__"}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        lines = [
            ln
            for ln in "".join(cell["source"]).splitlines()
            if not ln.lstrip().startswith(("!", "%"))
        ]
        exec(compile("\n".join(lines), NOTEBOOK, "exec"), namespace)
    assert namespace["result"]["cross_attention"].shape[0] == len(namespace["result"]["scores"])
    assert os.path.exists(tmp_path / "run" / "eval_results.json")
