"""The bertship runtime inside Ray Data: one model per actor (runtimes/ray_data.Embed), on a local Ray instance with two
workers; every row comes back, equal to a single-process `embed`, with Ray's progress shown."""

from __future__ import annotations

import numpy as np
import pytest

from bertship.runtimes import UsageError, load
from bertship.runtimes.ray_data import Embed

ray = pytest.importorskip("ray", reason="the Ray Data test needs pip install 'bertship[serve]'")

pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.slow]  # module fixtures on one xdist worker


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs (2 workers), shut down after the module."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def test_map_batches_embeds_every_row_as_embed_does(task_artifact, local_ray, capfd):
    art = task_artifact("sentence-embedding")
    words = "the a model served text quarterly results bright ünïcode café why no".split()
    texts = [f"{i} " + " ".join(words[(i + k) % len(words)] for k in range(i % 29)) for i in range(5000)]
    ray.data.DataContext.get_current().enable_progress_bars = True
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    ds = ds.map_batches(Embed, fn_constructor_args=(str(art),), fn_constructor_kwargs={"threads": 1},
                        compute=ray.data.ActorPoolStrategy(size=2), batch_size=500, num_cpus=1)
    rows = ds.take_all()
    ids = np.array([r["id"] for r in rows])
    assert len(rows) == len(texts) and sorted(ids.tolist()) == list(range(len(texts)))
    assert all(r["text"] == texts[r["id"]] for r in rows)
    served = np.stack([r["embedding"] for r in rows])
    expected = load(art, threads=1).embed(texts)[ids]
    # Each Ray batch is sorted and padded on its own: equal to one embed() call up to float summation order.
    np.testing.assert_allclose(served, expected, atol=2e-6, rtol=0)
    logged = capfd.readouterr().err
    assert "MapBatches(Embed)" in logged  # Ray Data's progress for the stage


def test_a_missing_column_names_the_fix(task_artifact):
    embed = Embed(task_artifact("sentence-embedding"))
    with pytest.raises(UsageError, match="no column 'text' .* fn_constructor_kwargs"):
        embed({"sentence": np.array(["a"])})
    out = embed({"text": np.array(["a", "bb"], dtype=object), "id": np.array([1, 2])})
    assert out["embedding"].shape[0] == 2 and out["id"].tolist() == [1, 2]
