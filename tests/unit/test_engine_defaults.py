"""Requests that leave sampling parameters out get the model's own defaults, else OpenAI's."""

from __future__ import annotations

from types import SimpleNamespace

from transformers import GenerationConfig

from workers.engine import SamplingDefaults, sampling_defaults_of


def test_model_generation_config_supplies_defaults() -> None:
    model = SimpleNamespace(generation_config=GenerationConfig(do_sample=True, temperature=0.2, top_p=0.9, top_k=40))
    assert sampling_defaults_of(model) == SamplingDefaults(temperature=0.2, top_p=0.9, top_k=40)


def test_without_do_sample_openai_defaults_apply() -> None:
    model = SimpleNamespace(generation_config=GenerationConfig(temperature=0.2))
    assert sampling_defaults_of(model) == SamplingDefaults(temperature=1.0, top_p=1.0, top_k=None)


def test_default_model_carries_its_recommended_sampling() -> None:
    from workers.default_model import RECOMMENDED_SAMPLING, default_model_dir

    config = GenerationConfig.from_pretrained(str(default_model_dir()))
    assert all(getattr(config, k) == v for k, v in RECOMMENDED_SAMPLING.items())
