"""Token ids shared by the tiny tokenizer and the tiny model configs."""

TINY_VOCAB_SIZE = 512  # byte-level BPE base + merges fill ids < 480, special tokens sit at 480..
SPECIAL_TOKENS: dict[str, int] = {
    "<|endoftext|>": 480,
    "<|im_start|>": 481,
    "<|im_end|>": 482,
    "<|vision_start|>": 483,
    "<|vision_end|>": 484,
    "<|image_pad|>": 485,
    "<|video_pad|>": 486,
}
PAD_TOKEN_ID = SPECIAL_TOKENS["<|endoftext|>"]
EOS_TOKEN_ID = SPECIAL_TOKENS["<|im_end|>"]
IMAGE_TOKEN_ID = SPECIAL_TOKENS["<|image_pad|>"]
VIDEO_TOKEN_ID = SPECIAL_TOKENS["<|video_pad|>"]
VISION_START_TOKEN_ID = SPECIAL_TOKENS["<|vision_start|>"]
VISION_END_TOKEN_ID = SPECIAL_TOKENS["<|vision_end|>"]
