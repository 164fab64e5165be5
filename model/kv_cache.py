"""Preallocated key/value buffers for incremental decoding, written in place by position."""

from __future__ import annotations

import torch

from .config import GPTBigCodeConfig

# One tensor holds every layer's keys and values: (n_layer, 2, batch, kv_heads, capacity,
# head_dim). With multi-query attention kv_heads is 1, so a token costs
# 2 * n_layer * head_dim values instead of 2 * n_layer * n_embd: the saving that makes a long
# per-document cache affordable. Rows of a batch share one length (left padding keeps them
# aligned).


class KVCache:
    """Keys and values of the tokens processed so far, for every layer."""

    def __init__(
        self,
        config: GPTBigCodeConfig,
        batch_size: int = 1,
        capacity: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        capacity = config.n_positions if capacity is None else capacity
        if capacity <= 0 or batch_size <= 0:
            raise ValueError(
                f"capacity and batch_size must be positive, got {capacity}, {batch_size}"
            )
        self.n_layer = config.n_layer
        self.kv_heads = config.kv_heads
        self.head_dim = config.head_dim
        self.max_length = config.n_positions
        self.buffer = torch.zeros(
            config.n_layer, 2, batch_size, config.kv_heads, min(capacity, config.n_positions),
            config.head_dim, dtype=dtype, device=device,
        )  # (L, 2, B, KVH, capacity, D)
        self.length = 0

    # -- shape and size -------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return self.buffer.shape[2]

    @property
    def capacity(self) -> int:
        return self.buffer.shape[4]

    @property
    def dtype(self) -> torch.dtype:
        return self.buffer.dtype

    @property
    def device(self) -> torch.device:
        return self.buffer.device

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers (allocated capacity, not just the filled part)."""
        return self.buffer.numel() * self.buffer.element_size()

    def get_seq_length(self) -> int:
        return self.length

    def __len__(self) -> int:
        return self.length

    # -- writing --------------------------------------------------------------------------

    def reserve(self, length: int) -> None:
        """Make room for `length` tokens.

        Growth is geometric (an eighth of the capacity, at least 64 tokens) so appends stay
        amortised O(1) without doubling the memory of a long per-document entry.
        """
        if length > self.max_length:
            raise ValueError(
                f"sequence of {length} tokens exceeds the model's n_positions ({self.max_length})"
            )
        if length <= self.capacity:
            return
        step = max(self.capacity // 8, 64)
        new_capacity = min(-(-max(length, self.capacity + step) // 64) * 64, self.max_length)
        shape = list(self.buffer.shape)
        shape[4] = new_capacity
        grown = torch.zeros(shape, dtype=self.buffer.dtype, device=self.buffer.device)
        grown[:, :, :, :, : self.length] = self.buffer[:, :, :, :, : self.length]
        self.buffer = grown

    def write(
        self, layer: int, start: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, KVH, T, D) keys/values at positions [start, start+T); return all so far."""
        end = start + key.shape[2]
        self.buffer[layer, 0, :, :, start:end] = key
        self.buffer[layer, 1, :, :, start:end] = value
        return self.buffer[layer, 0, :, :, :end], self.buffer[layer, 1, :, :, :end]

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (no data moves)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        self.length = length

    def reset(self) -> None:
        self.length = 0

    # -- views ----------------------------------------------------------------------------

    def keys(self, layer: int) -> torch.Tensor:
        return self.buffer[layer, 0, :, :, : self.length]

    def values(self, layer: int) -> torch.Tensor:
        return self.buffer[layer, 1, :, :, : self.length]

    def to_legacy(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Per-layer (key, value) pairs of shape (B, KVH, T, D), copies of the filled part."""
        return tuple(
            (self.keys(i).clone(), self.values(i).clone()) for i in range(self.n_layer)
        )

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows given (used when finished sequences leave a batch)."""
        self.buffer = self.buffer[:, :, rows].contiguous()

    def __repr__(self) -> str:
        return (
            f"KVCache(length={self.length}, capacity={self.capacity}, batch={self.batch_size}, "
            f"layers={self.n_layer}, kv_heads={self.kv_heads}, head_dim={self.head_dim}, "
            f"dtype={self.dtype}, bytes={self.nbytes})"
        )
