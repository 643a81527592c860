"""Space benchmark (`make bench`): latency of one 3 s request end to end through the app (gradio_client ->
queue -> decode -> transcribe -> entropy view -> plot -> client), median and p95, and throughput under 8
concurrent clients. Also runs the metric Space's app once (slow: imports evaluate and trains probes).
Figures are printed and written to reports/space/bench_space.json."""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time

import numpy as np
import pytest
from gradio_client import Client, handle_file

from tests.conftest import REPO, run_python, synth_clip
from tests.space.conftest import ARTIFACTS, free_port, write_wave

pytestmark = pytest.mark.slow
SECONDS = 3.0
N_SEQUENTIAL = 20
CLIENTS, PER_CLIENT = 8, 4


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


@pytest.fixture(scope="module")
def cli_server(tiny_model_dir):
    """`entropy-asr space` in its own process, as a user starts it (clients here do not share its GIL)."""
    import subprocess
    import sys

    import httpx

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "training.commands.cli",
        "space",
        "--model",
        str(tiny_model_dir),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"entropy-asr space exited: {proc.stderr.read()[-3000:]}")
        try:
            if httpx.get(url + "config", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("entropy-asr space did not start in 180 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_space_latency_and_throughput(cli_server, tmp_path):
    client = Client(cli_server, verbose=False, analytics_enabled=False)
    clip = write_wave(tmp_path / "three_seconds.wav", synth_clip(SECONDS, seed=11))
    args = (handle_file(str(clip)), "")
    for _ in range(2):  # warm-up: first-call allocations, font cache
        client.predict(*args, api_name="/transcribe")

    latencies, server_times = [], []
    for _ in range(N_SEQUENTIAL):
        start = time.perf_counter()
        result = client.predict(*args, api_name="/transcribe")
        latencies.append(time.perf_counter() - start)
        server_times.append(result[4])

    clients = [Client(cli_server, verbose=False, analytics_enabled=False) for _ in range(CLIENTS)]
    per_request: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(c: Client) -> None:
        for _ in range(PER_CLIENT):
            t0 = time.perf_counter()
            try:
                c.predict(*args, api_name="/transcribe")
            except BaseException as err:  # noqa: BLE001 - counted and reported below
                errors.append(err)
            with lock:
                per_request.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    n = CLIENTS * PER_CLIENT

    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), CPU only; server in its own process",
        "clip_seconds": SECONDS,
        "latency_median_s": round(statistics.median(latencies), 3),
        "latency_p95_s": round(percentile(latencies, 95), 3),
        "server_processing_median_s": round(statistics.median(server_times), 3),
        "concurrent_clients": CLIENTS,
        "concurrent_requests": n,
        "concurrent_errors": len(errors),
        "throughput_requests_per_s": round(n / wall, 3),
        "throughput_audio_seconds_per_s": round(n * SECONDS / wall, 3),
        "concurrent_latency_median_s": round(statistics.median(per_request), 3),
        "concurrent_latency_p95_s": round(percentile(per_request, 95), 3),
    }
    print("\nSpace benchmark (tiny random-weight model, 3 s clip):")
    for key, value in figures.items():
        print(f"  {key}: {value}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "bench_space.json").write_text(json.dumps(figures, indent=2) + "\n")
    assert not errors, errors[:3]
    assert len(per_request) == n


def test_metric_space_app_computes(tmp_path):
    """The metric Space as assembled by `entropy-asr push`: its app loads the module and scores an example."""
    metric_dir = REPO / "eval" / "entropy_allocation"
    if not metric_dir.is_dir():
        pytest.skip("eval/entropy_allocation/ has not landed yet")
    from training.commands.release import assemble_metric

    out = assemble_metric(metric_dir, tmp_path / "metric", "someone/entropy_allocation")
    code = f"""
import json, os, sys, time
os.chdir({str(out)!r}); sys.path.insert(0, ".")
t = time.perf_counter()
import app
scores = app.example()
print(json.dumps({{"seconds": time.perf_counter() - t, "nse": scores["nse"], "pai": scores["pai_normalised"]}}))
"""
    result = json.loads(run_python(code).strip().splitlines()[-1])
    print(f"\nmetric Space example: {result}")
    assert 0 < result["nse"] <= 1 and result["pai"] > 0.5
