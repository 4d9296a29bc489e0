"""The whole ensemble as one ONNX graph: raw uint8 images in, class probabilities out.

Inside the graph, in this order: uint8 ``(N, H, W, 3)`` to float ``(N, 3, H, W)``; per member a
resize to its own size (only for members trained smaller than the graph's input, bicubic with
antialiasing and rounding to whole pixel values, close to the Pillow resize of training),
its normalisation, every TTA view batched into one forward pass, softmax and the mean over
views; then the members' weighted sum. The graph is traced with PyTorch's TorchScript-based
exporter (``dynamo=False``): on torch 2.14 it needs no extra package and exports a member in a
second or two, where the dynamo exporter took 15-50 s per member on a CPU.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.onnx import symbolic_helper

from trainer.augment import View, tta_views
from trainer.ensemble import Ensemble, Member

OPSET = 18  # the first opset whose Resize has antialiasing
INPUT = "images"
OUTPUT = "probabilities"


def _view(x: torch.Tensor, view: View) -> torch.Tensor:
    """`View.on_tensor` with flips and transposes only (the exporter has no rot90)."""
    out = x.flip(-1) if view.hflip else x
    turns = view.rotations % 4
    if turns == 1:
        return out.flip(-1).transpose(-2, -1)
    if turns == 2:
        return out.flip(-1).flip(-2)
    if turns == 3:
        return out.flip(-2).transpose(-2, -1)
    return out


class MemberGraph(torch.nn.Module):
    """One member: resize (if needed), normalise, TTA views, softmax, mean over views."""

    def __init__(self, member: Member, input_size: int, views: Sequence[View]) -> None:
        super().__init__()
        self.model, self.size, self.views = member.model, member.image_size, tuple(views)
        self.resize = member.image_size != input_size
        mean = member.mean.detach().float().cpu().view(1, -1, 1, 1)
        std = member.std.detach().float().cpu().view(1, -1, 1, 1)
        # (x / 255 - mean) / std as one scale and shift, as `trainer.loader.to_model_input` does.
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", mean / std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(N, C)`` of float pixels ``(N, 3, H, W)`` in 0..255."""
        if self.resize:
            pixels = F.interpolate(
                pixels, size=(self.size, self.size), mode="bicubic", antialias=True
            )
            pixels = pixels.clamp(0.0, 255.0).round()
        x = pixels * self.scale - self.shift
        batch = torch.cat([_view(x, view) for view in self.views])
        probs = torch.softmax(self.model(batch).float(), dim=1)
        return probs.reshape(len(self.views), x.shape[0], -1).mean(dim=0)


class EnsembleGraph(torch.nn.Module):
    """The ensemble's weighted soft vote over its members, from uint8 ``(N, S, S, 3)`` images.

    Args:
        ensemble: A loaded ensemble; its models are used as they are (move it to the CPU first).
        tta: The TTA mode baked into the graph (default: the ensemble's).
    """

    def __init__(self, ensemble: Ensemble, *, tta: str | None = None) -> None:
        super().__init__()
        self.input_size = max(ensemble.sizes)
        views = tta_views(ensemble.tta if tta is None else tta)
        graphs = [MemberGraph(m, self.input_size, views) for m in ensemble.members]
        self.members = torch.nn.ModuleList(graphs)
        self.weights = [float(w) for w in ensemble.weights]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, C)``."""
        pixels = images.permute(0, 3, 1, 2).float()
        total = self.members[0](pixels) * self.weights[0]
        for member, weight in zip(self.members[1:], self.weights[1:], strict=True):
            total = total + member(pixels) * weight
        return total


def export_onnx(
    ensemble: Ensemble, path: Path, *, metadata: Mapping[str, str], tta: str | None = None
) -> Path:
    """Write ``ensemble`` (on the CPU) as one self-contained ONNX file.

    Args:
        ensemble: The loaded ensemble, on the CPU.
        path: The ``.onnx`` file to write.
        metadata: Strings stored as the model's ``metadata_props`` (class names, metric, ...);
            ``classes``, ``image_size`` and ``tta`` are added.
        tta: The TTA mode baked in (default: the ensemble's).
    """
    import onnx

    graph = EnsembleGraph(ensemble, tta=tta).eval()
    size = graph.input_size
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    with _antialiased_resize(), warnings.catch_warnings(), torch.no_grad():
        # timm's shape checks become constants in the trace: right for the fixed input size.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        )
    model = onnx.load(str(path))
    props = {
        **metadata,
        "classes": json.dumps(list(ensemble.classes)),
        "image_size": str(size),
        "tta": ensemble.tta if tta is None else tta,
    }
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(path))
    return path


@contextmanager
def _antialiased_resize() -> Iterator[None]:
    """Teach the exporter PyTorch's antialiased resize (ViTs resample position embeddings).

    The TorchScript exporter has no symbolic for ``_upsample_*_aa``; ONNX Resize with
    ``antialias=1`` and Keys' cubic a = -0.5 computes the same values (to about 1e-6).
    """
    names = {"cubic": "aten::_upsample_bicubic2d_aa", "linear": "aten::_upsample_bilinear2d_aa"}
    for mode, name in names.items():
        torch.onnx.register_custom_op_symbolic(name, _resize_symbolic(mode), OPSET)
    try:
        yield
    finally:
        for name in names.values():
            torch.onnx.unregister_custom_op_symbolic(name, OPSET)


def _resize_symbolic(mode: str):
    def symbolic(g, x, output_size, align_corners, scales_h=None, scales_w=None):
        sizes = g.op("Concat", _batch_channels(g, x), _spatial(g, output_size), axis_i=0)
        empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
        corners = symbolic_helper._maybe_get_const(align_corners, "b")
        return g.op(
            "Resize",
            x,
            empty,
            empty,
            sizes,
            mode_s=mode,
            cubic_coeff_a_f=-0.5,
            antialias_i=1,
            exclude_outside_i=1,
            coordinate_transformation_mode_s="align_corners" if corners else "half_pixel",
        )

    return symbolic


def _batch_channels(g, x):
    first_two = [g.op("Constant", value_t=torch.tensor([i])) for i in (0, 2)]
    return g.op("Slice", g.op("Shape", x), *first_two)


def _spatial(g, output_size):
    if symbolic_helper._is_packed_list(output_size):
        zero = g.op("Constant", value_t=torch.tensor([0]))
        parts = [
            g.op("Unsqueeze", g.op("Cast", part, to_i=7), zero)  # 7: int64
            for part in symbolic_helper._unpack_list(output_size)
        ]
        return g.op("Concat", *parts, axis_i=0)
    values = symbolic_helper._maybe_get_const(output_size, "is")
    return g.op("Constant", value_t=torch.tensor(list(values), dtype=torch.int64))
