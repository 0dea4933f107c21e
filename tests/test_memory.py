"""Worker memory of inference: the heap the forward passes leave, batch shapes, the warm-up that
partitions are sized from (issue 17: the fixed growth the sizing did not see)."""

from __future__ import annotations

import sys

import numpy as np
import psutil
import pytest

from model_fixtures import random_model_set
from sb2dask.infer.config import InferenceConfig
from sb2dask.infer.predict import PAD_STEPS, get_model_set
from sb2dask.runtime import peak_rss, release_free_memory, reset_peak_rss

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
MB = 1 << 20


def _config(model_dir, batch_size: int | None = None) -> InferenceConfig:
    return InferenceConfig(model_dir=str(model_dir), device="cpu", precision="fp32", members=1,
                           batch_size=batch_size)


def _rss() -> int:
    return psutil.Process().memory_info().rss


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return random_model_set(tmp_path_factory.mktemp("models"), members=1)


def _batch_sizes_seen(models, call) -> list[int]:
    """Batch dimensions of the inputs the temperature network's trunk saw during ``call()``."""
    seen = []
    trunk = models.members["teff"][0][0].trunk
    handle = trunk.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    try:
        call()
    finally:
        handle.remove()
    return seen


#: The scenario of the test below, run in a fresh interpreter: in the test process the small
#: "pins" could be served from free chunks that earlier tests left anywhere in the heap, the
#: blocks would then sit together at its top and ``free`` alone would give them back (seen once
#: in CI: 134 of the 200 MB), so the heap's layout, not the function, decided the outcome.
_FRAGMENTED_HEAP = """
import json
import numpy as np, psutil
from sb2dask.runtime import release_free_memory, tune_process
MB = 1 << 20
rss = lambda: psutil.Process().memory_info().rss
tune_process()  # 64 MiB mmap threshold: the 1 MiB blocks below come from the heap
blocks, pins = [], []
for _ in range(200):
    blocks.append(np.ones(MB // 8))  # touched, so resident
    pins.append(np.ones(64))  # small survivors between them: the heap cannot shrink
before = rss()
del blocks
held = rss()
released = release_free_memory()
print(json.dumps(dict(before=before, held=held, after=rss(), released=released)))
"""


@linux
def test_release_free_memory_gives_freed_heap_pages_back():
    """200 freed 1 MiB blocks pinned between small live arrays stay resident after ``free``;
    :func:`release_free_memory` gives them back."""
    import json
    import subprocess

    run = subprocess.run([sys.executable, "-c", _FRAGMENTED_HEAP], capture_output=True,
                         text=True, timeout=300, check=True)
    r = json.loads(run.stdout.strip().splitlines()[-1])
    assert r["released"]
    assert r["before"] - r["held"] < 50 * MB, r  # free() kept the pages (the heap is pinned)
    assert r["held"] - r["after"] > 150 * MB, r


@linux
def test_peak_rss_sees_transients_and_resets():
    reset_peak_rss()
    base = _rss()
    block = np.ones(200 * MB // 8)
    del block
    release_free_memory()
    assert peak_rss() - base > 150 * MB
    assert reset_peak_rss()
    assert peak_rss() < _rss() + 20 * MB


def test_short_batches_are_padded_to_a_few_shapes_without_changing_results(model_dir):
    models = get_model_set(_config(model_dir, batch_size=32))  # small: the test is about shapes
    batch = models.batch_size
    rng = np.random.default_rng(0)
    flux = (1 + 0.01 * rng.standard_normal((2 * batch + 7, models.wave.size))).astype(np.float32)
    sizes = range(1, 2 * batch + 7, 3)  # 24 partition sizes
    seen = _batch_sizes_seen(models, lambda: [models.predict(flux[:n]) for n in sizes])
    assert len(seen) == sum(-(-n // batch) for n in sizes)  # one forward pass per batch
    assert len(set(seen)) <= PAD_STEPS  # unpadded: one shape per remainder, 24 here
    step = batch // PAD_STEPS
    assert all(s % step == 0 for s in seen)
    # rows are independent: a padded batch gives each row what a full batch gives it
    n = batch // 2 + 1  # padded up to the next step
    part = models.predict(flux[:n])
    full = models.predict(flux[:batch])
    assert len(part["teff"]) == n and part["ood_distance"].shape == (n,)
    for k in ("p_binary", "teff", "logg", "feh", "vsini", "ood_distance"):
        np.testing.assert_allclose(part[k], full[k][:n], rtol=1e-4, atol=1e-3)


def test_warm_up_predicts_every_shape_a_partition_can_use(model_dir):
    from sb2dask.infer.run import _warm_rss

    models = get_model_set(_config(model_dir))
    peak = []
    seen = _batch_sizes_seen(models, lambda: peak.append(_warm_rss(_config(model_dir))))
    step = models.batch_size // PAD_STEPS
    assert set(seen) == {k * step for k in range(1, PAD_STEPS + 1)}
    assert peak[0] >= _rss() - 20 * MB  # a peak over the warm-up, not less than what is left


@linux
def test_prediction_leaves_no_activation_heap_resident(model_dir):
    models = get_model_set(_config(model_dir))
    flux = np.ones((models.batch_size + 3, models.wave.size), np.float32)
    models.predict(flux)  # first-call costs (primitives, caches) out of the way
    release_free_memory()
    before = _rss()
    reset_peak_rss()
    models.predict(flux)
    peak, after = peak_rss(), _rss()
    assert peak - before > 30 * MB  # the forward passes did need memory ...
    assert after - before < 0.25 * (peak - before), (before, peak, after)  # ... and gave it back

