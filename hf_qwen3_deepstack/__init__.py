"""hf-qwen3-deepstack: Qwen3-VL-MoE split into a vision encoder and a DeepStack MoE language model."""

from .encoder_output import EncoderOutput

__all__ = ["EncoderOutput"]
__version__ = "0.1.0"
