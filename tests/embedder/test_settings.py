"""The embedder's settings from an environment mapping, and the weights choice they parse."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from medsearch_common.settings import Binding, SettingsError
from medsearch_embedder.settings import EmbedderSettings
from medsearch_embedder.weights import WEIGHTS_VARIABLE, WeightsSpec, parse_weights

# EmbedderSettings.from_environ


def test_an_empty_environment_gives_the_defaults() -> None:
    settings = EmbedderSettings.from_environ({})

    assert settings.binding == Binding("127.0.0.1", 8081)
    assert settings.weights == WeightsSpec("imagenet")
    assert (settings.device, settings.precision) == ("auto", "float32")
    assert (settings.runtime, settings.cache_dir) == ("auto", Path("var/embedder"))
    assert (settings.max_batch, settings.max_delay_ms, settings.max_queue) == (8, 5.0, 64)
    assert settings.max_images_per_request == 32
    assert settings.max_image_bytes == 50 * 1024 * 1024
    assert settings.max_image_pixels == 64_000_000
    assert settings.max_request_bytes == 256 * 1024 * 1024
    assert settings.decode_threads == (os.cpu_count() or 2)
    assert (settings.wait_timeout_s, settings.threads, settings.log_level) == (60.0, 32, "INFO")


def test_from_environ_reads_only_the_mapping_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSEARCH_EMBEDDER_MAX_BATCH", "99")
    monkeypatch.setenv(WEIGHTS_VARIABLE, "random:1")

    settings = EmbedderSettings.from_environ({})

    assert settings.max_batch == 8 and settings.weights == WeightsSpec("imagenet")


def test_blank_variables_take_the_defaults() -> None:
    names = (
        WEIGHTS_VARIABLE,
        "MEDSEARCH_EMBEDDER_MAX_BATCH",
        "MEDSEARCH_EMBEDDER_DEVICE",
        "MEDSEARCH_EMBEDDER_RUNTIME",
        "MEDSEARCH_EMBEDDER_CACHE_DIR",
    )
    blank = dict.fromkeys(names, "  ")
    assert EmbedderSettings.from_environ(blank) == EmbedderSettings.from_environ({})


@pytest.mark.parametrize(
    ("variable", "raw", "field", "expected"),
    [
        (WEIGHTS_VARIABLE, "random:7", "weights", WeightsSpec("random", seed=7)),
        (WEIGHTS_VARIABLE, "/models/r50.h5", "weights", WeightsSpec("file", path=Path("/models/r50.h5"))),
        ("MEDSEARCH_EMBEDDER_DEVICE", "cpu", "device", "cpu"),
        ("MEDSEARCH_EMBEDDER_DEVICE", " GPU ", "device", "gpu"),
        ("MEDSEARCH_EMBEDDER_PRECISION", "mixed_float16", "precision", "mixed_float16"),
        ("MEDSEARCH_EMBEDDER_RUNTIME", "onnxruntime", "runtime", "onnxruntime"),
        ("MEDSEARCH_EMBEDDER_RUNTIME", " TensorFlow ", "runtime", "tensorflow"),
        ("MEDSEARCH_EMBEDDER_CACHE_DIR", "/srv/cache/embedder", "cache_dir", Path("/srv/cache/embedder")),
        ("MEDSEARCH_EMBEDDER_CACHE_DIR", "data/models", "cache_dir", Path("data/models")),
        ("MEDSEARCH_EMBEDDER_MAX_BATCH", "32", "max_batch", 32),
        ("MEDSEARCH_EMBEDDER_MAX_DELAY_MS", "2.5", "max_delay_ms", 2.5),
        ("MEDSEARCH_EMBEDDER_MAX_DELAY_MS", "0", "max_delay_ms", 0.0),
        ("MEDSEARCH_EMBEDDER_MAX_QUEUE", "500", "max_queue", 500),
        ("MEDSEARCH_EMBEDDER_MAX_IMAGES_PER_REQUEST", "16", "max_images_per_request", 16),
        ("MEDSEARCH_EMBEDDER_MAX_IMAGE_BYTES", "2048", "max_image_bytes", 2048),
        ("MEDSEARCH_EMBEDDER_MAX_IMAGE_PIXELS", "1000000", "max_image_pixels", 1_000_000),
        ("MEDSEARCH_EMBEDDER_MAX_REQUEST_BYTES", "1048576", "max_request_bytes", 1_048_576),
        ("MEDSEARCH_EMBEDDER_DECODE_THREADS", "3", "decode_threads", 3),
        ("MEDSEARCH_EMBEDDER_WAIT_TIMEOUT_S", "12.5", "wait_timeout_s", 12.5),
        ("MEDSEARCH_EMBEDDER_THREADS", "4", "threads", 4),
        ("MEDSEARCH_LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("MEDSEARCH_PORT", "9000", "binding", Binding("127.0.0.1", 9000)),
        ("MEDSEARCH_HOST", "0.0.0.0", "binding", Binding("0.0.0.0", 8081)),  # noqa: S104
    ],
)
def test_each_variable_sets_its_field_and_nothing_else(
    variable: str, raw: str, field: str, expected: Any
) -> None:
    settings = EmbedderSettings.from_environ({variable: raw})

    assert getattr(settings, field) == expected
    assert settings == dataclasses.replace(EmbedderSettings.from_environ({}), **{field: expected})


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("MEDSEARCH_EMBEDDER_MAX_BATCH", "1"),
        ("MEDSEARCH_EMBEDDER_MAX_BATCH", "256"),
        ("MEDSEARCH_EMBEDDER_MAX_DELAY_MS", "1000"),
        ("MEDSEARCH_EMBEDDER_MAX_QUEUE", "100000"),
        ("MEDSEARCH_EMBEDDER_MAX_IMAGES_PER_REQUEST", "1"),
        ("MEDSEARCH_EMBEDDER_MAX_IMAGE_BYTES", "1024"),
        ("MEDSEARCH_EMBEDDER_MAX_IMAGE_PIXELS", "1024"),
        ("MEDSEARCH_EMBEDDER_MAX_REQUEST_BYTES", "1024"),
        ("MEDSEARCH_EMBEDDER_DECODE_THREADS", "256"),
        ("MEDSEARCH_EMBEDDER_WAIT_TIMEOUT_S", "0.1"),
        ("MEDSEARCH_EMBEDDER_WAIT_TIMEOUT_S", "3600"),
        ("MEDSEARCH_EMBEDDER_THREADS", "1"),
    ],
)
def test_the_ends_of_each_range_are_accepted(variable: str, raw: str) -> None:
    settings = EmbedderSettings.from_environ({variable: raw})
    field = variable.removeprefix("MEDSEARCH_EMBEDDER_").lower()
    assert getattr(settings, field) == float(raw)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("MEDSEARCH_EMBEDDER_MAX_BATCH", "abc"),
        ("MEDSEARCH_EMBEDDER_MAX_BATCH", "8.5"),
        ("MEDSEARCH_EMBEDDER_MAX_BATCH", "0"),
        ("MEDSEARCH_EMBEDDER_MAX_BATCH", "257"),
        ("MEDSEARCH_EMBEDDER_MAX_DELAY_MS", "soon"),
        ("MEDSEARCH_EMBEDDER_MAX_DELAY_MS", "-1"),
        ("MEDSEARCH_EMBEDDER_MAX_DELAY_MS", "1001"),
        ("MEDSEARCH_EMBEDDER_MAX_DELAY_MS", "nan"),
        ("MEDSEARCH_EMBEDDER_MAX_QUEUE", "0"),
        ("MEDSEARCH_EMBEDDER_MAX_QUEUE", "100001"),
        ("MEDSEARCH_EMBEDDER_MAX_QUEUE", "many"),
        ("MEDSEARCH_EMBEDDER_MAX_IMAGES_PER_REQUEST", "0"),
        ("MEDSEARCH_EMBEDDER_MAX_IMAGES_PER_REQUEST", "1025"),
        ("MEDSEARCH_EMBEDDER_MAX_IMAGE_BYTES", "1023"),
        ("MEDSEARCH_EMBEDDER_MAX_IMAGE_BYTES", "50MB"),
        ("MEDSEARCH_EMBEDDER_MAX_IMAGE_PIXELS", "1023"),
        ("MEDSEARCH_EMBEDDER_MAX_REQUEST_BYTES", "1k"),
        ("MEDSEARCH_EMBEDDER_MAX_REQUEST_BYTES", "1023"),
        ("MEDSEARCH_EMBEDDER_DECODE_THREADS", "0"),
        ("MEDSEARCH_EMBEDDER_DECODE_THREADS", "257"),
        ("MEDSEARCH_EMBEDDER_WAIT_TIMEOUT_S", "0"),
        ("MEDSEARCH_EMBEDDER_WAIT_TIMEOUT_S", "3601"),
        ("MEDSEARCH_EMBEDDER_WAIT_TIMEOUT_S", "inf"),
        ("MEDSEARCH_EMBEDDER_THREADS", "0"),
        ("MEDSEARCH_EMBEDDER_THREADS", "-4"),
        ("MEDSEARCH_EMBEDDER_THREADS", "257"),
        ("MEDSEARCH_EMBEDDER_DEVICE", "tpu"),
        ("MEDSEARCH_EMBEDDER_PRECISION", "float16"),
        ("MEDSEARCH_EMBEDDER_PRECISION", "bfloat16"),
        ("MEDSEARCH_EMBEDDER_RUNTIME", "onnx"),
        ("MEDSEARCH_EMBEDDER_RUNTIME", "tflite"),
        (WEIGHTS_VARIABLE, "random:abc"),
        ("MEDSEARCH_LOG_LEVEL", "verbose"),
        ("MEDSEARCH_PORT", "0"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError) as refused:
        EmbedderSettings.from_environ({variable: raw})
    assert variable in str(refused.value)


def test_a_queue_smaller_than_one_request_is_refused_naming_both_variables() -> None:
    with pytest.raises(SettingsError) as refused:
        EmbedderSettings.from_environ(
            {"MEDSEARCH_EMBEDDER_MAX_QUEUE": "16", "MEDSEARCH_EMBEDDER_MAX_IMAGES_PER_REQUEST": "17"}
        )
    assert "MEDSEARCH_EMBEDDER_MAX_QUEUE (16)" in str(refused.value)
    assert "MEDSEARCH_EMBEDDER_MAX_IMAGES_PER_REQUEST (17)" in str(refused.value)


def test_a_queue_below_the_default_request_limit_is_refused() -> None:
    with pytest.raises(SettingsError, match="MEDSEARCH_EMBEDDER_MAX_QUEUE"):
        EmbedderSettings.from_environ({"MEDSEARCH_EMBEDDER_MAX_QUEUE": "31"})


def test_a_queue_exactly_one_request_long_is_accepted() -> None:
    settings = EmbedderSettings.from_environ(
        {"MEDSEARCH_EMBEDDER_MAX_QUEUE": "16", "MEDSEARCH_EMBEDDER_MAX_IMAGES_PER_REQUEST": "16"}
    )
    assert settings.max_queue == settings.max_images_per_request == 16


@pytest.mark.parametrize(
    ("variable", "raw"),
    [("MEDSEARCH_EMBEDDER_DEVICE", "gpu"), ("MEDSEARCH_EMBEDDER_PRECISION", "mixed_float16")],
)
def test_onnxruntime_with_a_gpu_setting_is_refused_naming_both_variables(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError) as refused:
        EmbedderSettings.from_environ({"MEDSEARCH_EMBEDDER_RUNTIME": "onnxruntime", variable: raw})
    assert "MEDSEARCH_EMBEDDER_RUNTIME=onnxruntime" in str(refused.value)
    assert f"{variable}={raw}" in str(refused.value)
    assert "tensorflow" in str(refused.value)  # what to use instead


@pytest.mark.parametrize("runtime", ["auto", "tensorflow"])
def test_the_gpu_takes_the_tensorflow_or_auto_runtime(runtime: str) -> None:
    settings = EmbedderSettings.from_environ(
        {
            "MEDSEARCH_EMBEDDER_RUNTIME": runtime,
            "MEDSEARCH_EMBEDDER_DEVICE": "gpu",
            "MEDSEARCH_EMBEDDER_PRECISION": "mixed_float16",
        }
    )
    assert (settings.runtime, settings.device, settings.precision) == (runtime, "gpu", "mixed_float16")


def test_a_cache_dir_under_the_home_folder_is_expanded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = EmbedderSettings.from_environ({"MEDSEARCH_EMBEDDER_CACHE_DIR": "~/embedder"})
    assert settings.cache_dir == tmp_path / "embedder"


def test_settings_made_directly_check_the_queue_too() -> None:
    with pytest.raises(SettingsError, match="MEDSEARCH_EMBEDDER_MAX_QUEUE"):
        EmbedderSettings(binding=Binding("127.0.0.1", 0), max_queue=4, max_images_per_request=8)


# parse_weights


def test_imagenet_is_parsed_without_a_path() -> None:
    assert parse_weights("imagenet") == WeightsSpec("imagenet")
    assert parse_weights("  imagenet\n") == WeightsSpec("imagenet")


@pytest.mark.parametrize(
    ("raw", "seed"), [("random:0", 0), ("random:42", 42), ("random:4294967295", 2**32 - 1)]
)
def test_random_takes_any_seed_from_0_to_2_32_minus_1(raw: str, seed: int) -> None:
    assert parse_weights(raw) == WeightsSpec("random", seed=seed)


@pytest.mark.parametrize(
    "raw",
    ["random", "random:", "random:-1", "random:abc", "random:4294967296", "random:1.5", "random:99999999999"],
)
def test_random_without_a_valid_seed_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError) as refused:
        parse_weights(raw)
    assert WEIGHTS_VARIABLE in str(refused.value)
    assert "random:42" in str(refused.value)  # an example of what works


def test_a_path_is_a_weights_file() -> None:
    assert parse_weights("/srv/models/resnet50.h5") == WeightsSpec(
        "file", path=Path("/srv/models/resnet50.h5")
    )
    assert parse_weights("weights/r50.h5") == WeightsSpec("file", path=Path("weights/r50.h5"))
    # A file whose name starts with "random" is still a file.
    assert parse_weights("random_init.h5") == WeightsSpec("file", path=Path("random_init.h5"))


def test_imagenet_is_recognized_in_any_case() -> None:
    assert parse_weights("ImageNet") == WeightsSpec("imagenet")


def test_a_path_under_the_home_folder_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_weights("~/models/r50.h5") == WeightsSpec("file", path=tmp_path / "models" / "r50.h5")


@pytest.mark.parametrize("raw", ["", "   "])
def test_empty_weights_are_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError) as refused:
        parse_weights(raw)
    assert WEIGHTS_VARIABLE in str(refused.value)


# WeightsSpec


def test_describe_shows_a_file_s_name_but_never_its_folders() -> None:
    spec = parse_weights("/srv/hospital-a/private/models/resnet50_cxr.h5")
    assert spec.describe() == "file:resnet50_cxr.h5"
    assert "hospital-a" not in spec.describe() and "/" not in spec.describe()


def test_describe_of_located_imagenet_weights_hides_the_cache_folder() -> None:
    spec = WeightsSpec("imagenet", path=Path("/home/someone/.keras/models/weights.h5"))
    assert spec.describe() == "imagenet"


def test_describe_of_random_weights_gives_the_seed() -> None:
    assert parse_weights("random:42").describe() == "random:42"


@pytest.mark.parametrize(
    ("spec", "meaningful"),
    [
        (WeightsSpec("imagenet"), True),
        (WeightsSpec("file", path=Path("/m/r50.h5")), True),
        (WeightsSpec("random", seed=42), False),
        (WeightsSpec("random", seed=0), False),
    ],
)
def test_only_random_weights_are_not_meaningful(spec: WeightsSpec, meaningful: bool) -> None:
    assert spec.meaningful is meaningful
