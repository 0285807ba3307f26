"""The observed-label sampler and the train/val split against the references' protocol (Cole et al. 2021)."""
import io

import numpy as np
import pytest

from datasets import generate_split, load_splits, training_targets
from errors import UserError
from fileio import save_npy_atomic
from preproc.generate_observed_labels import (generate_observed_labels, label_protocol, observe_known_ratio,
                                              observe_uniform)
from preproc.generate_observed_labels import main as generate_main


def reference_procedure(labels, num_pos, num_neg, seed):
    """The references' sampler written out literally: per row, shuffle positives, keep num_pos; then the same for negatives."""
    rng = np.random.RandomState(seed)
    obs = np.zeros_like(labels)
    for i in range(labels.shape[0]):
        pos = np.nonzero(labels[i] == 1.0)[0]
        rng.shuffle(pos)
        obs[i, pos[:num_pos]] = 1.0
        neg = np.nonzero(labels[i] == 0.0)[0]
        rng.shuffle(neg)
        obs[i, neg[:num_neg]] = -1.0
    return obs


def test_sampler_follows_the_procedure():
    labels = (np.random.RandomState(3).rand(200, 12) < 0.3).astype(np.float64)
    labels[0] = 0  # an image without positives keeps no observed label
    for num_pos, num_neg in [(1, 0), (2, 3)]:
        got = observe_uniform(labels, num_pos, num_neg, np.random.RandomState(1200))
        np.testing.assert_array_equal(got, reference_procedure(labels, num_pos, num_neg, 1200))
        assert got.dtype == labels.dtype


def test_single_positive_is_a_true_positive():
    labels = (np.random.RandomState(4).rand(100, 8) < 0.4).astype(np.float64)
    obs = observe_uniform(labels, 1, 0, np.random.RandomState(1200))
    has_pos = labels.sum(1) > 0
    assert ((obs == 1).sum(1) == has_pos).all()
    assert (labels[obs == 1] == 1).all() and not (obs == -1).any()


def test_negatives_are_shuffled_even_when_none_is_kept():
    # The negative shuffle advances the generator: a sampler that skips it keeps other positives.
    labels = (np.random.RandomState(7).rand(50, 6) < 0.5).astype(np.float64)
    rng = np.random.RandomState(1200)
    skipping = np.zeros_like(labels)
    for i, row in enumerate(labels):
        pos = np.nonzero(row == 1)[0]
        rng.shuffle(pos)
        skipping[i, pos[:1]] = 1
    obs = observe_uniform(labels, 1, 0, np.random.RandomState(1200))
    assert (obs != skipping).any()
    np.testing.assert_array_equal(obs, reference_procedure(labels, 1, 0, 1200))


def test_files_are_byte_identical_to_the_procedure(tmp_path):
    train = (np.random.RandomState(5).rand(50, 7) < 0.3).astype(np.float64)
    val = (np.random.RandomState(6).rand(30, 7) < 0.3).astype(np.float64)
    np.save(tmp_path / "formatted_train_labels.npy", train)
    np.save(tmp_path / "formatted_val_labels.npy", val)
    generate_observed_labels(tmp_path, seed=1200)
    for split, labels in (("train", train), ("val", val)):
        expected = io.BytesIO()
        np.save(expected, reference_procedure(labels, 1, 0, 1200))  # a fresh generator per split
        assert (tmp_path / f"formatted_{split}_labels_obs.npy").read_bytes() == expected.getvalue()


def test_sampler_refuses_bad_labels(tmp_path):
    np.save(tmp_path / "formatted_train_labels.npy", np.array([[0.0, 2.0]]))
    np.save(tmp_path / "formatted_val_labels.npy", np.array([[0.0, 1.0]]))
    with pytest.raises(UserError, match="0/1"):
        generate_observed_labels(tmp_path)
    assert not (tmp_path / "formatted_val_labels_obs.npy").exists()


def test_split_specification():
    train, val = generate_split(5717, 0.2, 1200)  # VOC: 5,717 -> 4,574 / 1,143
    assert (len(train), len(val)) == (4574, 1143)
    perm = np.random.RandomState(1200).permutation(5717)
    np.testing.assert_array_equal(train, np.sort(perm[:4574]))
    np.testing.assert_array_equal(val, np.sort(perm[-1143:]))
    assert len(np.intersect1d(train, val)) == 0
    assert [len(s) for s in generate_split(82081, 0.2, 1200)] == [65665, 16416]  # COCO


def test_split_refuses_empty_val():
    with pytest.raises(UserError):
        generate_split(2, 0.1, 1200)


def test_label_views():
    obs = np.array([[1, 0, 0, 0]], dtype=float)
    full = np.array([[1, 1, 0, 0]], dtype=float)
    np.testing.assert_array_equal(training_targets(obs, full, "observed"), obs)
    np.testing.assert_array_equal(training_targets(obs, full, "full"), [[1, 1, -1, -1]])
    np.testing.assert_array_equal(training_targets(obs, full, "true_negatives"), [[1, 0, -1, -1]])


def test_known_ratio_mask_is_the_authors_draw():
    """PU-MLC's protocol: np.random.seed(0); np.random.rand(N, C) < R, over positives and negatives alike."""
    labels = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 0, 0]], dtype=np.float32)
    obs = observe_known_ratio(labels, 0.5, np.random.RandomState(0))
    # RandomState(0).rand(3, 4) = .549 .715 .603 .545 / .424 .646 .438 .892 / .964 .383 .792 .529
    expected = np.array([[0, 0, 0, 0], [-1, 0, -1, 0], [0, 1, 0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(obs, expected)
    assert obs.dtype == labels.dtype
    saved = np.random.get_state()
    big = (np.random.RandomState(9).rand(300, 20) < 0.3).astype(np.float64)
    got = observe_known_ratio(big, 0.1, np.random.RandomState(0))
    np.random.seed(0)  # the authors' global reseed, done here only to build the expected mask
    keep = np.random.rand(300, 20) < 0.1
    np.testing.assert_array_equal(got != 0, keep)
    np.testing.assert_array_equal(got[keep], np.where(big[keep] == 1, 1.0, -1.0))
    assert 0.08 < keep.mean() < 0.12
    np.random.set_state(saved)


def test_known_ratio_files_mask_train_only_and_record_the_protocol(tmp_path):
    train = (np.random.RandomState(5).rand(50, 7) < 0.3).astype(np.float64)
    val = (np.random.RandomState(6).rand(30, 7) < 0.3).astype(np.float64)
    np.save(tmp_path / "formatted_train_labels.npy", train)
    np.save(tmp_path / "formatted_val_labels.npy", val)
    before = np.random.get_state()[1].copy()
    generate_observed_labels(tmp_path, seed=0, known_ratio=0.2)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # NumPy's global generator untouched
    np.testing.assert_array_equal(np.load(tmp_path / "formatted_train_labels_obs.npy"),
                                  observe_known_ratio(train, 0.2, np.random.RandomState(0)))
    np.testing.assert_array_equal(np.load(tmp_path / "formatted_val_labels_obs.npy"), np.where(val == 1, 1.0, -1.0))
    assert label_protocol(tmp_path) == {"protocol": "known_ratio", "known_ratio": 0.2, "seed": 0}
    generate_observed_labels(tmp_path, seed=1200)  # back to single-positive: the record follows
    assert label_protocol(tmp_path)["protocol"] == "single_positive"


@pytest.mark.parametrize("kwargs, match", [({"known_ratio": 0.0}, "known-ratio"), ({"known_ratio": 1.5}, "known-ratio"),
                                           ({"known_ratio": 0.1, "num_pos": 2}, "drop --num-pos")])
def test_known_ratio_refuses_bad_values(tmp_path, kwargs, match):
    with pytest.raises(UserError, match=match):
        generate_observed_labels(tmp_path, **kwargs)


def test_known_ratio_command_line(tmp_path):
    np.save(tmp_path / "formatted_train_labels.npy", np.eye(4))
    np.save(tmp_path / "formatted_val_labels.npy", np.eye(4))
    assert generate_main(["--dataset", "digits", "--data-dir", str(tmp_path), "--known-ratio", "0.5", "--seed", "0"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "formatted_train_labels_obs.npy"),
                                  observe_known_ratio(np.eye(4), 0.5, np.random.RandomState(0)))
    assert generate_main(["--dataset", "digits", "--data-dir", str(tmp_path), "--known-ratio", "2"]) == 2


def test_a_seed_outside_numpys_range_is_one_line(tmp_path, capsys):
    from preproc.generate_observed_labels import main as generate

    assert generate(["--dataset", "pascal", "--data-dir", str(tmp_path), "--seed", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--seed must be in [0, 2**32), got -1" in err and "Traceback" not in err


def _formatted_folder(root, n_train=25, n_test=4, seed=0):
    """A formatted dataset of n_train official train rows, named by their row numbers; one observed positive
    and one observed negative per row."""
    rng = np.random.RandomState(seed)
    for split, n in (("train", n_train), ("val", n_test)):
        full = (rng.rand(n, 5) < 0.4).astype(np.float32)
        full[np.arange(n), rng.randint(0, 5, n)] = 1.0
        save_npy_atomic(root / f"formatted_{split}_images.npy", np.array([f"{split}/{i:03d}.png" for i in range(n)]))
        save_npy_atomic(root / f"formatted_{split}_labels.npy", full)
        save_npy_atomic(root / f"formatted_{split}_labels_obs.npy", observe_uniform(full, 1, 1, np.random.RandomState(1200)))
    return root


def _rows(split):
    return [int(path.rsplit("/", 1)[1][:3]) for path in split.images]


def test_load_splits_takes_the_references_rows(tmp_path):
    """train / val are the rows of RandomState(1200).permutation(N), the last round(0.2 N) to val, each sorted."""
    splits = load_splits(_formatted_folder(tmp_path), "mine", tmp_path, check_images=False)
    perm = np.random.RandomState(1200).permutation(25)
    assert _rows(splits.train) == sorted(perm[:20].tolist()) and _rows(splits.val) == sorted(perm[20:].tolist())
    full = np.load(tmp_path / "formatted_train_labels.npy")
    np.testing.assert_array_equal(splits.val.labels, full[sorted(perm[20:])])  # val is scored on its full labels
    np.testing.assert_array_equal(splits.test.labels, np.load(tmp_path / "formatted_val_labels.npy"))


@pytest.mark.parametrize("view", ["observed", "true_negatives", "full"])
def test_load_splits_trains_on_the_label_view_of_the_loss(tmp_path, view):
    splits = load_splits(_formatted_folder(tmp_path), "mine", tmp_path, label_view=view, check_images=False)
    rows = _rows(splits.train)
    obs, full = np.load(tmp_path / "formatted_train_labels_obs.npy"), np.load(tmp_path / "formatted_train_labels.npy")
    expected = {"observed": obs, "true_negatives": np.where((obs == 0) & (full == 0), -1, obs), "full": 2 * full - 1}[view]
    np.testing.assert_array_equal(splits.train.labels, expected[rows])
    # one observed negative per row; the oracle views add the true negatives
    assert ((splits.train.labels == -1).sum(1) > 1).any() == (view != "observed")


def test_observed_val_variant_scores_val_on_its_observed_positives(tmp_path):
    splits = load_splits(_formatted_folder(tmp_path), "mine", tmp_path, val_variant="observed", check_images=False)
    obs = np.load(tmp_path / "formatted_train_labels_obs.npy")
    np.testing.assert_array_equal(splits.val.labels, obs[_rows(splits.val)] == 1)
