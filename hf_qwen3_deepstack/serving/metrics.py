"""Prometheus metrics of the server (`GET /metrics`), kept by the language leader."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
PREFIX = "hf_qwen3_deepstack_"


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.received = Counter(PREFIX + "requests_received", "requests accepted for generation", registry=r)
        self.requests = Counter(PREFIX + "requests", "requests answered, by outcome: ok, rejected (400), error, cancelled",
                                ["outcome"], registry=r)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.generated_tokens = Counter(PREFIX + "generation_tokens", "tokens generated", registry=r)
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds", "arrival to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram(PREFIX + "e2e_request_latency_seconds", "arrival to last token",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge(PREFIX + "queue_depth", "requests waiting for an encoder or a replica", registry=r)
        self.in_flight = Gauge(PREFIX + "requests_in_flight", "requests dispatched and not finished", registry=r)
        self.batch_size = Gauge(PREFIX + "running_batch_size", "sequences decoding together on a language rank",
                                ["lm_rank"], registry=r)
        self.decode_batch = Histogram(PREFIX + "decode_batch_size", "sequences decoding together when one finished",
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.encoder_batch = Histogram(PREFIX + "encoder_batch_size", "requests per vision-tower call",
                                       buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.transfer_bytes = Counter(PREFIX + "transfer_bytes", "EncoderOutput payload bytes sent", registry=r)
        self.transfer_time = Histogram(PREFIX + "transfer_seconds", "encoder send to language receive",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.cache = Counter(PREFIX + "encoder_cache_lookups", "vision-tower cache lookups of images and videos",
                             ["result"], registry=r)

    def on_result(self, result: dict) -> None:
        if "error" in result:  # rejected: the request itself was bad (400); error: the server failed it
            outcome = "cancelled" if result.get("cancelled") else "rejected" if result.get("status") == 400 else "error"
            self.requests.labels(outcome).inc()
            return
        self.requests.labels("ok").inc()
        self.prompt_tokens.inc(result["prompt_tokens"])
        self.generated_tokens.inc(len(result["token_ids"]))
        self.ttft.observe(result["ttft_s"])
        self.latency.observe(result["latency_s"])
        self.transfer_time.observe(result["timings"]["transfer_s"])

    def on_encoded(self, message: dict) -> None:
        self.encoder_batch.observe(len(message["items"]))
        self.transfer_bytes.inc(sum(int(item.get("bytes", 0)) for item in message["items"]))
        self.cache.labels("hit").inc(int(message.get("cache_hits", 0)))
        self.cache.labels("miss").inc(int(message.get("cache_misses", 0)))

    def render(self) -> bytes:
        return generate_latest(self.registry)
