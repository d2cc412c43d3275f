"""Resumable chunked transfer of `EncoderOutput` over torch.distributed point-to-point.

The same code runs on gloo (CPU tensors) and NCCL (CUDA tensors): every message is a tensor on
the data's device, sent with `dist.isend`/`dist.irecv`, so a group created with
``backend="cpu:gloo,cuda:nccl"`` picks the backend by device. No sockets of our own, no pickle:
headers are fixed-size int64 tensors, validated before any data is received.

Pairwise use::

    # encoder rank                                   # language rank
    tx = EncoderOutputSender(peer=lang_rank)          rx = EncoderOutputReceiver(peer=enc_rank, capacity_tokens=4096)
    tx.send(request_id, encoder_output)               request_id, encoder_output = rx.recv()
    h = tx.isend(request_id, encoder_output)          for chunk in rx.recv_chunks(): ...   # streaming
    ...; h.wait()                                     rx.close()
    tx.close()

`peer` is a global rank; `group` restricts the messages to a process group (default: WORLD).

Protocol (pull-based; `protocol.py` has the formats, `chunking.py` the layout)
-----------------------------------------------------------------------------
* The receiver sends a control message ``PULL(request_id, offset, capacity)``: "everything of
  that request below `offset` is acknowledged; send the chunk starting there". ``request_id=NEXT``
  asks for the first chunk of the oldest request not yet started. The final acknowledgement of
  a request travels in the same message as the pull of the next request (``done_request_id``),
  so between requests there is one control message and the next request is prefetched.
* The sender answers each pull with one chunk: a fixed-size header (magic, version, kind,
  request id, chunk index, token offset/count, total tokens, B, S, N, visual row offset/count,
  K, H, dtype codes, image/video token ids, flags, section sizes, checksum), then its data: an
  int64 section (rope deltas on the first chunk; ids, 3-D positions, mask of its tokens) and the
  visual-embedding and deepstack rows of the visual tokens among them. Small chunks are packed
  into one message; large ones go zero-copy as 1 + (1 + K) messages.
* Tokens are chunked along the flattened (B*S) order, `capacity_tokens` per chunk (the last one
  shorter). Deepstack rows always travel with the chunk of their tokens. Text tokens carry no
  embedding rows: bytes per request = per-token ids/positions/mask + visual rows x (1 + K) x H.
* A chunk is **acknowledged** when the receiver has consumed it: `recv()` copied it into the
  result, or the `recv_chunks()` consumer asked for the next chunk. The sender keeps a request
  (and the `SendHandle` stays pending) until its last token is acknowledged.

Receiver memory
---------------
`EncoderOutputReceiver` allocates one staging buffer of
``8*(max_batch_size + 5*capacity_tokens) + (1+K)*capacity_tokens*H*itemsize`` bytes, once (at
construction when `hidden_size`, `num_deepstack_levels` and `dtype` are given, else at the first
request, whose values then become the expectations). A chunk never exceeds `capacity_tokens`
tokens, so staging never holds more than that of a request. `recv_chunks()` yields views into the
staging buffer (bounded memory end to end, e.g. for chunked prefill); `recv()` assembles the
whole request, receiving large embedding blocks straight into the result tensors (saves one
memcpy) and small ones through staging. `receiver.recycle(output)` hands a consumed result back so
the next `recv()` reuses its embedding memory instead of page-faulting fresh memory (for large
requests that costs about as much as the transfer).

Resume semantics
----------------
* **Timeout.** Every wait of the receiver has a deadline (`timeout`, per call or from the
  constructor). When it expires `TransferTimeout` (request id and token offset in the message and
  in `.request_id`/`.offset`) is raised and *the posted receives stay posted*: calling `recv()`
  (or `recv_chunks()`, or `resume(request_id)`) again continues waiting for the same chunk. No
  byte is requested or sent twice.
* **Consumer exception.** If a `recv_chunks()` consumer raises (or stops iterating) while holding
  a chunk, that chunk is *not* acknowledged. The next `recv_chunks()`/`resume(request_id)` pulls
  again from the acknowledged offset, i.e. re-requests only that unacknowledged chunk. Chunks
  acknowledged before are never sent again (the sender refuses a pull below the acknowledged
  offset; `sender.stats.payload_bytes_resent` counts unacknowledged chunks sent twice).
* At most one request is in progress per receiver (the staging buffer holds one chunk), so while
  a request is interrupted `recv()` resumes it instead of starting another; `receiver.interrupted`
  names it. Resume a request with the call that started it (`recv` or `recv_chunks`).
* Sender side, `SendHandle.wait(timeout)` raises `TransferTimeout` if the request is not fully
  acknowledged in time; the request stays retained and waiting again is fine.

Errors
------
`TransferError` (base; `.request_id`, `.field`), `HeaderMismatch` (magic, version, checksum,
request id, offset, count, dtype, H, K, batch size... disagree with expectations: the message names
the request and the field; the receiver drains the chunk's data and rejects the request, so the
sender's handle fails with a `HeaderMismatch` naming the field and the channel stays usable),
`TransferTimeout` (silent peer: names request and offset), `PeerClosed` (sender closed: `recv()`
raises it once every sender said goodbye; receiver closed: pending handles fail with it).

Several senders ("whichever encoder is ready")
----------------------------------------------
``EncoderOutputReceiver(peer=[1, 2, 3], ...)`` pulls from all of them: it keeps one ``PULL(NEXT)``
outstanding per sender and `recv()` takes the first sender whose chunk header arrived (round
robin among those ready); `receiver.last_peer` says who it was, `EncoderOutputChunk.peer` too.
`poll()` is a non-blocking "is anything ready". Request ids need only be unique per sender.
Each encoder rank uses one `EncoderOutputSender` per language rank it serves.

Devices
-------
CPU tensors -> gloo, CUDA tensors -> NCCL (same calls). For CUDA pass ``device=`` to both ends
(the sender's control buffers are allocated before its first request). Completion of CUDA works is
polled with `is_completed()`; NCCL itself has not been exercised by the tests (CPU-only CI).

Shutdown
--------
Call `sender.close()` (waits for in-flight requests, then answers the receiver's pending pull
with BYE) and `receiver.close()` (tells senders to stop listening) on both sides before
`dist.destroy_process_group()`: gloo aborts the process if a receive is still posted then.

Threads: the sender runs a control-reader and a worker thread; the receiver one waiter thread per
peer (gloo works cannot be polled and `wait(timeout)` closes a gloo connection on expiry).
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
