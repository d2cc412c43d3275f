"""Resumable chunked transfer of `EncoderOutput` over torch.distributed point-to-point.

    # encoder rank                                   # language rank
    tx = EncoderOutputSender(peer=lang_rank)          rx = EncoderOutputReceiver(peer=enc_rank, capacity_tokens=4096)
    tx.send(request_id, encoder_output)               request_id, encoder_output = rx.recv()
    h = tx.isend(request_id, encoder_output)          for chunk in rx.recv_chunks(): ...   # bounded memory
    ...; h.wait()                                     rx.close()
    tx.close()

The receiver pulls each request chunk by chunk (`capacity_tokens` tokens of the flattened B*S
order, with the visual and deepstack rows of those tokens) from the offset it acknowledged. The
same code runs on gloo (CPU tensors) and NCCL (CUDA tensors: create the group with
``backend="cpu:gloo,cuda:nccl"``: headers and control messages are host tensors). No sockets of our
own, no pickle. `protocol.py` documents the wire format; `docs/transfer-protocol.md` the design.

Errors: `TransferError` (base; `.request_id`, `.field`), `HeaderMismatch` (a message failed
validation: the request is rejected, the sender's handle fails naming the field, the channel stays
usable), `TransferTimeout` (`.offset`; the receives stay posted: call again to resume),
`PeerClosed` (the sender said BYE, or the receiver closed).
"""

from .protocol import HeaderMismatch, PeerClosed, TransferError, TransferTimeout
from .receiver import EncoderOutputChunk, EncoderOutputReceiver
from .sender import EncoderOutputSender, SendHandle, SenderStats

__all__ = [
    "EncoderOutputSender",
    "EncoderOutputReceiver",
    "EncoderOutputChunk",
    "SendHandle",
    "SenderStats",
    "TransferError",
    "HeaderMismatch",
    "TransferTimeout",
    "PeerClosed",
]
