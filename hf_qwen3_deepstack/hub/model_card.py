"""README.md (model card) of each output repo, rendered with huggingface_hub's ModelCard.

Templates: `model_cards/{encoder,lm}.md` at the top of the source tree, the only copy; the wheel
ships them as `hf_qwen3_deepstack/model_cards/` (see pyproject.toml).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from huggingface_hub import ModelCard, ModelCardData

from ..cli_values import format_size
from ..families import FAMILIES, ModelFamily

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
# installed wheel: inside the package; source checkout (editable install): next to the package
TEMPLATE_DIR = next((d for d in (_PACKAGE_DIR / "model_cards", _PACKAGE_DIR.parent / "model_cards") if d.is_dir()),
                    _PACKAGE_DIR / "model_cards")
Half = Literal["encoder", "lm"]

PIPELINE_TAGS = {"encoder": "image-feature-extraction", "lm": "image-text-to-text"}
COMMON_TAGS = ["deepstack", "disaggregated-inference", "custom_code"]
HALF_TAGS = {"encoder": ["vision-encoder"], "lm": []}

EXPERT_LAYOUT_NOTE = """\
Weights are {weight_files}, keys identical to the source
checkpoint's. Fused MoE expert tensors are stored in the layout of the Qwen3-VL-MoE
checkpoints published on the Hub: `mlp.experts.gate_up_proj` as **(E, H, 2I)** and
`mlp.experts.down_proj` as **(E, I, H)** (E experts, H hidden size, I `moe_intermediate_size`).
transformers 5 holds these tensors transposed in memory, (E, 2I, H) / (E, H, I); the remote code
loads either layout, detecting it per tensor from the shapes."""
DENSE_LAYOUT_NOTE = """\
Weights are {weight_files}, keys identical to the source checkpoint's. The language
model's MLP is dense (no experts), so every tensor keeps the source's shape."""

TORCHRUN_SNIPPET = '''\
One encoder rank and one language rank with plain `torch.distributed`: NCCL and one GPU per rank
when CUDA is available, gloo on CPU otherwise. Save as `two_groups.py` and run
`torchrun --nproc-per-node 2 two_groups.py`. For many ranks per group, chunked resumable
transfers and a request server, use the
[`hf-qwen3-deepstack`](https://pypi.org/project/hf-qwen3-deepstack/) runtime
(`hf-qwen3-deepstack run --encoder-model ... --lm-model ...`), which loads these same repos.

```python
import os
import torch
import torch.distributed as dist
from transformers import AutoModel, AutoModelForCausalLM, AutoProcessor, AutoTokenizer

ENCODER, LM = "{encoder_repo_id}", "{lm_repo_id}"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
cuda = torch.cuda.is_available()
device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)

if dist.get_rank() == 0:  # encoder group: owns the processor, computes M-RoPE positions
    processor = AutoProcessor.from_pretrained(ENCODER, trust_remote_code=True)
    encoder = AutoModel.from_pretrained(ENCODER, trust_remote_code=True, dtype="auto").to(device).eval()
    messages = [{{"role": "user", "content": [{{"type": "image", "image": "photo.jpg"}},
                                              {{"type": "text", "text": "Describe the picture."}}]}}]
    inputs = processor.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                           return_dict=True, return_tensors="pt").to(device)
    with torch.no_grad():
        out = encoder.encode(**inputs)
    (b, s), (n, h), k = out.input_ids.shape, out.visual_embeds.shape, out.deepstack_visual_embeds.shape[0]
    header = torch.tensor([b, s, n, h, k, DTYPES.index(out.visual_embeds.dtype)], device=device)
    dist.send(header, dst=1)  # fixed-size header, then the tensors it describes
    for t in (out.input_ids, out.attention_mask, out.position_ids, out.rope_deltas,
              out.visual_embeds, out.deepstack_visual_embeds):  # only the visual rows travel
        dist.send(t.contiguous() if t.is_floating_point() else t.to(torch.int64).contiguous(), dst=1)
else:  # language group
    tokenizer = AutoTokenizer.from_pretrained(LM)
    lm = AutoModelForCausalLM.from_pretrained(LM, trust_remote_code=True, dtype="auto").to(device).eval()
    header = torch.empty(6, dtype=torch.int64, device=device)
    dist.recv(header, src=0)
    b, s, n, h, k, d = header.tolist()
    shapes = [((b, s), torch.int64), ((b, s), torch.int64), ((3, b, s), torch.int64), ((b, 1), torch.int64),
              ((n, h), DTYPES[d]), ((k, n, h), DTYPES[d])]
    received = [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in shapes]
    for t in received:
        dist.recv(t, src=0)
    input_ids, attention_mask, position_ids, rope_deltas, visual_embeds, deepstack = received
    generated = lm.generate(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            rope_deltas=rope_deltas, visual_embeds=visual_embeds.to(lm.dtype),
                            deepstack_visual_embeds=deepstack.to(lm.dtype), max_new_tokens=64, do_sample=False)
    print(tokenizer.batch_decode(generated[:, s:], skip_special_tokens=True))
dist.destroy_process_group()
```'''


@dataclass
class CardInfo:
    """Everything a card states; filled by the split from the source and the written files."""

    half: Half
    repo_id: str  # this repo (the push target, or the output folder's name)
    other_repo_id: str  # the matching other half
    base_model: str | None  # Hub id of the source (or --base-model); None for a local source without one
    source_revision: str  # exact provenance, e.g. "Qwen/Qwen3-VL-30B-A3B-Instruct@<commit>"
    dtype: str
    num_tensors: int
    total_size: int
    model_type: str
    family: ModelFamily = FAMILIES["moe"]
    num_shards: int = 1
    license: dict[str, str] = field(default_factory=dict)  # license / license_name / license_link
    details: dict = field(default_factory=dict)  # architecture numbers shown in the body
    tool_version: str = ""


def _url(repo_id: str) -> str:
    return f"https://huggingface.co/{repo_id}" if "/" in repo_id and not repo_id.startswith(("/", ".")) else repo_id


def _weight_files(num_shards: int) -> str:
    if num_shards == 1:
        return "one safetensors file (`model.safetensors`)"
    return f"{num_shards} safetensors shards with an index (`model.safetensors.index.json`)"


def template_path(half: Half) -> Path:
    return TEMPLATE_DIR / ("encoder.md" if half == "encoder" else "lm.md")


def card_data(info: CardInfo) -> ModelCardData:
    return ModelCardData(
        library_name="transformers",
        base_model=info.base_model,
        pipeline_tag=PIPELINE_TAGS[info.half],
        tags=[info.family.vl_model_type, *COMMON_TAGS, *HALF_TAGS[info.half],
              *(["moe"] if info.half == "lm" and info.family.has_experts else []), info.model_type],
        **info.license,
    )


def render_card(info: CardInfo) -> ModelCard:
    from .. import __version__

    encoder_id, lm_id = (info.repo_id, info.other_repo_id) if info.half == "encoder" else (info.other_repo_id, info.repo_id)
    return ModelCard.from_template(
        card_data(info),
        template_path=str(template_path(info.half)),
        repo_id=info.repo_id,
        repo_name=info.repo_id.rsplit("/", 1)[-1],
        other_repo_id=info.other_repo_id,
        other_repo_url=_url(info.other_repo_id),
        base_model=info.base_model,
        base_model_link=f"[{info.base_model}]({_url(info.base_model)})" if info.base_model else "a local checkpoint",
        source_revision=info.source_revision,
        dtype=info.dtype,
        num_tensors=info.num_tensors,
        total_size_human=format_size(info.total_size),
        model_type=info.model_type,
        tool_version=info.tool_version or __version__,
        torchrun_snippet=TORCHRUN_SNIPPET.format(encoder_repo_id=encoder_id, lm_repo_id=lm_id),
        expert_layout_note=(EXPERT_LAYOUT_NOTE if info.family.has_experts else DENSE_LAYOUT_NOTE).format(
            weight_files=_weight_files(info.num_shards)),
        family_name=info.family.display_name,
        monolithic_class=info.family.monolithic_path.rsplit(".", 1)[-1],
        **info.details,
    )
