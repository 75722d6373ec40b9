"""Cumulative metrics: accumulate / aggregate / reset, and the torch.distributed path (2 gloo processes)."""

import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vmunet.metrics import CumulativeConfusion, CumulativeMetric, compute_per_class, isic_protocol


def _batches(seed=0, n_batches=4, batch=2, shape=(12, 14)):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        label = rng.integers(0, 3, size=(batch, *shape))
        pred = np.where(rng.random(label.shape) < 0.8, label, rng.integers(0, 3, size=label.shape))
        pred[0][pred[0] == 2] = 0  # class 2 missed in one case per batch
        out.append((torch.from_numpy(pred), torch.from_numpy(label)))
    return out


def _reference(batches, classes, metrics):
    per = [compute_per_class(p, lab, classes, metrics) for pb, lb in batches for p, lab in zip(pb, lb)]
    return {m: np.stack([r[m] for r in per]) for m in metrics}


def test_cumulative_metric_matches_per_case_scores():
    batches = _batches()
    metric = CumulativeMetric(classes=[1, 2], metrics=("dice", "hd95"))
    for p, lab in batches:
        out = metric(p, lab)
        assert out["dice"].shape == (2, 2)
    ref = _reference(batches, [1, 2], ("dice", "hd95"))
    buf = metric.get_buffer()
    np.testing.assert_allclose(buf["dice"], ref["dice"])
    agg = metric.aggregate()
    np.testing.assert_allclose(agg["dice"]["per_class"], np.nanmean(ref["dice"], axis=0))
    np.testing.assert_array_equal(agg["hd95"]["nan_count"], np.isnan(ref["hd95"]).sum(axis=0))
    assert agg["hd95"]["nan_count"][1] == 4  # the missed class-2 cases are counted, not averaged
    assert agg["dice"]["mean"] == pytest.approx(np.nanmean(ref["dice"], axis=0).mean())
    metric.reset()
    assert metric.get_buffer()["dice"].shape == (0, 2)
    assert math.isnan(metric.aggregate()["dice"]["mean"])


def test_cumulative_metric_onehot_input():
    p, lab = _batches(n_batches=1)[0]
    oh = lambda x: torch.nn.functional.one_hot(x, 3).permute(0, 3, 1, 2)  # noqa: E731
    metric = CumulativeMetric(classes=[1, 2], metrics=("dice",), onehot=True)
    metric.update(oh(p), oh(lab))
    np.testing.assert_allclose(metric.get_buffer()["dice"], _reference([(p, lab)], [1, 2], ("dice",))["dice"])


def test_cumulative_confusion_equals_isic_protocol():
    rng = np.random.default_rng(1)
    probs = rng.random((3, 2, 8, 8)).astype(np.float32)
    labels = (rng.random((3, 2, 8, 8)) < 0.3).astype(np.uint8)
    metric = CumulativeConfusion()
    for p, lab in zip(probs, labels):
        metric.update(torch.from_numpy(p), torch.from_numpy(lab))
    ref = isic_protocol(list(probs.reshape(-1, 8, 8)), list(labels.reshape(-1, 8, 8)))
    assert metric.aggregate() == pytest.approx(ref.summary["pooled"])
    metric.reset()
    assert metric.counts() == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="threshold"):
        CumulativeConfusion(threshold=2.0)


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        batches = _batches()
        seg = CumulativeMetric(classes=[1, 2], metrics=("dice", "hd95"))
        conf = CumulativeConfusion()
        for i, (p, lab) in enumerate(batches):
            if i % world == rank:  # each rank sees its share of the batches
                seg.update(p, lab)
                conf.update((p == 1).float(), (lab == 1).float())
        agg = seg.aggregate()
        counts = conf.counts()
        np.savez(
            os.path.join(out_dir, f"rank{rank}.npz"),
            dice=agg["dice"]["per_class"],
            hd95=agg["hd95"]["per_class"],
            nan=agg["hd95"]["nan_count"],
            n=seg.get_buffer()["dice"].shape[0],
            counts=np.array(counts),
        )
    finally:
        dist.destroy_process_group()


def test_distributed_two_gloo_processes(tmp_path):
    # fork: the children inherit the imported modules (a spawned child re-imports torch: ~10 s each)
    mp.start_processes(
        _worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    batches = _batches()
    single = CumulativeMetric(classes=[1, 2], metrics=("dice", "hd95"))
    conf = CumulativeConfusion()
    for p, lab in batches:
        single.update(p, lab)
        conf.update((p == 1).float(), (lab == 1).float())
    agg = single.aggregate()
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}.npz")
        assert int(got["n"]) == 8  # every rank sees all 8 cases after the gather
        np.testing.assert_allclose(got["dice"], agg["dice"]["per_class"])
        np.testing.assert_allclose(got["hd95"], agg["hd95"]["per_class"])
        np.testing.assert_array_equal(got["nan"], agg["hd95"]["nan_count"])
        assert tuple(got["counts"]) == conf.counts()
