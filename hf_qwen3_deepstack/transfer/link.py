"""Point-to-point messages to one peer, straight on the `ProcessGroup`, and the rule of one live
sender and one live receiver per (group, peer, tag).

`dist.isend`/`dist.irecv` resolve the group and translate the global rank on every call; a channel
posts several messages per chunk, so that is done once here and each message is one call into the
backend (`ProcessGroup.send`/`recv`, where those wrappers end). The group picks the backend by the
tensor's device: headers and control messages are host tensors (the group's CPU backend, gloo),
rows go on the data's device (NCCL for CUDA). The group must therefore have a CPU backend.

Two live senders (or receivers) on one (group, peer, tag) would take each other's messages: gloo
then aborts the process on a message longer than the receive it lands in. `claim` makes that a
`ValueError` at construction; `close()` releases the claim.
"""

from __future__ import annotations

import threading

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
        self.pg = pg

    def isend(self, tensor: torch.Tensor, tag: int) -> dist.Work:
        return self.pg.send([tensor], self.group_peer, tag)

    def irecv(self, tensor: torch.Tensor, tag: int) -> dist.Work:
        return self.pg.recv([tensor], self.group_peer, tag)


_live: dict[tuple, dist.ProcessGroup] = {}  # (role, id(group), peer, tag) -> group (kept alive: ids stay unique)
_live_lock = threading.Lock()


def claim(role: str, links: list[PeerLink], tag: int) -> list[tuple]:
    """Register a live `role` ("sender"/"receiver") on each link's (group, peer, tag), or raise
    ValueError naming the pair that is taken. Returns the keys to `release`."""
    keys = [(role, id(link.pg), link.peer, tag) for link in links]
    with _live_lock:
        for key in keys:
            if key in _live or keys.count(key) > 1:
                raise ValueError(
                    f"a live {role} already exists for peer rank {key[2]}, tag {tag} on this process group: two "
                    f"would take each other's messages. close() the first before creating another (or use another tag)")
        for key, link in zip(keys, links):
            _live[key] = link.pg
    return keys


def release(keys: list[tuple]) -> None:
    with _live_lock:
        for key in keys:
            _live.pop(key, None)
