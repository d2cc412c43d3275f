"""Processor files of the tiny Qwen3-VL-MoE checkpoint, built locally and offline.

`write_tiny_processor(path)` writes everything `AutoProcessor.from_pretrained(path)` needs to
return transformers' own `Qwen3VLProcessor`:

- tokenizer.json / tokenizer_config.json: a byte-level BPE (the Qwen2 pre-tokenizer pipeline)
  trained with the `tokenizers` library on a fixed built-in English corpus. 256 byte tokens +
  224 merges fill ids 0..479 exactly, so the Qwen3-VL special tokens land at the contract ids of
  `special_tokens.py` (checked after building).
- chat_template.jinja: our own Jinja equivalent of the Qwen3-VL Instruct chat template.
- preprocessor_config.json: `Qwen2VLImageProcessorPil` (no torchvision), Qwen3-VL mean/std 0.5,
  patch 16, merge 2, small pixel budget (64x64 -> 4 tokens, any image <= 64 tokens).
- video_preprocessor_config.json: `Qwen3VLVideoProcessor` settings. transformers' video
  processors need torchvision; without it `hf_qwen3_deepstack.tiny_checkpoint.video` supplies a
  drop-in torch-only subclass (see there).
- processor_config.json, generation_config.json (greedy, eos <|im_end|>, pad <|endoftext|>).
"""

from __future__ import annotations

import json
from pathlib import Path

from .special_tokens import EOS_TOKEN_ID, PAD_TOKEN_ID, SPECIAL_TOKENS, TINY_VOCAB_SIZE

# Qwen2 / Qwen3 pre-tokenization regex (the same split rule transformers' Qwen2Tokenizer uses).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
NUM_BYTE_TOKENS = 256
FIRST_SPECIAL_ID = min(SPECIAL_TOKENS.values())  # 480: base + merges fill ids below this

# Fixed training corpus: plain English about images, video and everyday things, written for this
# project. Changing it changes the tokenizer (and thus every tiny checkpoint): bump the cache
# version in build.py if you do.
CORPUS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A picture is worth a thousand words, and a short video is worth many pictures.",
    "Describe the image in one sentence. What colour is the car in the photo?",
    "The cat is sitting on the red chair next to the window in the morning light.",
    "There are three people walking along the beach while the sun goes down.",
    "What is happening in this video? The man opens the door and walks into the room.",
    "The model reads the image, looks at every patch, and then writes an answer.",
    "Please answer the question about the picture with a single word.",
    "A small blue boat is floating on the calm water of the lake.",
    "The children are playing football in the green park after school.",
    "This is a photo of a busy street with cars, buses and many people.",
    "The system message tells the assistant how it should behave and answer.",
    "The user asks a question and the assistant gives a helpful and honest answer.",
    "Count the number of apples on the table. There are four red apples and two green ones.",
    "The weather today is sunny and warm, with a light wind from the west.",
    "She is reading a book in the library while her friend writes a letter.",
    "The train leaves the station at seven in the evening and arrives before midnight.",
    "In the first frame the ball is on the left; in the last frame it is on the right.",
    "The vision encoder turns every image into tokens that the language model can read.",
    "Thank you for the clear explanation. Can you show me another example, please?",
    "The mountain is covered with snow and the sky above it is bright blue.",
    "He is cooking dinner in the kitchen: rice, fish, and fresh vegetables.",
    "What time is it now? It is half past four in the afternoon.",
    "The dog runs across the garden, picks up the stick and brings it back.",
    "Look at the chart: the numbers go up from one to ten over the year.",
    "Where is the bird? The bird is sitting on the top of the old tree.",
    "The teacher writes the answer on the board and the students copy it.",
    "Hello! How are you today? I am fine, thank you, and how are you?",
    "The red square is above the blue circle, and the green line is below them.",
    "Every frame of the video shows the same room, but the light changes slowly.",
    "The assistant should describe what it sees and should not make things up.",
    "This image shows a plate of food with bread, cheese, and a cup of coffee.",
    "The city at night is full of lights, and the streets are wet after the rain.",
    "Two dogs and one cat are sleeping together on the soft brown sofa.",
    "Read the text in the picture and tell me what it says.",
    "The woman is holding an umbrella because it is raining outside.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 16 32 64 128 256 512 1024 2048 4096.",
    "The answer is yes. The answer is no. The answer is maybe, it depends on the light.",
    "There is a large white building with many windows on the other side of the road.",
    "At the start of the video the door is closed, and at the end it is open.",
]


def corpus_lines() -> list[str]:
    """The tokenizer's training corpus, repeated so frequent words earn their merges."""
    return [line for line in CORPUS for _ in range(3)]


def build_tiny_tokenizer():
    """Train the tiny byte-level BPE and add the special tokens; returns a `tokenizers.Tokenizer`.

    Deterministic: the same corpus and settings give the same merges and ids (checked in tests
    across separate builds). Raises if the vocabulary does not fill ids < 480 exactly or a
    special token misses its contract id.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=FIRST_SPECIAL_ID,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer)
    if tokenizer.get_vocab_size() != FIRST_SPECIAL_ID:
        raise RuntimeError(
            f"tiny BPE has {tokenizer.get_vocab_size()} base+merge tokens, expected {FIRST_SPECIAL_ID}"
        )
    specials = sorted(SPECIAL_TOKENS.items(), key=lambda kv: kv[1])
    tokenizer.add_special_tokens(
        [AddedToken(tok, special=True, normalized=False, lstrip=False, rstrip=False) for tok, _ in specials]
    )
    for tok, want in specials:
        got = tokenizer.token_to_id(tok)
        if got != want:
            raise RuntimeError(f"special token {tok} got id {got}, the contract says {want}")
    if tokenizer.get_vocab_size() > TINY_VOCAB_SIZE:
        raise RuntimeError(f"tiny vocabulary {tokenizer.get_vocab_size()} exceeds {TINY_VOCAB_SIZE}")
    return tokenizer


# Our own Jinja rendering of the Qwen3-VL Instruct conversation format.
# - optional leading system turn; every turn is "<|im_start|>{role}\n{content}<|im_end|>\n"
# - content is a string or a list of items: text items are copied, images become
#   "<|vision_start|><|image_pad|><|vision_end|>", videos "<|vision_start|><|video_pad|><|vision_end|>"
#   (the processor expands each pad to the right number of visual tokens)
# - `add_vision_id=true` prefixes items with "Picture N: " / "Video N: "
# - `add_generation_prompt=true` opens the assistant turn.
CHAT_TEMPLATE = """\
{%- set ns = namespace(images=0, videos=0) -%}
{%- for message in messages -%}
  {{- '<|im_start|>' + message.role + '\\n' -}}
  {%- if message.content is string -%}
    {{- message.content -}}
  {%- else -%}
    {%- for item in message.content -%}
      {%- if item.type == 'image' or 'image' in item or 'image_url' in item -%}
        {%- set ns.images = ns.images + 1 -%}
        {%- if add_vision_id -%}{{- 'Picture ' + ns.images | string + ': ' -}}{%- endif -%}
        {{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
      {%- elif item.type == 'video' or 'video' in item -%}
        {%- set ns.videos = ns.videos + 1 -%}
        {%- if add_vision_id -%}{{- 'Video ' + ns.videos | string + ': ' -}}{%- endif -%}
        {{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
      {%- elif 'text' in item -%}
        {{- item.text -}}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
  {{- '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
"""

_SHARED_PROCESSING = {  # identical for images and video frames
    "processor_class": "Qwen3VLProcessor",
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_convert_rgb": True,
    "resample": 3,
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
}

IMAGE_PROCESSOR_CONFIG = {
    "image_processor_type": "Qwen2VLImageProcessorPil",
    **_SHARED_PROCESSING,
    # pixels budget: 32*32 = one visual token. 64x64 -> 4 tokens; any image -> at most 64 tokens.
    "size": {"shortest_edge": 4 * 32 * 32, "longest_edge": 64 * 32 * 32},
}

VIDEO_PROCESSOR_CONFIG = {
    "video_processor_type": "Qwen3VLVideoProcessor",
    **_SHARED_PROCESSING,
    # frames x pixels budget over the whole clip: 4 frames of 64x64 = 2 groups x 4 tokens.
    "size": {"shortest_edge": 4 * 32 * 32, "longest_edge": 256 * 32 * 32},
    "cap_pixels_per_frame": False,
    "do_sample_frames": False,
    "fps": 2,
    "min_frames": 2,
    "max_frames": 16,
}

GENERATION_CONFIG = {
    "do_sample": False,
    "eos_token_id": EOS_TOKEN_ID,
    "pad_token_id": PAD_TOKEN_ID,
    "bos_token_id": PAD_TOKEN_ID,
}


def tokenizer_config() -> dict:
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "processor_class": "Qwen3VLProcessor",
        "model_max_length": 4096,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "add_prefix_space": False,
        "bos_token": None,
        "unk_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "extra_special_tokens": {
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
    }


def _dump(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_generation_config(path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _dump(path / "generation_config.json", GENERATION_CONFIG)
    return path / "generation_config.json"


def write_tiny_processor(path: str | Path) -> Path:
    """Write the tokenizer, chat template, image/video processor configs, processor_config.json
    and generation_config.json of the tiny checkpoint into `path` (created if needed)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    (path / "tokenizer.json").write_text(tokenizer.to_str(pretty=True) + "\n", encoding="utf-8")
    _dump(path / "tokenizer_config.json", tokenizer_config())
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    _dump(path / "preprocessor_config.json", IMAGE_PROCESSOR_CONFIG)
    _dump(path / "video_preprocessor_config.json", VIDEO_PROCESSOR_CONFIG)
    _dump(path / "processor_config.json", {"processor_class": "Qwen3VLProcessor"})
    write_generation_config(path)
    return path
