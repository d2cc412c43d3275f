"""Point-to-point messages to one peer, straight on the `ProcessGroup` object.

`dist.isend`/`dist.irecv` resolve the group and translate the global rank on every call (Python
wrappers, logging decorators). A channel sends or posts about a dozen messages per chunk, so the
group and the peer's group rank are resolved once here and each message is one call into the
backend (`ProcessGroup.send`/`recv`, the same calls those wrappers end in).

The group picks the backend by the tensor's device. Headers and control messages are host
tensors, so they always go over the group's CPU backend (gloo), matched by tag; chunk data goes
on the data's device (NCCL for CUDA). That keeps NCCL's ordering out of the protocol's way: NCCL
ignores tags and runs a pair's sends and receives one after another on one stream, so a control
receive posted there would hold up the data behind it. The group must therefore have a CPU
backend: ``backend="cpu:gloo,cuda:nccl"`` on GPUs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class PeerLink:
    """Messages between this rank and global rank `peer` within `group` (default: WORLD)."""

    def __init__(self, peer: int, group: dist.ProcessGroup | None = None):
        pg = group if group is not None else dist.group.WORLD
        if pg is None:
            raise RuntimeError("torch.distributed is not initialized: call dist.init_process_group first")
        if dist.get_rank(pg) < 0:
            raise ValueError(f"this rank ({dist.get_rank()}) is not a member of the given process group")
        try:
            if not 0 <= peer < dist.get_world_size():
                raise ValueError(f"world size is {dist.get_world_size()}")
            self.group_peer = dist.get_group_rank(pg, peer)
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"peer rank {peer} is not a member of the given process group ({e})") from e
        types = getattr(pg, "_device_types", None)
        if types is not None and torch.device("cpu") not in types:
            raise ValueError(
                f"the process group (backend '{dist.get_backend(pg)}') has no CPU backend: the transfer's headers "
                "and control messages are host tensors. Create it with backend='cpu:gloo,cuda:nccl' "
                "(dist.init_process_group or dist.new_group): CUDA data then goes over NCCL, the rest over gloo")
        self.peer = peer
        self._pg = pg

    def isend(self, tensor: torch.Tensor, tag: int) -> dist.Work:
        return self._pg.send([tensor], self.group_peer, tag)

    def irecv(self, tensor: torch.Tensor, tag: int) -> dist.Work:
        return self._pg.recv([tensor], self.group_peer, tag)
