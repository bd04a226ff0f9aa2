"""Training leaves out photos whose byte-identical twin carries another label."""

from __future__ import annotations

import hashlib

import numpy as np

from scenecam_edge.dataset import label_conflicts, list_folder
from scenecam_edge.images import load_still

from .conftest import SHARED_DATA, needs_data


def test_twins_under_two_labels_are_found_and_same_label_twins_are_not():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    images[3] = images[0]  # labels 0 and 2: a conflict
    images[5] = images[1]  # both label 1: a plain duplicate
    labels = np.array([0, 1, 1, 2, 0, 1])
    assert label_conflicts(images, labels).tolist() == [0, 3]
    assert label_conflicts(images[:3], labels[:3]).size == 0


@needs_data
def test_the_scene_datas_five_conflicting_pairs():
    """The data README lists five byte-identical pairs with different labels; decoded pixels
    find the same ten files (and not the two same-class pairs it also lists)."""
    root = SHARED_DATA / "intel-scenes" / "train"
    names, items = list_folder(root)
    by_bytes: dict[str, list[int]] = {}
    for i, (path, _) in enumerate(items):
        by_bytes.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(i)
    twins = sorted(i for group in by_bytes.values() if len(group) > 1 for i in group)
    # decoding only the twins keeps the test fast; label_conflicts sees every copy of each
    images = np.stack([load_still(items[i][0], 32, 32) for i in twins])
    labels = np.array([items[i][1] for i in twins])
    found = {
        f"{names[items[twins[j]][1]]} {items[twins[j]][0].stem}"
        for j in label_conflicts(images, labels)
    }
    assert found == {
        "mountain 7037",
        "sea 6337",
        "mountain 7654",
        "glacier 10234",
        "buildings 4551",
        "street 1495",
        "buildings 9769",
        "street 7293",
        "buildings 5069",
        "street 2764",
    }
