"""Gemma 3 and Gemma 4 (mlx-vlm ``gemma3``, ``gemma4``) as vision-language models of the engine:
what differs from Qwen, as one adapter per family.

Both families:

* Positions are plain (no mrope, no rope deltas): the language model rotates by its caches'
  offsets, so image and text rows decode in one batch like text rows.
* The cache is the language model's own layout (mlx-vlm's ``make_cache``: a ``RotatingKVCache`` of
  ``sliding_window`` tokens per sliding-window layer, a ``KVCache`` per global layer; Gemma 4's
  KV-sharing layers have none), made of mlx-lm's cache classes so the engine merges them into
  ``BatchRotatingKVCache`` / ``BatchKVCache`` and the prefix cache snapshots the rotating ones at
  checkpoints.
* The features of an image are scattered at its soft tokens, the embeddings prepared as mlx-vlm's
  ``get_input_embeddings`` prepares them (reproduced below, family by family).

Gemma 3: an image is ``mm_tokens_per_image`` soft tokens, the SigLIP tower's last hidden state
pooled, normalized and projected by ``multi_modal_projector``. mlx-vlm divides the features by
``sqrt(config.hidden_size)`` before scattering them, and the language model then multiplies every
input embedding by ``sqrt(text hidden size)`` (rounded to bfloat16); pad tokens get a zero embedding
in a prompt with images. Attention is causal over the whole prompt: mlx-vlm's ``gemma3`` builds a
bidirectional 4-D mask in ``get_input_embeddings`` but its generate loop never hands it to the
language model, so its own greedy generation (the reference) attends causally.

Gemma 4: an image keeps its aspect ratio, so its number of soft tokens varies (the processor says
how many). The token embeddings are scaled before the features replace the soft tokens, and every
layer also takes a per-layer input embedding, of token 0 at the soft tokens. With
``use_bidirectional_attention: "vision"`` (the 26B/31B models) an image's soft tokens attend to each
other both ways, in every layer, as mlx-vlm does: the engine then prefills each image's run in one
forward (``whole_images``) and overlays the run on that chunk's causal masks.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models import cache as lm_cache


def language_caches(language: Any) -> list[Any]:
    """mlx-vlm's cache layout for ``language`` in mlx-lm's classes (what the engine batches)."""
    out = []
    for c in language.make_cache():
        if type(c).__name__ == "RotatingKVCache":
            out.append(lm_cache.RotatingKVCache(max_size=c.max_size, keep=c.keep))
        elif type(c).__name__ == "KVCache":
            out.append(lm_cache.KVCache())
        else:
            raise ValueError(f"unexpected cache type {type(c).__name__} in the language model's layout")
    return out


class _GemmaAdapter:
    whole_images = False  # whether an image's run must be prefilled in one forward

    def __init__(self, vlm: Any):
        self.vlm = vlm
        self.language = vlm.language_model
        self._dtype = None

    def make_cache(self) -> list[Any]:
        return language_caches(self.language)

    def logits(self, inputs: mx.array, cache: list | None, **kwargs) -> mx.array:
        return self.language(inputs, cache=cache, **kwargs).logits

    @property
    def dtype(self):
        """The dtype of the token embeddings (what the features are cast to, as in mlx-vlm)."""
        if self._dtype is None:
            self._dtype = self.language.model.embed_tokens(mx.array([[0]])).dtype
        return self._dtype


class Gemma3Adapter(_GemmaAdapter):
    """Gemma 3's forward, image features and prompt embeddings (see the module docstring)."""

    def __init__(self, vlm: Any):
        super().__init__(vlm)
        cfg = vlm.config
        self.image_token_id = int(cfg.image_token_index)
        pad = getattr(cfg, "pad_token_id", None)
        self.pad_token_id = 0 if pad is None else int(pad)  # (mlx-vlm's fallback)
        self.feature_scale = float(cfg.hidden_size) ** 0.5  # mlx-vlm's (top-level) hidden_size

    def encode(self, pixel_values: np.ndarray) -> mx.array:
        """Soft-token features (mm_tokens_per_image, hidden) of one image, scaled as mlx-vlm scatters them."""
        pixels = mx.array(pixel_values).transpose(0, 2, 3, 1).astype(self.dtype)
        hidden, _, _ = self.vlm.vision_tower(pixels, output_hidden_states=True)
        features = self.vlm.multi_modal_projector(hidden)
        return (features / self.feature_scale)[0]

    def embed(self, ids: mx.array) -> mx.array:
        """Token embeddings of a window of a prompt with images (pad tokens zeroed, as mlx-vlm does)."""
        embeds = self.language.model.embed_tokens(ids)
        return mx.where((ids == self.pad_token_id)[..., None], mx.zeros_like(embeds), embeds)

    def prefill_logits(self, ids: mx.array, cache: list, embeds: mx.array, runs: np.ndarray) -> mx.array:
        return self.logits(ids, cache, inputs_embeds=embeds)


class Gemma4Adapter(_GemmaAdapter):
    """Gemma 4's forward, image features, embeddings and per-layer inputs (see the module docstring)."""

    def __init__(self, vlm: Any):
        super().__init__(vlm)
        cfg = vlm.config
        self.text = self.language.model
        self.image_token_id = int(cfg.image_token_id)
        # the tokens whose per-layer input is token 0's (mlx-vlm's multimodal mask)
        self.media_ids = [int(t) for t in (cfg.image_token_id, cfg.audio_token_id, cfg.video_token_id)
                          if t is not None]
        self.whole_images = getattr(cfg.text_config, "use_bidirectional_attention", None) == "vision"

    def encode(self, pixel_values: np.ndarray) -> mx.array:
        """Soft-token features (tokens, hidden) of one image (as mlx-vlm's ``encode_image``)."""
        features = self.vlm.embed_vision(self.vlm.vision_tower(mx.array(pixel_values)))
        return features[0].astype(self.dtype)

    def embed(self, ids: mx.array) -> mx.array:
        return self.text.embed_tokens(ids) * self.text.embed_scale

    def _per_layer_inputs(self, ids: mx.array) -> dict:
        if not self.text.hidden_size_per_layer_input:
            return {}
        media = mx.zeros(ids.shape, dtype=mx.bool_)
        for t in self.media_ids:
            media = media | (ids == t)
        return {"per_layer_inputs": self.text.get_per_layer_inputs(mx.where(media, 0, ids))}

    def prefill_logits(self, ids: mx.array, cache: list, embeds: mx.array, runs: np.ndarray) -> mx.array:
        extra = self._per_layer_inputs(ids)
        if not self.whole_images or ids.shape[1] < 2 or not (runs >= 0).any():
            return self.logits(ids, cache, inputs_embeds=embeds, **extra)
        return self._bidirectional_logits(embeds, cache, extra.get("per_layer_inputs"), mx.array(runs))

    def _bidirectional_logits(self, h: mx.array, cache: list, per_layer: mx.array | None,
                              runs: mx.array) -> mx.array:
        """mlx-vlm's Gemma 4 decoder (the plain path of ``Gemma4TextModel.__call__``) with each layer
        type's mask overlaid so that the soft tokens of one image (a whole run inside this chunk)
        attend to each other; the chunk's tokens are the last columns of every mask."""
        from mlx_vlm.models.base import create_attention_mask

        text = self.text
        n = h.shape[1]
        if per_layer is not None:
            per_layer = text.project_per_layer_inputs(h, per_layer)
        cache = list(cache) + [None] * (len(text.layers) - len(cache))
        same = (runs[:, None] == runs[None, :]) & (runs[:, None] >= 0)
        masks = {}
        for layer, c in zip(text.layers, cache):
            kind = layer.layer_type
            if kind not in masks and c is not None:
                window = text.window_size if kind == "sliding_attention" else None
                base = create_attention_mask(h, c, window_size=window, return_array=True)
                overlay = mx.concatenate([mx.zeros((n, base.shape[-1] - n), dtype=mx.bool_), same], axis=1)
                masks[kind] = base | overlay
        intermediates = [(None, None)] * len(text.layers)
        for idx, (layer, c, previous) in enumerate(zip(text.layers, cache, text.previous_kvs)):
            kvs, offset = intermediates[previous]
            h, kvs, offset = layer(h, masks[layer.layer_type], c, shared_kv=kvs, offset=offset,
                                   per_layer_input=None if per_layer is None else per_layer[:, :, idx, :])
            intermediates[idx] = (kvs, offset)
        return self.language.logits_from_hidden(text.norm(h))
