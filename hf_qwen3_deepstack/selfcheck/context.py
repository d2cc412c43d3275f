"""What the checks share: the resolved device, the family, a work directory with the tiny checkpoint
and sample images (built once, on first use), and models and reference generations loaded once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from hf_qwen3_deepstack.families import ModelFamily

from .inputs import NEW_TOKENS, prompt_messages
from .options import SelfcheckOptions

CHECKPOINT_SEED = 0


@dataclass
class CheckContext:
    options: SelfcheckOptions
    device: torch.device
    family: ModelFamily
    workdir: Path
    _cache: dict = field(default_factory=dict)

    def _once(self, key, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def checkpoint(self) -> Path:
        """The tiny random checkpoint of the family, written with transformers (deterministic seed)."""
        from hf_qwen3_deepstack.tiny_checkpoint.build import write_tiny_checkpoint

        return self._once("checkpoint", lambda: write_tiny_checkpoint(
            self.workdir / f"tiny-{self.family.name}", CHECKPOINT_SEED, family=self.family.name))

    def sample_images(self) -> list[Path]:
        from hf_qwen3_deepstack.tiny_checkpoint.build import write_sample_images

        return self._once("images", lambda: write_sample_images(self.workdir / "images"))

    def messages(self) -> dict[str, list[dict]]:
        return prompt_messages(self.sample_images())

    def processor(self):
        from hf_qwen3_deepstack.tiny_checkpoint.video import load_processor

        return self._once("processor", lambda: load_processor(self.checkpoint()))

    def prompt_inputs(self, name: str) -> dict[str, torch.Tensor]:
        """The processor's output for prompt `name` (CPU tensors), chat template with generation prompt."""
        from hf_qwen3_deepstack.runtime.models import build_prompt

        return self._once(("inputs", name), lambda: dict(build_prompt(self.processor(), self.messages()[name])))

    def monolithic(self, device: torch.device, dtype: torch.dtype):
        cls = self.family.monolithic_class()
        return self._once(("monolithic", str(device), dtype), lambda: cls.from_pretrained(
            self.checkpoint(), dtype=dtype).to(device).eval())

    def split(self, device: torch.device, dtype: torch.dtype):
        """(encoder, language model), each loaded with only its own weights from the full checkpoint."""
        def load():
            enc = self.family.encoder_class().from_pretrained(self.checkpoint(), dtype=dtype).to(device).eval()
            lm = self.family.lm_class().from_pretrained(self.checkpoint(), dtype=dtype).to(device).eval()
            if self.options.fault == "split-weight":
                with torch.no_grad():
                    lm.get_output_embeddings().weight[0, 0] += 1.0
            return enc, lm

        return self._once(("split", str(device), dtype), load)

    def monolithic_tokens(self, name: str, device: torch.device, dtype: torch.dtype) -> list[int]:
        """New greedy tokens of the monolithic model for prompt `name` (the oracle of parity and runtime)."""
        def generate():
            model = self.monolithic(device, dtype)
            inputs = {k: v.to(device) for k, v in self.prompt_inputs(name).items()}
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
            return out[0, inputs["input_ids"].shape[1]:].tolist()

        return self._once(("monolithic_tokens", name, str(device), dtype), generate)
