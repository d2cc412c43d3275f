"""Rank -> role assignment and process groups.

Global ranks 0..E-1 are encoders, E..E+L-1 language replicas; the language leader is rank E.
It dispatches the requests and writes the results. Groups (created with `dist.new_group`, in the
same order on every rank):

- `ctrl`: gloo, all ranks. Dispatch messages (`messages.py`: UTF-8 JSON, never pickles) and the
  barriers. Always gloo so it works with any-source receives and CPU tensors even when the data
  plane is NCCL.
- data: used by `hf_qwen3_deepstack.transfer` for the EncoderOutput payloads (`data_for`). On CPU
  one gloo group of all ranks. With CUDA one ``cpu:gloo,cuda:nccl`` group per (encoder, language)
  pair: with eager initialization (`device_id`) torch runs every point-to-point operation of a
  group on one NCCL stream, in posting order, so two pairs sharing a group could each wait on the
  other (encoder 0 sending to language 2 while language 2 waits for encoder 1, which waits for
  language 3...). One group per pair gives each pair its own stream, as the protocol assumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch.distributed as dist


@dataclass
class Roles:
    rank: int
    world_size: int
    num_encoders: int
    num_lms: int

    def __post_init__(self) -> None:
        if self.num_encoders < 1 or self.num_lms < 1:
            raise ValueError("need at least 1 encoder and 1 language rank")
        if self.num_encoders + self.num_lms != self.world_size:
            raise ValueError(
                f"--encoders {self.num_encoders} + --lms {self.num_lms} = {self.num_encoders + self.num_lms} "
                f"ranks, but the job has {self.world_size} (torchrun --nproc-per-node x --nnodes must equal E + L)"
            )

    @property
    def encoder_ranks(self) -> list[int]:
        return list(range(self.num_encoders))

    @property
    def lm_ranks(self) -> list[int]:
        return list(range(self.num_encoders, self.world_size))

    @property
    def is_encoder(self) -> bool:
        return self.rank < self.num_encoders

    @property
    def is_lm(self) -> bool:
        return not self.is_encoder

    @property
    def lm_leader(self) -> int:
        return self.num_encoders

    @property
    def is_lm_leader(self) -> bool:
        return self.rank == self.lm_leader

    @property
    def role_name(self) -> str:
        return self.describe(self.rank) + (" (leader)" if self.is_lm_leader else "")

    def describe(self, rank: int) -> str:
        """Role of any global rank, e.g. 'encoder 0' or 'language 1'."""
        return f"encoder {rank}" if rank < self.num_encoders else f"language {rank - self.num_encoders}"


@dataclass
class Groups:
    ctrl: Any
    data: Any  # CPU: the data group of every pair (None with CUDA)
    data_pairs: dict[tuple[int, int], Any] = field(default_factory=dict)  # CUDA: (encoder, lm) -> group

    def data_for(self, encoder: int, lm: int) -> Any:
        """The group carrying the payloads from global rank `encoder` to global rank `lm`."""
        return self.data_pairs[(encoder, lm)] if self.data_pairs else self.data


def make_groups(roles: Roles, timeout: timedelta | None = None) -> Groups:
    """Create every group; must be called by all ranks in the same order."""
    ctrl = dist.new_group(list(range(roles.world_size)), backend="gloo", timeout=timeout)
    groups = Groups(ctrl=ctrl, data=None)
    if dist.get_backend() != "nccl":
        groups.data = dist.new_group(list(range(roles.world_size)), backend="gloo", timeout=timeout)
        return groups
    # the transfer's headers and control messages are host tensors (gloo), its data CUDA tensors (NCCL)
    for e in roles.encoder_ranks:
        for lm in roles.lm_ranks:
            groups.data_pairs[(e, lm)] = dist.new_group([e, lm], backend="cpu:gloo,cuda:nccl", timeout=timeout)
    return groups
