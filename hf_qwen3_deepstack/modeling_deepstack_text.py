"""What the language halves of Qwen3-VL and Qwen3-VL-MoE share, as mixins over transformers' classes.

transformers' `Qwen3VLTextModel` / `Qwen3VLMoeTextModel` already add deepstack level i after decoder
layer i at the visual positions. `DeepStackTextModelMixin` adds: placing the visual rows that came
over the wire at the placeholder tokens, the seeds' full-sequence deepstack layout, and 3-D positions
that continue with `rope_deltas`. `DeepStackCausalLMMixin` adds the causal-LM head with `generate`.
Hub remote code: imports only torch and transformers.

Shape legend: B batch, S sequence, N visual tokens, K deepstack levels, H hidden size, V vocab.
"""

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

# Used at prefill only; generate() drops them once the KV cache holds the prompt.
VISUAL_INPUTS = ("visual_embeds", "deepstack_visual_embeds", "visual_pos_masks", "input_deepstack_embeds")


class DeepStackTextModelMixin:
    """Put before transformers' VL text model: takes the encoder's visual rows instead of pre-merged
    embeddings."""

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (B, S)
        attention_mask: torch.Tensor | None = None,  # (B, S)
        position_ids: torch.LongTensor | None = None,  # (3, B, S), (4, B, S), (B, S) or None
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,  # (B, S, H)
        use_cache: bool | None = None,
        visual_embeds: torch.Tensor | None = None,  # (N, H)
        deepstack_visual_embeds: torch.Tensor | list[torch.Tensor] | None = None,  # (K, N, H)
        visual_pos_masks: torch.Tensor | None = None,  # (B, S) bool
        input_deepstack_embeds: torch.Tensor | None = None,  # (S, K*H) or (B, S, K*H)
        rope_deltas: torch.Tensor | None = None,  # (B, 1)
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        has_visual = visual_embeds is not None or input_deepstack_embeds is not None
        if has_visual:
            if visual_pos_masks is None:
                visual_pos_masks = self.visual_positions(input_ids)
            if input_deepstack_embeds is not None:
                deepstack_visual_embeds = self.deepstack_from_full_sequence(input_deepstack_embeds, visual_pos_masks)
            self.check_visual_inputs(visual_pos_masks, visual_embeds, deepstack_visual_embeds)
            if visual_embeds is not None:
                rows = visual_embeds.to(inputs_embeds.device, inputs_embeds.dtype)
                inputs_embeds = inputs_embeds.masked_scatter(visual_pos_masks[..., None].to(inputs_embeds.device), rows)
        else:
            visual_pos_masks = deepstack_visual_embeds = None
        position_ids = self.text_and_mrope_positions(inputs_embeds, attention_mask, position_ids, past_key_values,
                                                     rope_deltas)
        return super().forward(
            input_ids=None,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            visual_pos_masks=visual_pos_masks,
            deepstack_visual_embeds=deepstack_visual_embeds,
            **kwargs,
        )

    def visual_positions(self, input_ids: torch.Tensor | None) -> torch.Tensor:
        """(B, S) bool mask of image/video placeholder tokens."""
        ids = [i for i in (self.config.image_token_id, self.config.video_token_id) if i is not None]
        if input_ids is None or not ids:
            raise ValueError(
                "Visual inputs need input_ids with image/video placeholder tokens (or visual_pos_masks); "
                f"config has image_token_id={self.config.image_token_id}, video_token_id={self.config.video_token_id}."
            )
        return torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))

    def deepstack_from_full_sequence(self, full: torch.Tensor, visual_pos_masks: torch.Tensor) -> torch.Tensor:
        """Seeds' layout (S, K*H) / (B, S, K*H), zeros at text rows -> (K, N, H) visual rows."""
        hidden = self.config.hidden_size
        full = full.unsqueeze(0) if full.ndim == 2 else full
        if full.ndim != 3 or tuple(full.shape[:2]) != tuple(visual_pos_masks.shape) or full.shape[-1] % hidden:
            raise ValueError(
                f"input_deepstack_embeds has shape {tuple(full.shape)}; expected (S, K*H) or (B, S, K*H) with "
                f"(B, S)={tuple(visual_pos_masks.shape)} and H={hidden}."
            )
        rows = full[visual_pos_masks.to(full.device)]  # (N, K*H)
        return rows.view(rows.shape[0], -1, hidden).transpose(0, 1)

    def check_visual_inputs(self, visual_pos_masks, visual_embeds, deepstack_visual_embeds) -> None:
        n_placeholders = int(visual_pos_masks.sum())
        hidden, levels = self.config.hidden_size, self.config.num_deepstack_levels
        if visual_embeds is not None:
            if visual_embeds.ndim != 2 or visual_embeds.shape[-1] != hidden:
                raise ValueError(f"visual_embeds has shape {tuple(visual_embeds.shape)}, expected (N, H={hidden}).")
            if visual_embeds.shape[0] != n_placeholders:
                raise ValueError(
                    f"{n_placeholders} image/video placeholder tokens in input_ids but {visual_embeds.shape[0]} "
                    "visual_embeds rows; they must be equal."
                )
        if deepstack_visual_embeds is None:
            return
        n_levels = len(deepstack_visual_embeds)
        if n_levels != levels:
            raise ValueError(f"deepstack_visual_embeds has K={n_levels} levels, the model expects K={levels}.")
        for level in deepstack_visual_embeds:
            if tuple(level.shape) != (n_placeholders, hidden):
                raise ValueError(
                    f"deepstack_visual_embeds level has shape {tuple(level.shape)}, expected "
                    f"(N={n_placeholders}, H={hidden})."
                )

    @staticmethod
    def text_and_mrope_positions(inputs_embeds, attention_mask, position_ids, past_key_values, rope_deltas):
        """Return (4, B, S): the text positions transformers uses for the mask, then M-RoPE (t, h, w)."""
        if position_ids is not None and (position_ids.ndim == 2 or position_ids.shape[0] == 4):
            return position_ids  # the text model expands (B, S); (4, B, S) is already complete
        batch, seq = inputs_embeds.shape[:2]
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if attention_mask is not None and attention_mask.ndim == 2:
            text = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)[:, -seq:]
        else:
            text = torch.arange(past, past + seq, device=inputs_embeds.device).expand(batch, -1)
        text = text.to(inputs_embeds.device)
        if position_ids is None:  # decoding without explicit positions: continue with rope_deltas
            delta = 0 if rope_deltas is None else rope_deltas.to(text.device)
            position_ids = (text + delta).expand(3, -1, -1)
        return torch.cat([text[None], position_ids.to(text.device)], dim=0)



class DeepStackCausalLMMixin:
    """A causal-LM head over `self.model` (a `DeepStackTextModelMixin` model), with `generate`."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    @staticmethod
    def is_own_key(key: str) -> bool:  # checkpoint keys this half reads
        return not key.startswith("model.visual.")

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (B, S)
        attention_mask: torch.Tensor | None = None,  # (B, S)
        position_ids: torch.LongTensor | None = None,  # (3, B, S), (4, B, S), (B, S) or None
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,  # (B, S, H)
        visual_embeds: torch.Tensor | None = None,  # (N, H)
        deepstack_visual_embeds: torch.Tensor | list[torch.Tensor] | None = None,  # (K, N, H)
        visual_pos_masks: torch.Tensor | None = None,  # (B, S) bool
        input_deepstack_embeds: torch.Tensor | None = None,  # (S, K*H) or (B, S, K*H)
        rope_deltas: torch.Tensor | None = None,  # (B, 1)
        labels: torch.LongTensor | None = None,  # (B, S)
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            visual_embeds=visual_embeds,
            deepstack_visual_embeds=deepstack_visual_embeds,
            visual_pos_masks=visual_pos_masks,
            input_deepstack_embeds=input_deepstack_embeds,
            rope_deltas=rope_deltas,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])  # (B, S', V)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return self.causal_lm_output(outputs, logits, loss, attention_mask)

    def causal_lm_output(self, outputs, logits: torch.Tensor, loss: torch.Tensor | None, attention_mask):
        """The forward's return value, from the text model's outputs (a family may add its own terms)."""
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False, **kwargs):
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            for key in VISUAL_INPUTS:
                inputs.pop(key, None)
        return inputs


__all__ = ["DeepStackCausalLMMixin", "DeepStackTextModelMixin", "VISUAL_INPUTS"]
