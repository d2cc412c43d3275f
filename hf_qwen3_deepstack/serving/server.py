"""The language leader's HTTP side: uvicorn on a thread, serving the app in `app.py`, and the sink
through which the leader's loop hands it tokens and results."""

from __future__ import annotations

import queue
import sys
import threading
import time
from typing import Any

from hf_qwen3_deepstack.cli_values import LOG_PREFIX

from .app import ApiSettings, build_app, media_policy
from .gateway import Gateway
from .metrics import Metrics
from .options import ServeOptions


class HttpSink:
    """Results and tokens from the leader's loop to the HTTP clients; metrics on the way."""

    def __init__(self, ctx, events: queue.Queue):
        self.ctx = ctx
        self.options: ServeOptions = ctx.serve
        self.gateway = Gateway(events)
        self.metrics = Metrics()
        self.server = None
        self.thread: threading.Thread | None = None

    @property
    def draining(self) -> bool:
        return not self.gateway.accepting

    @draining.setter
    def draining(self, value: bool) -> None:
        self.gateway.accepting = not value

    def start(self, replica) -> None:
        import uvicorn

        opts, serve = self.ctx.options, self.options
        settings = ApiSettings(
            model_name=serve.served_model_name or (opts.lm_model or opts.model or "hf-qwen3-deepstack"),
            api_key=serve.api_key, max_body_bytes=int(serve.max_body_mb * (1 << 20)),
            media=media_policy(serve.allowed_local_media_path, serve.max_media_items),
            default_max_tokens=opts.max_new_tokens, media_fetch_timeout_s=opts.media_fetch_timeout,
            health_within_s=max(10.0, opts.timeout),
        )
        heartbeat, roles = self.ctx.heartbeat, self.ctx.roles
        if heartbeat is not None:  # a rank silent for three beats is reported long before the job stops
            self.gateway.silent_ranks = lambda: {f"rank {r} ({roles.describe(r)})": s for r, s in
                                                 heartbeat.silent_peers(3 * heartbeat.interval).items()}
        app = build_app(self.gateway, self.metrics, settings, replica.batch.tokenizer)
        config = uvicorn.Config(app, host=serve.host, port=serve.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.ctx.die(f"the HTTP server could not start on {serve.host}:{serve.port} (is the port in use?)")
            time.sleep(0.05)
        print(f"{LOG_PREFIX} serving {settings.model_name} at http://{serve.host}:{serve.port}/v1 "
              f"(OpenAI chat completions; /health, /metrics)", file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)

    def finish(self, request, line: dict[str, Any]) -> None:
        if "running" in line:
            running = line.pop("running")  # the batch it left, without it
            self.metrics.batch_size.labels(str(line["lm_rank"])).set(running)
            self.metrics.decode_batch.observe(running + 1)
        self.metrics.on_result(line)
        self.gateway.result(request.index, line)

    def tokens(self, index: int, token_ids: list[int]) -> None:
        self.gateway.tokens(index, token_ids)

    def encoded(self, msg: dict[str, Any]) -> None:
        self.metrics.on_encoded(msg)

    def beat(self, replica) -> None:
        self.gateway.loop_beat = time.monotonic()
        self.metrics.queue_depth.set(replica.dispatcher.queue_depth)
        self.metrics.in_flight.set(replica.dispatcher.in_flight)
        self.metrics.batch_size.labels(str(replica.rank)).set(len(replica.batch))

    def drain(self) -> None:
        """Stop taking requests; the leader's loop ends once those in flight are answered."""
        self.gateway.accepting = False
        self.gateway.events.put(("drain",))
