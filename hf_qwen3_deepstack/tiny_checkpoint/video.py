"""Qwen3-VL video processing without torchvision.

transformers 5.23's `Qwen3VLVideoProcessor` (like every video processor) needs torchvision, and
without it `AutoProcessor.from_pretrained` of *any* Qwen3-VL(-MoE) directory fails. This module
provides `Qwen3VLVideoProcessorPil`, a torch/numpy/PIL-only re-implementation of the same
pipeline (smart resize by total pixel budget, bicubic antialiased resize, rescale + normalise,
temporal padding by repeating the last frame, the same patch order), and `install()`, which
registers it with `AutoVideoProcessor` for the `qwen3_vl` and `qwen3_vl_moe` configs **only when
torchvision is missing**. After `install()` (or via `load_processor(path)`), transformers' own
`AutoProcessor.from_pretrained(path)` returns a `Qwen3VLProcessor` whose `video_processor` is ours,
and the processor itself expands video placeholders (per temporal group "<t seconds>" +
<|vision_start|><|video_pad|>*n<|vision_end|>) exactly as it does with the upstream class.

Inputs accepted: a list of frames (image paths, PIL images or HxWxC arrays), a (T,H,W,C) /
(T,C,H,W) array or tensor, or a batch of those. Decoding video *files* needs torchcodec as
upstream. Frame lists carry no fps: as upstream, Qwen3VLProcessor then assumes fps 24 for the
timestamps unless `video_metadata` is passed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ChannelDimension, PILImageResampling, SizeDict, infer_channel_dimension_format
from transformers.processing_utils import VideosKwargs
from transformers.utils import is_torchvision_available
from transformers.video_processing_utils import VideoProcessorMixin
from transformers.video_utils import VideoMetadata, make_batched_metadata, make_batched_videos


class Qwen3VLVideoProcessorKwargs(VideosKwargs, total=False):
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    min_frames: int
    max_frames: int
    cap_pixels_per_frame: bool
    max_video_tokens: int


def smart_resize(num_frames, height, width, temporal_factor=2, factor=32, min_pixels=128 * 32 * 32,
                 max_pixels=768 * 32 * 32):
    """Qwen3-VL's video smart resize: (h, w) multiples of `factor` with T*h*w inside the budget."""
    if num_frames < temporal_factor:
        raise ValueError(f"t:{num_frames} must be larger than temporal_factor:{temporal_factor}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _frame_to_array(frame) -> np.ndarray:
    """One frame (path, URL, data URL, PIL image, array) -> HxWx3 uint8 RGB array."""
    from PIL import Image
    from transformers.image_utils import load_image

    if isinstance(frame, str) or hasattr(frame, "__fspath__"):
        return np.asarray(load_image(str(frame)).convert("RGB"))
    if isinstance(frame, Image.Image):
        return np.asarray(frame.convert("RGB"))
    array = np.asarray(frame)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array


class Qwen3VLVideoProcessorPil(VideoProcessorMixin):
    """Torch-only equivalent of transformers' `Qwen3VLVideoProcessor` (no torchvision)."""

    resample = PILImageResampling.BICUBIC
    size = {"shortest_edge": 128 * 32 * 32, "longest_edge": 32 * 32 * 768}
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    patch_size = 16
    temporal_patch_size = 2
    merge_size = 2
    min_frames = 4
    max_frames = 768
    do_sample_frames = True
    cap_pixels_per_frame = False
    max_video_tokens = 768
    return_metadata = False
    valid_kwargs = Qwen3VLVideoProcessorKwargs
    model_input_names = ["pixel_values_videos", "video_grid_thw"]
    num_frames = None
    fps = 2

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    # -- frame sampling (same rule as upstream) -------------------------------------------------
    def sample_frames(self, metadata: VideoMetadata, num_frames=None, fps=None, **kwargs):
        if fps is not None and num_frames is not None:
            raise ValueError("`num_frames` and `fps` are mutually exclusive arguments, please use only one!")
        total = metadata.total_num_frames
        fps = fps if fps is not None else self.fps
        if num_frames is None and fps is not None:
            if metadata.fps is None:
                metadata.fps = 24
            num_frames = int(total / metadata.fps * fps)
            num_frames = min(max(num_frames, self.min_frames), self.max_frames, total)
        if num_frames is None:
            num_frames = min(max(total, self.min_frames), self.max_frames)
        return np.linspace(0, total - 1, num_frames).round().astype(int)

    def _decode_and_sample_videos(self, videos, video_metadata=None, do_sample_frames=None, sample_indices_fn=None):
        # Same batching rule as the processor uses to count videos: after `make_batched_videos`
        # each entry is a list of frames, a video file path/URL, or a (T,...) array.
        videos = make_batched_videos(videos)
        if any(isinstance(v, str) for v in videos):
            if not all(isinstance(v, str) for v in videos):
                raise ValueError("mixing video files and frame lists in one call is not supported")
            decoded, metadata = self.fetch_videos(videos, sample_indices_fn=sample_indices_fn)
            return list(decoded), list(metadata)
        frame_lists = [isinstance(v, (list, tuple)) for v in videos]
        videos = [np.stack([_frame_to_array(f) for f in v], axis=0) if is_list else v
                  for v, is_list in zip(videos, frame_lists)]
        metadata = make_batched_metadata(videos, video_metadata)
        if do_sample_frames:
            if any(frame_lists):
                raise ValueError("Sampling frames from a list of images is not supported! Set `do_sample_frames=False`.")
            sampled = []
            for video, meta in zip(videos, metadata):
                indices = sample_indices_fn(metadata=meta)
                meta.frames_indices = indices
                sampled.append(video[indices])
            videos = sampled
        return videos, metadata

    def _prepare_input_videos(self, videos, do_convert_rgb=None, input_data_format=None, device=None):
        out = []
        for video in videos:
            if isinstance(video, np.ndarray):
                video = torch.from_numpy(np.ascontiguousarray(video))
            fmt = input_data_format if input_data_format is not None else infer_channel_dimension_format(video)
            if fmt == ChannelDimension.LAST:
                video = video.permute(0, 3, 1, 2).contiguous()
            if do_convert_rgb and video.shape[1] == 1:
                video = video.expand(-1, 3, -1, -1)
            if device is not None:
                video = video.to(device)
            out.append(video)
        return out

    # -- the Qwen3-VL pipeline -------------------------------------------------------------------
    @staticmethod
    def _resize(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Bicubic antialiased resize of (T,C,H,W), rounding back to the uint8 range like
        torchvision does for uint8 input."""
        if tuple(video.shape[-2:]) == (height, width):
            return video
        is_uint8 = video.dtype == torch.uint8
        out = torch.nn.functional.interpolate(video.float(), size=(height, width), mode="bicubic",
                                              align_corners=False, antialias=True)
        if is_uint8:
            out = out.round_().clamp_(0, 255).to(torch.uint8)
        return out

    def _preprocess(self, videos, do_resize=True, size=None, do_rescale=True, rescale_factor=1 / 255,
                    do_normalize=True, image_mean=None, image_std=None, patch_size=None, temporal_patch_size=None,
                    merge_size=None, cap_pixels_per_frame=None, return_tensors=None, **kwargs):
        patch_size = patch_size or self.patch_size
        temporal_patch_size = temporal_patch_size or self.temporal_patch_size
        merge_size = merge_size or self.merge_size
        if isinstance(size, dict):
            size = SizeDict(**size)
        factor = patch_size * merge_size
        all_patches, grids = [], []
        for video in videos:
            num_frames, channel = video.shape[0], video.shape[1]
            if do_resize:
                max_pixels = size.longest_edge
                if cap_pixels_per_frame:
                    frame_cap = self.max_video_tokens * factor * factor
                    per_frame = max(min(frame_cap, size.longest_edge // num_frames), int(size.shortest_edge * 1.05))
                    max_pixels = per_frame * num_frames
                h, w = smart_resize(num_frames, video.shape[-2], video.shape[-1], temporal_factor=temporal_patch_size,
                                    factor=factor, min_pixels=size.shortest_edge, max_pixels=max_pixels)
                video = self._resize(video, h, w)
            video = video.float()
            if do_rescale:
                video = video * rescale_factor
            if do_normalize:
                mean = torch.tensor(image_mean, dtype=video.dtype).view(1, -1, 1, 1)
                std = torch.tensor(image_std, dtype=video.dtype).view(1, -1, 1, 1)
                video = (video - mean) / std
            if pad := -num_frames % temporal_patch_size:
                video = torch.cat((video, video[-1:].expand(pad, -1, -1, -1)), dim=0)
                num_frames += pad
            height, width = video.shape[-2:]
            grid_t, grid_h, grid_w = num_frames // temporal_patch_size, height // patch_size, width // patch_size
            patches = video.reshape(grid_t, temporal_patch_size, channel, grid_h // merge_size, merge_size, patch_size,
                                    grid_w // merge_size, merge_size, patch_size)
            patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
            all_patches.append(patches.reshape(grid_t * grid_h * grid_w,
                                               channel * temporal_patch_size * patch_size * patch_size))
            grids.append([grid_t, grid_h, grid_w])
        return BatchFeature(
            data={"pixel_values_videos": torch.cat(all_patches, dim=0), "video_grid_thw": torch.tensor(grids)},
            tensor_type=return_tensors,
        )

    def get_num_of_video_patches(self, num_frames: int, height: int, width: int, videos_kwargs=None):
        videos_kwargs = videos_kwargs or {}
        size = videos_kwargs.get("size", None) or self.size
        patch_size = videos_kwargs.get("patch_size", None) or self.patch_size
        merge_size = videos_kwargs.get("merge_size", None) or self.merge_size
        temporal_patch_size = videos_kwargs.get("temporal_patch_size", None) or self.temporal_patch_size
        factor = patch_size * merge_size
        max_pixels = size["longest_edge"]
        if videos_kwargs.get("cap_pixels_per_frame", None) or self.cap_pixels_per_frame:
            per_frame = max(min(self.max_video_tokens * factor * factor, max_pixels // num_frames),
                            int(size["shortest_edge"] * 1.05))
            max_pixels = per_frame * num_frames
        h, w = smart_resize(num_frames, height, width, temporal_factor=temporal_patch_size, factor=factor,
                            min_pixels=size["shortest_edge"], max_pixels=max_pixels)
        grid_t = (num_frames + -num_frames % temporal_patch_size) // temporal_patch_size
        return grid_t * (h // patch_size) * (w // patch_size)


# ProcessorMixin type-checks a video processor against `transformers.VideoProcessorMixin`, which the
# top-level module does not export without torchvision. Done on import, so that this file also
# works as the processor remote code of a split encoder repo. (Imported here, after
# `transformers.processing_utils`, whose import replaces the `transformers` module object.)
import transformers  # noqa: E402

if not hasattr(transformers, "VideoProcessorMixin"):
    setattr(transformers, "VideoProcessorMixin", VideoProcessorMixin)

# Registered under the upstream class name so configs saved with
# "video_processor_type": "Qwen3VLVideoProcessor" resolve to it when torchvision is missing.
Qwen3VLVideoProcessorFallback = type("Qwen3VLVideoProcessor", (Qwen3VLVideoProcessorPil,),
                                     {"__module__": __name__, "__qualname__": "Qwen3VLVideoProcessor"})

# What a split encoder repo's `auto_map` names (this file ships there as processor remote code):
# transformers' own class when torchvision is installed, this torch + PIL one otherwise.
if is_torchvision_available():
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor as Qwen3VLVideoProcessorForRepo
else:
    Qwen3VLVideoProcessorForRepo = Qwen3VLVideoProcessorPil

_INSTALLED = False


def install(force: bool = False) -> bool:
    """Make `AutoVideoProcessor` / `AutoProcessor` use `Qwen3VLVideoProcessorPil` for Qwen3-VL
    configs when torchvision is unavailable (or always with `force=True`). Idempotent; returns
    True when the fallback is active."""
    global _INSTALLED
    if _INSTALLED:
        return True
    if is_torchvision_available() and not force:
        return False
    from transformers import AutoVideoProcessor, Qwen3VLConfig, Qwen3VLMoeConfig
    from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING

    for config_class in (Qwen3VLConfig, Qwen3VLMoeConfig):
        VIDEO_PROCESSOR_MAPPING.register(
            config_class, {"torchvision": Qwen3VLVideoProcessorFallback, "pil": Qwen3VLVideoProcessorFallback},
            exist_ok=True,
        )
    del AutoVideoProcessor
    _INSTALLED = True
    return True


def load_processor(path, **kwargs):
    """`AutoProcessor.from_pretrained(path, **kwargs)`, working without torchvision (see `install`)."""
    from transformers import AutoProcessor

    install()
    return AutoProcessor.from_pretrained(path, **kwargs)
