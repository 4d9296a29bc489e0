"""The whole ensemble as one ONNX graph: raw uint8 images in, class probabilities out.

The graph has one input per member image size: ``images`` ``(N, S, S, 3)`` when every member
takes size ``S``, else ``images_16``, ``images_32``, ... (ascending). Each member reads the
pixels of its own size, decoded and resized outside the graph exactly as training decoded them
(`trainer.images`), so the graph never resizes: a resize inside it (from the largest size) gave
a smaller member other pixels than training did, up to 62 grey levels apart at 16 px.

Inside the graph, in this order: uint8 ``(N, S, S, 3)`` to float ``(N, 3, S, S)``; per member
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
from torch.onnx import symbolic_helper

from trainer.augment import View, tta_views
from trainer.inference.ensemble import Ensemble, Member

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
    """One member: normalise, TTA views, softmax, mean over views."""

    def __init__(self, member: Member, views: Sequence[View]) -> None:
        super().__init__()
        self.model, self.views = member.model, tuple(views)
        mean = member.mean.detach().float().cpu().view(1, -1, 1, 1)
        std = member.std.detach().float().cpu().view(1, -1, 1, 1)
        # (x / 255 - mean) / std as one scale and shift, as `trainer.loader.to_model_input` does.
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", mean / std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(N, C)`` of float pixels ``(N, 3, S, S)`` in 0..255."""
        x = pixels * self.scale - self.shift
        batch = torch.cat([_view(x, view) for view in self.views])
        probs = torch.softmax(self.model(batch).float(), dim=1)
        return probs.reshape(len(self.views), x.shape[0], -1).mean(dim=0)


class EnsembleGraph(torch.nn.Module):
    """The ensemble's weighted soft vote over its members, from uint8 images at each size.

    Args:
        ensemble: A loaded ensemble; its models are used as they are (move it to the CPU first).
        tta: The TTA mode baked into the graph (default: the ensemble's).
    """

    def __init__(self, ensemble: Ensemble, *, tta: str | None = None) -> None:
        super().__init__()
        self.sizes = ensemble.sizes
        views = tta_views(ensemble.tta if tta is None else tta)
        self.members = torch.nn.ModuleList([MemberGraph(m, views) for m in ensemble.members])
        self.inputs = [self.sizes.index(m.image_size) for m in ensemble.members]
        self.weights = [float(w) for w in ensemble.weights]

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, C)`` of ``(N, S, S, 3)`` uint8 batches, one per size."""
        pixels = [batch.permute(0, 3, 1, 2).float() for batch in images]
        total = self.members[0](pixels[self.inputs[0]]) * self.weights[0]
        for k in range(1, len(self.members)):
            total = total + self.members[k](pixels[self.inputs[k]]) * self.weights[k]
        return total


def input_names(sizes: Sequence[int]) -> list[str]:
    """The graph's input names for member ``sizes``: ``images``, or ``images_<size>`` each."""
    return [INPUT] if len(sizes) == 1 else [f"{INPUT}_{size}" for size in sizes]


def export_onnx(
    ensemble: Ensemble, path: Path, *, metadata: Mapping[str, str], tta: str | None = None
) -> Path:
    """Write ``ensemble`` (on the CPU) as one self-contained ONNX file.

    Args:
        ensemble: The loaded ensemble, on the CPU.
        path: The ``.onnx`` file to write.
        metadata: Strings stored as the model's ``metadata_props`` (class names, metric, ...);
            ``classes``, ``image_sizes`` (JSON), ``image_size`` (the largest) and ``tta`` are
            added.
        tta: The TTA mode baked in (default: the ensemble's).
    """
    import onnx

    graph = EnsembleGraph(ensemble, tta=tta).eval()
    names = input_names(graph.sizes)
    example = tuple(torch.zeros((2, s, s, 3), dtype=torch.uint8) for s in graph.sizes)
    with _antialiased_resize(), warnings.catch_warnings(), torch.no_grad():
        # timm's shape checks become constants in the trace: right for the fixed input size.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            graph,
            example,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=names,
            output_names=[OUTPUT],
            dynamic_axes={name: {0: "batch"} for name in (*names, OUTPUT)},
        )
    model = onnx.load(str(path))
    props = {
        **metadata,
        "classes": json.dumps(list(ensemble.classes)),
        "image_sizes": json.dumps(list(graph.sizes)),
        "image_size": str(max(graph.sizes)),
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
