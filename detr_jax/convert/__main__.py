"""CLI: `python -m detr_jax.convert --source=SOURCE IN OUT_DIR`.

SOURCE: facebook | hf (DETR, Deformable DETR, DAB-DETR or Mask2Former with a ResNet) |
deformable | torchvision_resnet | hf_resnet.

IN is a `.pth` / `.bin` / `.safetensors` file or a Hugging Face model directory. OUT_DIR becomes a
params checkpoint for `--config.init_from=OUT_DIR`; its meta.json lists the config fields the
weights imply (backbone, widths, layers, queries, num_classes). Exit status 2 on a conversion
error (missing / unexpected keys are listed).
"""

from __future__ import annotations

import argparse
import json
import sys

from detr_jax.convert.checkpoint import SOURCES, convert_state_dict, write_checkpoint
from detr_jax.models.torch_keys import ConversionError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m detr_jax.convert", description=__doc__)
    p.add_argument("input", help="checkpoint file or HF model directory")
    p.add_argument("output", help="directory to write the params checkpoint to")
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("--nheads", type=int, default=None, help="attention heads (default: 8)")
    p.add_argument("--dilation", action="store_true", default=None, help="DC5 checkpoint")
    a = p.parse_args(argv)

    from detr_jax.convert.torch_io import load_state_dict  # imports torch

    state_dict, hints = load_state_dict(a.input)
    if a.nheads is not None:
        hints["nheads"] = a.nheads
    try:
        params, fields = convert_state_dict(state_dict, a.source, hints)
        nheads = a.nheads if a.nheads is not None else hints.get("nheads", 8)
        dilation = a.dilation if a.dilation is not None else hints.get("dilation", False)
        out = write_checkpoint(a.output, params, fields, a.source, nheads, dilation)
    except ConversionError as e:
        print(f"conversion failed: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(params)} arrays); config fields: {json.dumps(fields)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
