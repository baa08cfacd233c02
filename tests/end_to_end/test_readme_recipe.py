"""README "Recipe: fine-tune a COCO DETR on your dataset", run as written (slow: R50 at 800 px).

The commands are read from README.md itself, so the test follows the text. Only the paths are
swapped for temporary ones, and the training command gets overrides that shrink the run to two
steps of one image (nothing else about the recipe changes: DETR-R50, DETR's transforms at
480..800 px, the re-initialised class head, the held backbone). The "COCO DETR-R50" is Hugging
Face's DETR-R50 architecture with random weights (no download), written both as an HF directory
and as a facebookresearch `.pth`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_reference as ref  # noqa: E402

from detr_jax.convert import hf_to_facebook_state_dict  # noqa: E402
from detr_jax.data.shapes import STANDARD_SHAPES, export_coco, generate_sample  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHRINK = [  # two steps of one image; evaluation on the 2 validation images at the end
    "--config.total_steps=2",
    "--config.batch_size=1",
    "--config.eval.batch_size=1",
    "--config.checkpoint_every=2",
    "--config.freeze_backbone_steps=1",
    "--config.use_tensorboard=false",
]


def recipe_commands() -> list[str]:
    """The shell commands of the README recipe's code block, continuation lines joined."""
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("### Recipe: fine-tune a COCO DETR on your dataset", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands, current = [], ""
    for line in block.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


def write_dataset(root, split: str, n: int, offset: int) -> None:
    """A 3-category COCO-format dataset (ids 1, 4, 9: non-contiguous) of JPEG shapes images."""
    from PIL import Image

    samples = []
    for i in range(n):
        s = generate_sample(STANDARD_SHAPES, 5, offset + i)
        s["labels"] = s["labels"] % 3
        samples.append(s)
    out = root / split
    export_coco(samples, str(out), ("ring", "block", "wedge"), [1, 4, 9])
    ann = json.loads((out / "annotations.json").read_text())
    for image in ann["images"]:  # PNG -> JPEG, as users' data usually is
        png = out / "images" / image["file_name"]
        image["file_name"] = png.stem + ".jpg"
        Image.open(png).convert("RGB").save(out / "images" / image["file_name"], quality=95)
        png.unlink()
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"{split}.json").write_text(json.dumps(ann))
    os.rename(out / "images", root / f"{split}_images")


def test_readme_finetune_recipe_runs_as_written(tmp_path):
    model = ref.build_hf_detr(ref.R50)
    model.save_pretrained(str(tmp_path / "detr-resnet-50"))
    fb = {k: torch.from_numpy(v) for k, v in hf_to_facebook_state_dict(
        ref.state_dict_numpy(model)).items()}
    torch.save({"model": fb}, str(tmp_path / "detr-r50-e632da11.pth"))
    data = tmp_path / "mydata"
    data.mkdir()
    write_dataset(data, "train", 4, 0)
    write_dataset(data, "val", 2, 100)
    images = sorted(str(p) for p in (data / "val_images").iterdir())

    swaps = {
        "detr-r50-e632da11.pth": str(tmp_path / "detr-r50-e632da11.pth"),
        "./detr-resnet-50": str(tmp_path / "detr-resnet-50"),
        "weights/detr_r50": str(tmp_path / "weights" / "detr_r50"),
        "/data/mydata/annotations/": str(data / "annotations") + "/",
        "/data/mydata/train": str(data / "train_images"),
        "/data/mydata/val": str(data / "val_images"),
        "runs/mydata": str(tmp_path / "runs" / "mydata"),
        "img1.jpg img2.jpg": " ".join(images),
    }
    commands = recipe_commands()
    assert [c.split()[2] for c in commands] == [
        "detr_jax.convert", "detr_jax.convert", "detr_jax.main", "detr_jax.predict"
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for i, command in enumerate(commands):
        for old, new in swaps.items():
            command = command.replace(old, new)
        argv = shlex.split(command)
        argv[0] = sys.executable
        if "detr_jax.convert" in argv and i == 1:  # the alternative: a second output dir
            argv[-1] += "_hf"
        if "detr_jax.main" in argv:
            argv += SHRINK
        proc = subprocess.run(
            argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500
        )
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"

    # Both conversions gave the same params (README: "either file works").
    from detr_jax.pretrained import load_params_checkpoint

    a = load_params_checkpoint(swaps["weights/detr_r50"])
    b = load_params_checkpoint(swaps["weights/detr_r50"] + "_hf")
    import jax

    assert jax.tree.all(jax.tree.map(np.array_equal, a[0], b[0]))
    run = tmp_path / "runs" / "mydata"
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["step"] == 2 and "AP" in summary
    preds = json.loads((run / "predictions.json").read_text())
    assert {p["category_id"] for p in preds} <= {1, 4, 9}  # the file's own ids come back
    out = run / "predictions"
    detections = json.loads((out / "detections.json").read_text())
    assert {d["category_id"] for d in detections} <= {1, 4, 9}
    for path in images:
        assert (out / (os.path.splitext(os.path.basename(path))[0] + "_detections.png")).exists()
