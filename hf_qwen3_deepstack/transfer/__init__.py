"""Resumable chunked transfer of `EncoderOutput` over torch.distributed point-to-point.

The same code runs on gloo (CPU tensors) and NCCL (CUDA tensors): every message is a tensor sent
point-to-point on the process group (`ProcessGroup.send`/`recv`, what `dist.isend`/`dist.irecv`
call, without their per-call Python; `link.py`), which picks the backend by the tensor's device.
Headers and control messages are host tensors (the group's CPU backend, gloo); chunk data is on
the data's device. On GPUs create the group with ``backend="cpu:gloo,cuda:nccl"`` (see Devices).
No sockets of our own, no pickle: headers are fixed-size int64 tensors, validated before any
data is received.

Pairwise use::

    # encoder rank                                   # language rank
    tx = EncoderOutputSender(peer=lang_rank)          rx = EncoderOutputReceiver(peer=enc_rank, capacity_tokens=4096)
    tx.send(request_id, encoder_output)               request_id, encoder_output = rx.recv()
    h = tx.isend(request_id, encoder_output)          for chunk in rx.recv_chunks(): ...   # streaming
    ...; h.wait()                                     rx.close()
    tx.close()

`peer` is a global rank; `group` restricts the messages to a process group (default: WORLD).

Protocol (pull-based; whole requests pushed on gloo; `protocol.py` formats, `chunking.py` layout)
-----------------------------------------------------------------------------------------------
Three tags per channel: control (receiver -> sender) and headers (sender -> receiver), host
tensors on the group's CPU backend, and data (sender -> receiver) on the data's device. On gloo
the sender never sends data into a receive that is not posted yet: a late-posted receive costs
an extra rendezvous round trip that, measured, about doubles the time of a multi-MB message.

* **Describe.** The receiver posts the receive of a header, then sends ``PULL(NEXT, capacity,
  inline_bytes)``. The sender answers with the first chunk header of its oldest unstarted request
  (or BYE once closed): magic, version, kind, request id, chunk index, token offset/count, total
  tokens, B, S, N, visual row offset/count, K, H, dtype codes, image/video token ids, flags,
  section sizes, CRC-32 checksum. A request that is one chunk of at most `inline_bytes` data bytes comes
  **inline**, in the same message as its header (gloo only: it accepts a message shorter than the
  posted receive, so the receiver posts ``256 + inline_bytes`` bytes; headers arrive in host
  memory, so CUDA receivers use ``inline_bytes=0``). A small request is then one message end to end.
  Any other chunk header carries its chunk's int section in the same message when that fits
  `inline_bytes` (``FLAG_INTS``): the receiver copies it out (into the result or staging) before
  the next header can land in that buffer, and the chunk's data is then its rows alone.
* **Data, pulled** (CUDA, or `push=False`). With the header in hand the receiver knows every
  size: it posts the receives for the chunk's data (straight into the result tensors where it
  can) and for the next chunk's header, then sends ``PULL(request_id, offset)``: "everything
  below `offset` is acknowledged, send the data of the chunk at `offset`". The sender sends it,
  then the header of the following chunk.
  The pull of a request's last chunk also asks to describe the next request, so its header
  travels while the receiver is still busy with this one; the final acknowledgement follows as
  ``ACK`` (or rides on the next ``PULL(NEXT)``).
* **Push (gloo default, `push=True`).** The receiver's ``PULL(NEXT)`` is flagged ``PULL_PUSH``:
  the sender answers with the whole request, posting every chunk's header and data at once, in
  order. gloo sends a message only once its receive is posted (measured: an unposted 200 MB send
  moves nothing and the receiver's memory does not grow), and the receiver posts a chunk's data
  receive (with the next chunk's header receive) only after the previous chunk is acknowledged.
  Posting them *is* the request for the next chunk from the acknowledged offset, answered by
  gloo itself: no control message and no work of the sender between two chunks. The data of a
  chunk over `PUSH_LIMIT` (512 KiB), and of every chunk after it (data must reach gloo in the order
  it is received), is not pushed: its header says ``FLAG_PULLED`` and the receiver pulls it
  (data-only; on the last chunk with the next request's describe), because gloo sends a large
  message faster into a receive that is already posted (2 MB: 1.9 against 3.1 ms, measured).
  Otherwise the last chunk's receives go out with the ``PULL(NEXT)`` that prefetches the next
  request. A request dropped part-way (rejected, or the receiver closing) is received
  into scratch memory and discarded, so no send of it stays pending and the channel stays in
  step. CUDA receivers pull every chunk by default (`push=False`): pushing pays on gloo.
* Chunk data: an int64 section (rope deltas on the first chunk; ids, 3-D positions, mask of its
  tokens) and the visual-embedding and deepstack rows of the visual tokens among them, token-major
  (n, 1+K, H): each visual row followed by its K deepstack rows, so a chunk's rows are one block.
  With the int section in the header's message (gloo), a chunk's data is one message, its rows;
  otherwise small chunks travel packed as one message and large ones zero-copy as two. The
  encoder produces token-major rows (`EncoderOutput.visual_rows()`) and `recv()` returns them so;
  a sender given separate (N, H) and (K, N, H) tensors interleaves them once per request (a copy).
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
request, whose values then become the expectations), plus one header buffer of 256 bytes +
`inline_bytes` (1 MiB on CPU) per sender. A chunk never exceeds `capacity_tokens` tokens, so
staging never holds more than that of a request. A one-chunk request that arrived inline is
returned by `recv()` as views of its header buffer (no copy; the channel takes a fresh buffer).
`recv_chunks()` yields views into the staging buffer (bounded memory end to end, e.g. for chunked
prefill); `recv()` assembles the whole request, receiving large embedding blocks straight into the
result tensors (saves one memcpy) and small ones through staging; a one-chunk request's int
section lands in place too (its ids, positions, rope deltas and int64 mask are views of one block
in the wire's int layout). An int section that came in its header's message is copied from the
header buffer to where it would otherwise have been received (staging, or that block) before
the channel's next header receive is posted into the buffer. `receiver.recycle(output)` hands a consumed result back so the next
`recv()` reuses its embedding memory instead of page-faulting fresh memory (for large
requests that costs about as much as the transfer).

Resume semantics
----------------
* **Timeout.** Every wait of the receiver has a deadline (`timeout`, per call or from the
  constructor). When it expires `TransferTimeout` (request id and token offset in the message and
  in `.request_id`/`.offset`) is raised and *the posted receives stay posted*: calling `recv()`
  (or `recv_chunks()`, or `resume(request_id)`) again continues waiting for the same chunk. No
  byte is requested or sent twice.
* **Consumer exception.** If a `recv_chunks()` consumer raises (or stops iterating) while holding
  a chunk, that chunk is *not* acknowledged. The next `recv_chunks()`/`resume(request_id)` goes
  on from the acknowledged offset. Pushed, the chunk is still in staging (the next chunk's data
  receive is only posted after the acknowledgement) and is yielded again, as it was received:
  nothing is sent twice.
  Pulled, only the data of that unacknowledged chunk is requested again (``PULL`` flagged
  data-only: the next header already arrived; an int section that came with the chunk's header
  is kept, not sent again). Chunks acknowledged before are never sent again (the sender refuses
  a pull below the acknowledged offset; `sender.stats.payload_bytes_resent` counts unacknowledged
  chunks sent twice).
* At most one request is in progress per receiver (the staging buffer holds one chunk), so while
  a request is interrupted `recv()` resumes it instead of starting another; `receiver.interrupted`
  names it. Resume a request with the call that started it (`recv` or `recv_chunks`).
* Sender side, `SendHandle.wait(timeout)` raises `TransferTimeout` if the request is not fully
  acknowledged in time; the request stays retained and waiting again is fine.

Errors
------
`TransferError` (base; `.request_id`, `.field`), `HeaderMismatch` (magic, version, checksum,
request id, offset, count, dtype, H, K, batch size... disagree with expectations: the message names
the request and the field; the receiver rejects the request, so the sender's handle fails with a
`HeaderMismatch` naming the field and the channel stays usable: pulled, no data follows a header
unasked; pushed, the rest of the rejected request is received into scratch memory and dropped
before the error is raised, so the channel stays in step), a sender's refusal of a pull (an
``ERROR`` header: unknown request,
bad offset) is raised at once as `TransferError` even while the data receives are posted (they
stay posted, so that channel is unusable afterwards),
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
CPU tensors -> gloo, CUDA tensors -> NCCL (same calls). Headers, pulls and acknowledgements are
always host tensors, so on GPUs the group needs both backends: ``backend="cpu:gloo,cuda:nccl"``
(a group without a CPU backend is refused at construction, naming that fix). Only chunk data
goes over NCCL, which ignores tags and runs every operation between two ranks one after another
on one stream: a control receive queued there would hold up the data behind it, and the pull it
waits for could never arrive. The data messages are posted in the same order on both ends,
chunk after chunk, so they match one to one. Further rules on CUDA:

* The receiver sends a chunk's pull before posting its data receives: without eager
  initialization NCCL creates a pair's communicator inside the first operation of each side,
  which blocks until the peer's first one, and the sender's first one answers that pull.
* torch runs every point-to-point operation of an eagerly initialized group (``device_id`` given
  to `init_process_group`) on one stream, whatever the peer. Use one group per (sender,
  receiver) pair when ranks talk to several peers, as `hf-qwen3-deepstack run` does; else two
  pairs may each wait on the other.
* The sender records an event on the caller's current stream at `isend` and makes its sending
  thread's stream wait for it, so the encoder may produce its output on any stream. Completion
  of NCCL works is polled with `is_completed()` (data complete on the GPU) before a chunk is
  used or acknowledged; gloo works are waited for. Pass ``device=`` to the receiver.
* Headers say where the data is (``FLAG_CUDA``): a receiver on the other device type rejects the
  request at once (`HeaderMismatch` naming ``flags``, saying both devices) instead of waiting
  for data that travels on another backend.

CI has no GPU: the NCCL ordering rules (one stream per pair, tags ignored, the first operation
blocking until the peer's) are emulated on gloo in `tests/test_transfer_nccl_ordering.py`, and
NCCL itself has not been exercised by the tests.

Shutdown
--------
Call `sender.close()` (waits for in-flight requests, then answers the receiver's pending pull
with BYE) and `receiver.close()` (takes what was pushed of an unfinished request off the wire, then
tells senders to stop listening) on both sides before
`dist.destroy_process_group()`: gloo aborts the process if a receive is still posted then, or
while a thread still waits on a message. Both return once their own last messages completed and
their threads are done, so the group can be destroyed right after, without a barrier.

Threads: the sender runs a control-reader thread (it keeps the next control receive posted while
answering) and a send-completion thread (an inline request's one message is completed by the
control thread instead, when the receiver's next control message arrives: the receiver sends that
only once the message has landed, so no thread is woken on the latency-critical path); the receiver
two waiter threads per peer, one for headers and control sends and one for data (gloo works cannot
be polled and `wait(timeout)` closes a gloo connection on expiry). The data waiter, idle once a
request's data is here, also posts the request's final acknowledgement, so `recv()` returns without
paying for it; the next control message waits until it is posted, so the order on the wire is kept.
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
