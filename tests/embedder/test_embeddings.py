"""Embeddings from the real ResNet-50 (TensorFlow, random weights) on real X-rays."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from medsearch_embedder.model import DIM, Embedder, ModelLoadError, load_embedder
from medsearch_embedder.weights import WeightsSpec
from tests.embedder.conftest import MAX_BATCH, cosine, post_images, vectors_of
from tests.embedder.dicoms import dicom

NIH = [
    "nih_cxr14/images/00000075_000.png",  # mode L
    "nih_cxr14/images/00000100_000.png",  # RGBA
]


def shared_images(test_data: Path) -> list[Path]:
    return sorted(test_data.glob("*/images/*"))


def test_vectors_are_2048_d_unit_length_and_differ_between_x_rays(
    client: FlaskClient, test_data: Path
) -> None:
    vectors = vectors_of(post_images(client, [(test_data / path).read_bytes() for path in NIH]))
    for vector in vectors.values():
        assert vector.shape == (DIM,) and vector.dtype == np.float32
        assert np.isfinite(vector).all()
        assert abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    assert cosine(vectors[0], vectors[1]) < 0.9999


def test_batched_vectors_equal_single_ones(client: FlaskClient, test_data: Path) -> None:
    images = [path.read_bytes() for path in shared_images(test_data)[::50]][:MAX_BATCH]
    together = vectors_of(post_images(client, images))
    for i, image in enumerate(images):
        [alone] = vectors_of(post_images(client, [image])).values()
        np.testing.assert_allclose(together[i], alone, atol=1e-5)


def test_base64_encoding_carries_the_same_float32_vectors(client: FlaskClient, test_data: Path) -> None:
    images = [(test_data / path).read_bytes() for path in NIH]
    as_numbers = vectors_of(post_images(client, images))
    files = [(io.BytesIO(data), f"image-{i}") for i, data in enumerate(images)]
    response = client.post(
        "/v1/embeddings?encoding=base64", data={"images": files}, content_type="multipart/form-data"
    )
    assert response.status_code == 200 and response.json is not None
    for item in response.json["data"]:
        vector = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(vector, as_numbers[item["index"]])


def test_half_size_jpeg_of_an_x_ray_stays_next_to_it(client: FlaskClient, test_data: Path) -> None:
    original = (test_data / NIH[0]).read_bytes()
    image = Image.open(io.BytesIO(original)).convert("L")
    out = io.BytesIO()
    image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS).save(
        out, "JPEG", quality=90
    )
    vectors = vectors_of(post_images(client, [original, out.getvalue(), (test_data / NIH[1]).read_bytes()]))
    assert cosine(vectors[0], vectors[1]) > 0.98
    # The re-encode is nearer to its original than another X-ray is.
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])


def test_every_shared_image_embeds(client: FlaskClient, test_data: Path) -> None:
    """NIH (L and RGBA, 1024²), Hannover (non-square, 16-bit among them) and photos."""
    paths = shared_images(test_data)
    assert len(paths) == 412
    for start in range(0, len(paths), MAX_BATCH):
        batch = paths[start : start + MAX_BATCH]
        response = post_images(client, [path.read_bytes() for path in batch])
        assert response.json is not None and response.json["errors"] == [], [str(p) for p in batch]
        vectors = vectors_of(response)
        assert sorted(vectors) == list(range(len(batch)))
        for vector in vectors.values():
            assert abs(float(np.linalg.norm(vector)) - 1) < 1e-5


@pytest.mark.parametrize(
    ("bits", "photometric", "rescale", "window"),
    [
        (8, "MONOCHROME2", None, None),
        (8, "MONOCHROME1", None, None),
        (16, "MONOCHROME2", None, None),
        (16, "MONOCHROME1", None, None),
        (16, "MONOCHROME2", (2.0, -1024.0), None),
        (16, "MONOCHROME2", (1.0, 0.0), "full"),
        (16, "MONOCHROME1", (0.5, 100.0), "full"),
    ],
)
def test_dicom_made_from_a_png_embeds_like_the_png(
    client: FlaskClient,
    test_data: Path,
    bits: int,
    photometric: str,
    rescale: tuple[float, float] | None,
    window: str | None,
) -> None:
    png = (test_data / NIH[0]).read_bytes()
    gray = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    # Stored values that, after rescale (and inversion for MONOCHROME1), give back the PNG's grays.
    shown = gray * 257 if bits == 16 else gray
    if photometric == "MONOCHROME1":
        shown = shown.max() - shown
    slope, intercept = rescale or (1.0, 0.0)
    stored = np.round((shown - intercept) / slope)
    pixels = stored.astype(np.uint16 if bits == 16 else np.uint8)
    real = pixels * slope + intercept
    # A window that spans all the real values keeps the picture; a narrow one would not.
    centre_width = (
        (float(real.min() + real.max()) / 2, float(real.max() - real.min()) + 1) if window else None
    )
    data = dicom(
        pixels,
        photometric=photometric,
        slope=rescale[0] if rescale else None,
        intercept=rescale[1] if rescale else None,
        window=centre_width,
    )
    vectors = vectors_of(post_images(client, [png, data]))
    assert cosine(vectors[0], vectors[1]) > 0.99


def test_concurrent_requests_share_model_calls(
    make_embedder_app: Callable[..., Flask], test_data: Path
) -> None:
    # A long max delay makes the meeting certain: the first request waits for the others.
    app = make_embedder_app(max_delay_ms=3000)
    image = (test_data / NIH[0]).read_bytes()
    senders = 4
    start = threading.Barrier(senders)
    statuses: list[int] = []

    def send() -> None:
        start.wait(timeout=30)
        statuses.append(post_images(app.test_client(), [image]).status_code)

    threads = [threading.Thread(target=send) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert statuses == [200] * senders
    families = {f.name: f for f in text_string_to_metric_families(app.test_client().get("/metrics").text)}
    samples = {s.name: s.value for s in families["embedder_batch_size"].samples if not s.labels}
    assert samples["embedder_batch_size_sum"] == senders
    assert samples["embedder_batch_size_count"] < senders  # fewer model calls than requests


def test_a_full_queue_answers_503_with_retry_after_and_recovers(
    make_embedder_app: Callable[..., Flask], test_data: Path
) -> None:
    app = make_embedder_app(max_batch=1, max_queue=4, max_images_per_request=4, max_delay_ms=0)
    images = [path.read_bytes() for path in shared_images(test_data)[:4]]
    senders = 4
    start = threading.Barrier(senders)
    responses: list[tuple[int, dict[str, str]]] = []

    def send() -> None:
        start.wait(timeout=30)
        response = post_images(app.test_client(), images)
        responses.append((response.status_code, dict(response.headers)))

    threads = [threading.Thread(target=send) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    statuses = sorted(status for status, _ in responses)
    assert len(statuses) == senders and set(statuses) <= {200, 503}
    # One model call at a time, one image each: 16 images cannot all fit a queue of 4.
    assert 200 in statuses and 503 in statuses
    for status, headers in responses:
        if status == 503:
            assert int(headers["Retry-After"]) >= 1
            assert headers["Content-Type"] == "application/problem+json"
    assert post_images(app.test_client(), images).status_code == 200


def test_weights_file_gives_the_vectors_and_digest_of_the_same_weights(
    tensorflow_embedder: Embedder, tmp_path: Path, test_data: Path
) -> None:
    import keras

    keras.utils.set_random_seed(42)
    model = keras.applications.ResNet50(
        include_top=False, weights=None, pooling="avg", input_shape=(224, 224, 3)
    )
    path = tmp_path / "resnet50-seed42.weights.h5"
    model.save_weights(str(path))
    from_file = load_embedder(
        WeightsSpec("file", path=path), device="cpu", precision="float32", max_batch=1, runtime="tensorflow"
    )
    # The same weights, however loaded, share the digest; the label says how they were chosen.
    assert from_file.info.model_id.startswith("resnet50-file-")
    assert from_file.info.model_id.rsplit("-", 1)[1] == tensorflow_embedder.info.model_id.rsplit("-", 1)[1]
    assert from_file.info.meaningful and from_file.info.weights == "file:resnet50-seed42.weights.h5"
    from medsearch_embedder.preprocessing import InputLimits, prepare

    x = prepare((test_data / NIH[0]).read_bytes(), InputLimits(10**8, 10**8))[np.newaxis]
    np.testing.assert_allclose(from_file.embed(x), tensorflow_embedder.embed(x), atol=1e-5)


def test_other_seeds_give_other_model_ids(embedder: Embedder) -> None:
    other = load_embedder(
        WeightsSpec("random", seed=7), device="cpu", precision="float32", max_batch=1, runtime="tensorflow"
    )
    assert other.info.model_id.startswith("resnet50-random7-")
    assert embedder.info.model_id.startswith("resnet50-random42-")
    assert other.info.model_id.rsplit("-", 1)[1] != embedder.info.model_id.rsplit("-", 1)[1]


def test_weights_that_do_not_fit_resnet50_stop_the_load(tmp_path: Path) -> None:
    garbage = tmp_path / "broken.h5"
    garbage.write_bytes(b"not an HDF5 file at all" * 100)
    with pytest.raises(ModelLoadError, match=r"broken\.h5"):
        load_embedder(WeightsSpec("file", path=garbage), device="cpu", precision="float32", max_batch=1)


@pytest.mark.parametrize(
    ("device", "precision", "words"),
    [("cpu", "mixed_float16", "needs a GPU"), ("gpu", "float32", "sees no GPU")],
)
def test_gpu_only_settings_are_refused_on_a_machine_without_one(
    device: str, precision: str, words: str
) -> None:
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present: the refusals apply to machines without one")
    with pytest.raises(ModelLoadError, match=words):
        load_embedder(WeightsSpec("random", seed=1), device=device, precision=precision, max_batch=1)
