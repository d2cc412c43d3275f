"""save_pretrained of each half writes a folder that plain transformers loads with
trust_remote_code=True, in a process where hf_qwen3_deepstack cannot be imported."""

import json

import torch
from _checkpoints import prompt, vl_checkpoint
from _isolated_python import run_isolated
from safetensors.torch import load_file, save_file

from hf_qwen3_deepstack import Qwen3MoeForCausalLMWithDeepStack, Qwen3VLMoeEncoderOnly

CHILD = """
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

inputs = load_file("inputs.safetensors")
enc_config = AutoConfig.from_pretrained("{enc}", trust_remote_code=True)
lm_config = AutoConfig.from_pretrained("{lm}", trust_remote_code=True)
assert type(enc_config).__name__ == "Qwen3VLMoeEncoderOnlyConfig", type(enc_config)
assert type(lm_config).__name__ == "Qwen3MoeDeepStackConfig", type(lm_config)
enc = AutoModel.from_pretrained("{enc}", config=enc_config, trust_remote_code=True).eval()
lm = AutoModelForCausalLM.from_pretrained("{lm}", config=lm_config, trust_remote_code=True).eval()
assert type(enc).__name__ == "Qwen3VLMoeEncoderOnly" and type(lm).__name__ == "Qwen3MoeForCausalLMWithDeepStack"
out = enc.encode(**inputs)
with torch.no_grad():
    logits = lm(**out.lm_inputs()).logits
tokens = lm.generate(**out.lm_inputs(), max_new_tokens=8, min_new_tokens=8, do_sample=False)
save_file({{"visual_embeds": out.visual_embeds.contiguous(), "deepstack": out.deepstack_visual_embeds.contiguous(),
            "position_ids": out.position_ids.contiguous(), "logits": logits.contiguous(), "tokens": tokens}},
          "outputs.safetensors")
print("remote classes:", type(enc).__module__, type(lm).__module__)
"""


def test_saved_halves_load_with_auto_classes_without_our_package(tmp_path_factory, tmp_path):
    path = vl_checkpoint(tmp_path_factory.getbasetemp())
    enc = Qwen3VLMoeEncoderOnly.from_pretrained(path).eval()
    lm = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(path).eval()
    enc.save_pretrained(tmp_path / "enc")
    lm.save_pretrained(tmp_path / "lm")
    for folder, auto in (("enc", "AutoModel"), ("lm", "AutoModelForCausalLM")):
        config = json.loads((tmp_path / folder / "config.json").read_text())
        assert auto in config["auto_map"] and "AutoConfig" in config["auto_map"]
        assert config["model_type"] in ("qwen3_vl_moe_encoder_only", "qwen3_moe_deepstack")

    inputs = prompt(images=[(1, 4, 6)], videos=[(2, 4, 4)], seed=21)
    (tmp_path / "child").mkdir()
    save_file(inputs, tmp_path / "child" / "inputs.safetensors")
    stdout = run_isolated(CHILD.format(enc=tmp_path / "enc", lm=tmp_path / "lm"), cwd=tmp_path / "child")
    assert "transformers_modules" in stdout  # the classes came from the saved folders

    remote = load_file(tmp_path / "child" / "outputs.safetensors")
    out = enc.encode(**inputs)
    with torch.no_grad():
        logits = lm(**out.lm_inputs()).logits
    tokens = lm.generate(**out.lm_inputs(), max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert torch.equal(remote["visual_embeds"], out.visual_embeds)
    assert torch.equal(remote["deepstack"], out.deepstack_visual_embeds)
    assert torch.equal(remote["position_ids"], out.position_ids)
    assert (remote["logits"] - logits).abs().max() <= 1e-6
    assert torch.equal(remote["tokens"], tokens)
