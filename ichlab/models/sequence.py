"""The LSTM path: a shared backbone embeds each ordered slice, an LSTM fuses the sequence.

Per window, K slices (B, K, 3, H, W) become embeddings (B, K, 1280); a one-layer LSTM reads
them in slice order and its final hidden state (B, 256) feeds a linear layer to the logits
of the centre slice. That costs K backbone passes per labelled slice. The series mode
embeds every slice of a chunk of one series once and builds each slice's window from those
embeddings, so each slice costs one backbone pass; in eval mode its logits equal the
per-window logits. With ``bidirectional=True`` the LSTM reads the sequence both ways and
the centre slice's output of both directions (B, 512) is the representation; in series
mode it reads the whole chunk, so every slice sees the whole series as context.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ichlab.models.stem import InputNormalization


class SequenceClassifier(nn.Module):
    """EfficientNet-B0 slice embeddings, an LSTM over them, and a linear head.

    Parameters
    ----------
    backbone
        A 3-channel timm feature extractor (``num_classes=0``), shared by every slice.
    num_classes
        Number of logits (5 hemorrhage subtypes).
    context_slices
        K, the odd number of slices in a window (3, 5 or 7), centred on the labelled slice.
    lstm_hidden
        Hidden size of the LSTM (256); the representation is twice that when bidirectional.
    bidirectional
        Read the sequence in both directions and classify each slice from its own output.
    series_mode
        Make :meth:`forward` take chunks of consecutive slices of one series (see
        :meth:`forward_series`) instead of one window per labelled slice.
    drop_rate
        Dropout on the sequence representation before the head.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 5,
        *,
        context_slices: int = 3,
        lstm_hidden: int = 256,
        bidirectional: bool = False,
        series_mode: bool = False,
        drop_rate: float = 0.2,
    ):
        super().__init__()
        if context_slices < 1 or context_slices % 2 == 0:
            raise ValueError(f"context_slices must be odd and positive (3, 5, 7); got {context_slices}")

        config = backbone.pretrained_cfg
        self.context_slices = context_slices
        self.bidirectional = bidirectional
        self.series_mode = series_mode
        self.normalize = InputNormalization(config["mean"], config["std"], n_slices=1)
        self.backbone = backbone
        self.lstm = nn.LSTM(
            backbone.num_features, lstm_hidden, num_layers=1, batch_first=True, bidirectional=bidirectional
        )
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(lstm_hidden * (2 if bidirectional else 1), num_classes)
        self.arch = "lstm"
        self.build_kwargs: dict[str, Any] = {}

    def embed(self, slices: torch.Tensor) -> torch.Tensor:
        """Embed each slice once: (B, N, 3, H, W) windowed slices in [0, 1] to (B, N, F)."""
        if slices.ndim != 5 or slices.shape[2] != 3:
            raise ValueError(f"expected slices of shape (B, N, 3, H, W); got {tuple(slices.shape)}")
        batch, n_slices, windows, height, width = slices.shape

        flat = slices.reshape(batch * n_slices, windows, height, width)  # (B*N, 3, H, W)
        if self._channels_last():
            flat = flat.contiguous(memory_format=torch.channels_last)
        features = self.backbone(self.normalize(flat))  # (B*N, F)
        return features.view(batch, n_slices, -1)  # (B, N, F)

    def _channels_last(self) -> bool:
        # The model was converted with .to(memory_format=torch.channels_last): feed it the same layout.
        weight = next(self.backbone.parameters())
        return weight.ndim == 4 and weight.is_contiguous(memory_format=torch.channels_last)

    def classify_windows(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Return the centre slice's logits (B, num_classes) for window embeddings (B, K, F)."""
        outputs, (hidden, _) = self.lstm(embeddings)  # outputs (B, K, D * hidden)
        if self.bidirectional:
            representation = outputs[:, embeddings.shape[1] // 2]  # (B, 2 * hidden): centre slice
        else:
            representation = hidden[-1]  # (B, hidden): final hidden state
        return self.head(self.dropout(representation))  # (B, num_classes)

    def forward_window(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits (B, num_classes) for windows (B, K, 3, H, W), or (B, 3K, H, W) slice-major.

        The 4-D form (slices folded into channels, as the 2.5D input) lets tools that
        expect image batches, such as Grad-CAM, pass a window.
        """
        if x.ndim == 4:
            batch, channels, height, width = x.shape
            x = x.reshape(batch, channels // 3, 3, height, width)  # (B, K, 3, H, W)
        if x.shape[1] != self.context_slices:
            raise ValueError(f"expected windows of {self.context_slices} slices; got input of shape {tuple(x.shape)}")
        return self.classify_windows(self.embed(x))

    def forward_series(self, chunk: torch.Tensor, *, all_slices: bool = False) -> torch.Tensor:
        """Classify consecutive slices of one series, embedding each slice once.

        Parameters
        ----------
        chunk
            (B, N, 3, H, W) consecutive slices of one series per row in slice order, windows
            in [0, 1]; a 4-D (N, 3, H, W) tensor is one series.
        all_slices
            False: the first and last K // 2 slices are context only, and the result holds
            the N - 2 * (K // 2) inner slices; each window is the one the per-window model
            sees, so the logits match it in eval mode. True: every slice gets logits; the
            windows at the ends repeat the end slices, as clipped neighbour indices do (a
            whole series). A bidirectional model reads the whole chunk in both directions.

        Returns
        -------
        torch.Tensor
            Logits (B, M, num_classes), or (M, num_classes) for a 4-D chunk, with M = N
            or N - 2 * (K // 2).
        """
        single_series = chunk.ndim == 4
        if single_series:
            chunk = chunk.unsqueeze(0)  # (1, N, 3, H, W)
        half = self.context_slices // 2
        if not all_slices and chunk.shape[1] < self.context_slices:
            raise ValueError(
                f"a chunk needs at least {self.context_slices} slices (K // 2 = {half} of context at "
                f"each end); got {chunk.shape[1]}"
            )

        embeddings = self.embed(chunk)  # (B, N, F)

        if self.bidirectional:
            outputs, _ = self.lstm(embeddings)  # (B, N, 2 * hidden)
            if not all_slices:
                outputs = outputs[:, half : outputs.shape[1] - half]  # (B, M, 2 * hidden)
            logits = self.head(self.dropout(outputs))  # (B, M, num_classes)
        else:
            if all_slices and half > 0:
                first = embeddings[:, :1].expand(-1, half, -1)
                last = embeddings[:, -1:].expand(-1, half, -1)
                embeddings = torch.cat([first, embeddings, last], dim=1)  # (B, N + 2 * half, F)
            windows = embeddings.unfold(1, self.context_slices, 1)  # (B, M, F, K)
            windows = windows.permute(0, 1, 3, 2)  # (B, M, K, F)
            batch, n_windows, slices, features = windows.shape
            flat_logits = self.classify_windows(windows.reshape(batch * n_windows, slices, features))
            logits = flat_logits.view(batch, n_windows, -1)  # (B, M, num_classes)

        return logits[0] if single_series else logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run :meth:`forward_series` in series mode, otherwise :meth:`forward_window`."""
        if self.series_mode:
            return self.forward_series(x)
        return self.forward_window(x)
