"""The search space: what space files import (`choice`, `uniform`, ...), their loading, settings.

Space files import only this package: ``from search.space import choice, loguniform``.
"""

from search.space.distributions import (
    Searched,
    SpaceError,
    choice,
    intrange,
    loguniform,
    uniform,
)
from search.space.weights import installed_weights

__all__ = [
    "Searched",
    "SpaceError",
    "choice",
    "installed_weights",
    "intrange",
    "loguniform",
    "uniform",
]
