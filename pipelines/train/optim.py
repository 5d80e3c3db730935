"""The optimiser of every segflow training: AdamW with a polynomial learning-rate decay.

Semantic models (:class:`~pipelines.train.module.SegmentationModule`) and Mask R-CNN
(:class:`~pipelines.train.maskrcnn.MaskRCNNModule`) both derive from :class:`PolynomialAdamW`,
so they share one ``configure_optimizers``; they differ only in their default learning rate and
weight decay, which they save as hyperparameters.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning as L
import torch

#: Exponent of the polynomial decay (nnU-Net's): lr × (1 - epoch / max_epochs) ** 0.9.
DECAY_POWER = 0.9


def adamw_with_polynomial_decay(
    parameters: Iterable[torch.nn.Parameter],
    *,
    learning_rate: float,
    weight_decay: float,
    max_epochs: int,
) -> dict[str, Any]:
    """AdamW over the trainable ``parameters`` and its per-epoch polynomial schedule.

    Frozen parameters (``requires_grad=False``) are left out of the optimiser.

    Args:
        parameters: the module's parameters.
        learning_rate: AdamW's initial learning rate.
        weight_decay: AdamW's decoupled weight decay.
        max_epochs: epochs until the learning rate reaches 0 (the schedule's horizon).

    Returns:
        Lightning's optimiser configuration: ``{"optimizer": …, "lr_scheduler": {"scheduler":
        …, "interval": "epoch"}}``.
    """
    trainable = [parameter for parameter in parameters if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.PolynomialLR(
        optimizer, total_iters=max_epochs, power=DECAY_POWER
    )
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": schedule, "interval": "epoch"},
    }


class PolynomialAdamW(L.LightningModule):
    """A Lightning module trained by :func:`adamw_with_polynomial_decay`.

    Subclasses call ``save_hyperparameters()`` with ``learning_rate``, ``weight_decay`` and
    ``max_epochs`` among their ``__init__`` arguments.
    """

    def configure_optimizers(self) -> Any:
        """The optimiser and schedule from the saved hyperparameters."""
        return adamw_with_polynomial_decay(
            self.parameters(),
            learning_rate=float(self.hparams["learning_rate"]),
            weight_decay=float(self.hparams["weight_decay"]),
            max_epochs=int(self.hparams["max_epochs"]),
        )
