"""Config classes that also read the config.json of the checkpoints they are split from.

Hub remote code (imports only transformers). A subclass lists its sources as
`source_configs = {model_type: (transformers config class, name of the classmethod building ours)}`.
"""

from typing import Any


class ReadsSourceConfigs:
    source_configs: dict = {}
    source_names: dict = {}  # model_type -> human name, for error messages

    @classmethod
    def own_config_dict(cls, config_dict: dict[str, Any]) -> dict[str, Any]:
        """Our config dict, from our own config.json or one of a source checkpoint."""
        model_type = config_dict.get("model_type")
        if model_type in cls.source_configs:
            source_class, build = cls.source_configs[model_type]
            return getattr(cls, build)(source_class.from_dict(dict(config_dict))).to_dict()
        if model_type not in (None, cls.model_type):
            sources = " or ".join(f"a {cls.source_names[t]} checkpoint (model_type '{t}')" for t in cls.source_configs)
            raise ValueError(
                f"{cls.__name__.removesuffix('Config')} loads {sources} or its own saved folder "
                f"(model_type '{cls.model_type}'), got model_type '{model_type}'."
            )
        return config_dict

    @classmethod
    def get_config_dict(cls, *args, **kwargs):
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        return cls.own_config_dict(config_dict), kwargs

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        return super().from_dict(cls.own_config_dict(config_dict), **kwargs)
