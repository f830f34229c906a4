"""`python -m medsearch_embedder`: the real gunicorn process, from loading to serving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import requests

from medsearch_embedder.model import Embedder
from medsearch_embedder.preprocessing import InputLimits, prepare
from tests.embedder.conftest import SEED
from tests.support.processes import free_port, wait_ready

NIH = "nih_cxr14/images/00000075_000.png"


def test_a_restarted_process_with_the_same_weights_gives_the_same_vectors(
    embedder: Embedder, onnx_cache: Path, test_data: Path, tmp_path: Path
) -> None:
    """Same bytes, same weights, another process: the same vector and model_id, from the
    converted model that the session's `embedder` left in the cache."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "embedder.log"
    env = {
        **os.environ,
        "MEDSEARCH_PORT": str(port),
        "MEDSEARCH_EMBEDDER_WEIGHTS": f"random:{SEED}",
        "MEDSEARCH_EMBEDDER_CACHE_DIR": str(onnx_cache),
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "medsearch_embedder"], env=env, stdout=log, stderr=log
        )
    try:
        before_ready = wait_ready(base, process, log_path, timeout_s=180)
        # While loading, /readyz said 503 (unless the load beat the first poll).
        assert set(before_ready) <= {503}
        image = (test_data / NIH).read_bytes()
        response = requests.post(f"{base}/v1/embeddings", files=[("images", ("x.png", image))], timeout=60)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"]["model_id"] == embedder.info.model_id
        assert body["model"]["runtime"] == embedder.info.runtime
        assert body["model"]["meaningful"] is False
        served = np.asarray(body["data"][0]["embedding"], dtype=np.float32)
        here = embedder.embed(prepare(image, InputLimits(10**8, 10**8))[np.newaxis])[0]
        np.testing.assert_allclose(served, here, atol=1e-5)
        metrics = requests.get(f"{base}/metrics", timeout=10).text
        for name in ("embedder_batch_size", "embedder_queue_depth", "embedder_inference_seconds"):
            assert name in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log_path.read_text()
    log_text = log_path.read_text()
    assert '"msg": "model loaded"' in log_text, log_text
    assert '"msg": "converted model loaded from the cache"' in log_text, log_text
    assert "model converted to ONNX" not in log_text
