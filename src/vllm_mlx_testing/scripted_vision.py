"""A Qwen2-VL model whose text replies follow a script, for exact-output tests of vision requests.

The vision tower, the embedding merge and the mrope positions are mlx-vlm's real Qwen2-VL code;
only the language model's forward is replaced by the scripted one of ``scripted_model`` (which reads
the token ids, written into the KV cache, and forces the scripted reply). mlx-vlm loads it through
the config's ``model_file`` (see ``vision_models.build_scripted_vision_model``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from mlx_vlm.models.base import LanguageModelOutput
from mlx_vlm.models.qwen2_vl import qwen2_vl as _base
from mlx_vlm.models.qwen2_vl.config import ModelConfig as _BaseConfig
from mlx_vlm.models.qwen2_vl.config import TextConfig, VisionConfig  # noqa: F401 (the loader looks them up)
from mlx_vlm.models.qwen2_vl.language import LanguageModel as _BaseLanguageModel
from mlx_vlm.models.qwen2_vl.vision import VisionModel  # noqa: F401

from . import scripted_model


@dataclass
class ModelConfig(_BaseConfig):
    script: dict | None = None

    @classmethod
    def from_dict(cls, params):
        config = _BaseConfig.from_dict.__func__(cls, params)
        config.script = params.get("script")
        return config


class LanguageModel(_BaseLanguageModel):
    def __init__(self, args, config: ModelConfig):
        super().__init__(args, config)
        fields = set(inspect.signature(scripted_model.ModelArgs).parameters)
        script = dict(config.script or {})
        args = scripted_model.ModelArgs(**{k: v for k, v in script.items() if k in fields})
        for key, value in script.items():  # the script's own fields (marker, rules, byte table)
            setattr(args, key, value)
        self._scripted = scripted_model.Model(args)

    def __call__(self, inputs, inputs_embeds=None, mask=None, cache=None, **kwargs):
        return LanguageModelOutput(logits=self._scripted(inputs, cache=cache))


class Model(_base.Model):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.language_model = LanguageModel(config.text_config, config)
