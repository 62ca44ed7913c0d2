"""A small convolutional network for scikit-learn's 8x8 handwritten digits.

It follows raymedic's member contract: built as ``SmallCNN(input_shape=(8, 8), n_classes=10,
**hyperparameters)``; ``forward`` takes a float batch ``[N, 8, 8]`` (the image feature, standardised
by raymedic's preprocessor) and returns logits ``[N, 10]``. Nothing here knows about Ray or
raymedic: any ``torch.nn.Module`` with this constructor and forward can be a member.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two 3x3 convolutions and a linear head: ~10k parameters at ``channels=16``, a few seconds of
    CPU to train on 1,400 images, and clearly better than a linear model on pixels.

    Args:
        input_shape: one image's shape, ``(height, width)`` (raymedic passes the tensor feature's shape).
        n_classes: number of classes (10 digits).
        channels: width of the first convolution; the second has twice as many.
        dropout: dropout before the head.
    """

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, channels: int = 16,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if len(input_shape) != 2:
            raise TypeError(f"SmallCNN takes 2-D images (height, width); got input_shape={tuple(input_shape)}")
        h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(2 * channels * (h // 2) * (w // 2), n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.unsqueeze(1)))
