"""Dense Qwen3-VL end to end through the wire: encoder in one process, language model in another (gloo),
greedy tokens identical to transformers' Qwen3VLForConditionalGeneration, tied and untied heads."""

import pytest
import torch
from _checkpoints import PARITY_CASES, vl_checkpoint, with_token_types
from _dist import run_ranks

NEW_TOKENS = 8
CAPACITY = 8  # small: every request crosses in several chunks
HEADS = ["untied", "tied"]

CASES = PARITY_CASES
GEN = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)


def _split_pipeline(rank, paths):
    from hf_qwen3_deepstack import Qwen3ForCausalLMWithDeepStack, Qwen3VLEncoderOnly
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

    jobs = [(head, name) for head in paths for name in CASES]
    if rank == 0:  # encoder rank: vision weights only
        tx = EncoderOutputSender(1, timeout=60)
        for head, path in paths.items():
            enc = Qwen3VLEncoderOnly.from_pretrained(path).eval()
            with torch.no_grad():
                handles = [tx.isend(jobs.index((head, name)), enc.encode(**CASES[name]())) for name in CASES]
            for h in handles:
                h.wait()
        tx.close()
        return tx.stats.chunks_sent
    lms = {head: Qwen3ForCausalLMWithDeepStack.from_pretrained(path).eval() for head, path in paths.items()}
    rx = EncoderOutputReceiver(0, capacity_tokens=CAPACITY, timeout=60,
                               hidden_size=lms[next(iter(lms))].config.hidden_size)
    tokens = {}
    for _ in jobs:
        rid, out = rx.recv()
        head, name = jobs[rid]
        tokens[f"{head}/{name}"] = lms[head].generate(**out.lm_inputs(), **GEN)
    rx.close()
    return tokens


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.getbasetemp()
    return {head: str(vl_checkpoint(root, f"dense-vl-{head}", family="dense", tie_word_embeddings=head == "tied"))
            for head in HEADS}


def test_greedy_tokens_through_the_wire_equal_qwen3_vl(checkpoints):
    from transformers import Qwen3VLForConditionalGeneration

    chunks_sent, tokens = run_ranks(_split_pipeline, args=(checkpoints,), timeout=300)
    for head, path in checkpoints.items():
        ref = Qwen3VLForConditionalGeneration.from_pretrained(path).eval()
        for name, make in CASES.items():
            expected = ref.generate(**with_token_types(make()), **GEN)
            assert torch.equal(tokens[f"{head}/{name}"], expected), (head, name)
    total_tokens = len(HEADS) * sum(CASES[n]()["input_ids"].numel() for n in CASES)
    assert chunks_sent >= total_tokens // CAPACITY  # it really went in chunks
