"""End to end through the wire: encoder in one process, language model in another (gloo), greedy
tokens identical to transformers' monolithic Qwen3VLMoeForConditionalGeneration."""

import pytest
import torch
from _checkpoints import PARITY_CASES, vl_checkpoint, with_token_types
from _dist import run_ranks

NEW_TOKENS = 8
CAPACITY = 8  # small: every request crosses in several chunks

CASES = {name: PARITY_CASES[name] for name in ("one_image", "image_and_video", "text_only", "left_padded_batch_of_two")}
GEN = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)


def _split_pipeline(rank, path):
    from hf_qwen3_deepstack import Qwen3MoeForCausalLMWithDeepStack, Qwen3VLMoeEncoderOnly
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

    torch.manual_seed(0)
    if rank == 0:  # encoder rank: vision weights only
        enc = Qwen3VLMoeEncoderOnly.from_pretrained(path).eval()
        tx = EncoderOutputSender(1, timeout=60)
        with torch.no_grad():
            handles = [tx.isend(i, enc.encode(**CASES[name]())) for i, name in enumerate(CASES)]
        for h in handles:
            h.wait()
        tx.close()
        return tx.stats.chunks_sent
    lm = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(path).eval()
    cfg = lm.config
    rx = EncoderOutputReceiver(0, capacity_tokens=CAPACITY, timeout=60, hidden_size=cfg.hidden_size)
    tokens = {}
    for _ in CASES:
        rid, out = rx.recv()
        tokens[list(CASES)[rid]] = lm.generate(**out.lm_inputs(), **GEN)
    rx.close()
    return tokens


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return vl_checkpoint(tmp_path_factory.getbasetemp())


def test_greedy_tokens_through_the_wire_equal_monolithic(checkpoint):
    from transformers import Qwen3VLMoeForConditionalGeneration

    chunks_sent, tokens = run_ranks(_split_pipeline, args=(str(checkpoint),), timeout=300)
    ref = Qwen3VLMoeForConditionalGeneration.from_pretrained(checkpoint).eval()
    for name, make in CASES.items():
        inputs = make()
        expected = ref.generate(**with_token_types(inputs), **GEN)
        assert torch.equal(tokens[name], expected), name
    total_tokens = sum(CASES[n]()["input_ids"].numel() for n in CASES)
    assert chunks_sent >= total_tokens // CAPACITY  # it really went in chunks
