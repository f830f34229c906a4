"""The readiness watcher `make run` starts beside the services (see the Procfile).

It waits until every service answers /readyz, prints where the UI is, ingests
MEDSEARCH_SEED_DIR when one is given (what is indexed already is skipped), then stays up:
honcho stops everything when one of its processes ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

SERVICES = ("catalog", "search", "embedder", "gateway")
# Loading TensorFlow and building the model takes ~20 s on 2 cores; leave room for slow disks.
START_TIMEOUT_S = 600


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # honcho stopping everything
    urls = {name: f"http://127.0.0.1:{os.environ[f'MEDSEARCH_{name.upper()}_PORT']}" for name in SERVICES}
    deadline = time.monotonic() + START_TIMEOUT_S
    for name, url in urls.items():
        while not ready(url):
            if time.monotonic() > deadline:
                print(f"ready: {name} was not ready within {START_TIMEOUT_S} s ({url}/readyz)", flush=True)
                return 1
            time.sleep(0.5)
    print(f"ready: MedSearch is up at {urls['gateway']}/  (Ctrl-C stops it)", flush=True)
    seed = os.environ.get("MEDSEARCH_SEED_DIR", "").strip()
    if seed:
        print(f"ready: ingesting {seed} (already indexed images are skipped)", flush=True)
        medsearch = Path(sys.executable).parent / "medsearch"
        result = subprocess.run([str(medsearch), "ingest", seed, "--url", urls["gateway"]], check=False)
        print(f"ready: seeding finished with exit code {result.returncode}", flush=True)
    signal.pause()
    return 0


def ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


if __name__ == "__main__":
    sys.exit(main())
