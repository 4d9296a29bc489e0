"""A linear head fitted to convergence on fixed features (a linear probe).

With cross-entropy (label smoothing and class weights included) and an L2 penalty the problem is
convex, so full-batch L-BFGS finds the one optimum whatever the learning rate, batch size or
epoch count of the trial. The objective is ``loss(features @ W.T + b) + weight_decay / 2 *
||W||^2`` (the bias is not penalised), taken over every training image of every view.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainer.features import linear_head

ITERATIONS_PER_ROUND = 50
"""L-BFGS iterations between two looks at the head (one history row each)."""
MAX_ROUNDS = 8
"""Rounds at most; a head not converged by then is used as it is."""
GRADIENT_TOLERANCE = 1e-5
"""Converged when no gradient entry of the objective is larger than this."""
# Up to this many feature values, a CPU fit runs on one thread: its operations take
# microseconds, and waking a thread pool for each (on a busy machine) took 8x longer in all.
_ONE_THREAD_UP_TO = 1 << 22


@dataclass(frozen=True)
class HeadRound:
    """The head after one round of L-BFGS.

    Attributes:
        weight: ``(C, D)`` classifier weights.
        bias: ``(C,)`` classifier bias.
        train_loss: The loss (without the penalty) on the training features.
        converged: Whether the gradient is within `GRADIENT_TOLERANCE`.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    train_loss: float
    converged: bool


def fit_linear_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    criterion: torch.nn.Module,
    *,
    num_classes: int,
    weight_decay: float,
) -> Iterator[HeadRound]:
    """Fit ``W, b`` by full-batch L-BFGS, yielding the head after each round until converged.

    Args:
        features: ``(M, D)`` float32 training features (views stacked as extra rows).
        labels: ``(M,)`` int64 labels.
        criterion: The training loss, called as ``criterion(logits, labels)``.
        num_classes: Rows of ``W``.
        weight_decay: L2 strength on ``W``.

    Yields:
        One `HeadRound` per round; the last one is converged or the `MAX_ROUNDS`-th.
    """
    weight = torch.zeros(num_classes, features.shape[1], device=features.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=features.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=ITERATIONS_PER_ROUND,
        history_size=20,
        tolerance_grad=GRADIENT_TOLERANCE,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def objective() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=False)
        loss = criterion(F.linear(features, weight, bias), labels)
        total = loss + 0.5 * weight_decay * weight.pow(2).sum()
        total.backward()
        return total

    for _ in range(MAX_ROUNDS):
        before = optimizer.state[weight].get("n_iter", 0)
        with _threads_for(features):
            optimizer.step(objective)
            train_loss, small = _look(features, labels, criterion, weight, bias, weight_decay)
        # L-BFGS stops a round early when it can no longer make progress (float32 precision).
        stalled = optimizer.state[weight]["n_iter"] - before < ITERATIONS_PER_ROUND
        converged = small or stalled
        yield HeadRound(weight.detach().clone(), bias.detach().clone(), train_loss, converged)
        if converged:
            return


def _look(
    features: torch.Tensor,
    labels: torch.Tensor,
    criterion: torch.nn.Module,
    weight: torch.Tensor,
    bias: torch.Tensor,
    weight_decay: float,
) -> tuple[float, bool]:
    """The loss without the penalty, and whether the objective's gradient is small enough."""
    weight.grad, bias.grad = None, None
    loss = criterion(F.linear(features, weight, bias), labels)
    total = loss + 0.5 * weight_decay * weight.pow(2).sum()
    grads = torch.autograd.grad(total, [weight, bias])
    largest = max(g.abs().max().item() for g in grads)
    return loss.item(), largest <= GRADIENT_TOLERANCE


@contextmanager
def _threads_for(features: torch.Tensor) -> Iterator[None]:
    """One torch thread while fitting on few CPU features; the caller's count afterwards."""
    if features.device.type != "cpu" or features.numel() > _ONE_THREAD_UP_TO:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def head_probs(head: HeadRound, features: torch.Tensor) -> np.ndarray:
    """Class probabilities of ``features`` under the fitted head ``head``."""
    logits = torch.nn.functional.linear(features, head.weight, head.bias)
    return torch.softmax(logits.float(), dim=1).cpu().numpy()


@torch.no_grad()
def load_head(model: torch.nn.Module, head: HeadRound) -> None:
    """Copy the fitted head into ``model``'s linear classifier."""
    classifier = linear_head(model)
    classifier.weight.copy_(head.weight)
    classifier.bias.copy_(head.bias)
