"""Metrics against hand-computed values and scikit-learn's AP."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from metrics import average_precision, compute_metrics


def test_ap_hand_values():
    # class 0: ranks 1 (pos), 2 (neg), 3 (pos) -> AP = (1/1 + 2/3) / 2
    # class 1: no positive -> AP 0 by the reference convention
    preds = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    targets = np.array([[1, 0], [0, 0], [1, 0]])
    np.testing.assert_allclose(average_precision(preds, targets), [(1 + 2 / 3) / 2, 0.0])
    m = compute_metrics(preds, targets)
    assert m["map"] == pytest.approx(100 * (1 + 2 / 3) / 4)
    assert m["num_empty_classes"] == 1


def test_ties_form_one_threshold():
    # all three tied: one threshold with precision 2/3 for both positives
    preds = np.array([[0.5], [0.5], [0.5]])
    targets = np.array([[1], [0], [1]])
    assert average_precision(preds, targets)[0] == pytest.approx(2 / 3)


def test_matches_sklearn_with_ties():
    rng = np.random.RandomState(0)
    preds = np.round(rng.rand(300, 6), 2)  # many ties
    targets = rng.rand(300, 6) < 0.3
    expected = [average_precision_score(targets[:, c], preds[:, c]) for c in range(6)]
    np.testing.assert_allclose(average_precision(preds, targets), expected, rtol=1e-12)


def test_top_k_precision_recall_and_f1_hand_values():
    preds = np.array([
        [0.9, 0.8, 0.1, 0.2, 0.3, 0.05],
        [0.1, 0.2, 0.3, 0.4, 0.6, 0.7],
    ])
    targets = np.array([
        [1, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 1],
    ])
    m = compute_metrics(preds, targets, threshold=0.5)
    assert m["prec_at_1"] == pytest.approx(100.0)  # both top-1 are positives
    assert m["rec_at_1"] == pytest.approx(100 * (1 / 2 + 1) / 2)
    assert m["top_1"] == pytest.approx(100.0)
    # top-3 of image 0: classes 0,1,4 -> 1 hit; image 1: classes 5,4,3 -> 1 hit
    assert m["prec_at_3"] == pytest.approx(100 * (1 / 3 + 1 / 3) / 2)
    assert m["rec_at_3"] == pytest.approx(100 * (1 / 2 + 1) / 2)
    # top-5 of image 0 holds class 2 as well
    assert m["rec_at_5"] == pytest.approx(100.0)
    # predictions >= 0.5: image 0 -> {0, 1}, image 1 -> {4, 5}
    # per class precision: c0 1, c1 0, c4 0, c5 1, others 0 (nothing predicted) -> mean 2/6
    # per class recall: c0 1, c2 0, c5 1 (classes without positives count 0) -> mean 2/6
    assert m["cf1"] == pytest.approx(100 * 2 / 6)
    # overall: tp 2, predicted 4, positives 3
    p, r = 2 / 4, 2 / 3
    assert m["of1"] == pytest.approx(100 * 2 * p * r / (p + r))


def test_shape_mismatch_refused():
    with pytest.raises(ValueError):
        compute_metrics(np.zeros((3, 2)), np.zeros((3, 3)))


def test_recall_at_k_averages_over_every_image_as_the_references():
    """An image without a positive counts 0 in rec_at_k (the references' mean over all images)."""
    preds = np.array([[0.9, 0.1, 0.2], [0.3, 0.8, 0.1], [0.5, 0.4, 0.3]])
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    m = compute_metrics(preds, targets)
    assert m["rec_at_1"] == pytest.approx(100 * (1 + 1 / 2 + 0) / 3)
    assert m["rec_at_3"] == pytest.approx(100 * (1 + 1 + 0) / 3)


def test_top_k_where_top_1_misses_and_top_3_or_5_hits():
    """Image 0's positive is its 2nd score, image 1's its 4th, image 2 has none in its top 5 (7 classes)."""
    preds = np.array([
        [0.9, 0.8, 0.1, 0.2, 0.3, 0.05, 0.01],
        [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],
    ])
    targets = np.array([
        [0, 1, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 0, 1],
        [0, 0, 0, 0, 0, 0, 1],
    ])
    m = compute_metrics(preds, targets)
    assert (m["top_1"], m["prec_at_1"], m["rec_at_1"]) == (0.0, 0.0, 0.0)
    assert m["top_3"] == pytest.approx(100 / 3)  # image 0
    assert m["prec_at_3"] == pytest.approx(100 * (1 / 3) / 3)
    assert m["rec_at_3"] == pytest.approx(100 * 1 / 3)
    assert m["top_5"] == pytest.approx(200 / 3)  # images 0 and 1
    assert m["prec_at_5"] == pytest.approx(100 * (1 / 5 + 1 / 5) / 3)
    assert m["rec_at_5"] == pytest.approx(100 * (1 + 1 / 2) / 3)


def test_per_image_metrics_match_a_plain_sort_on_random_scores():
    """prec/rec/top at 1, 3, 5 against the definitions written with a full sort (COCO's 80 classes: the
    partial sort must bring every one of the top 5 to the front)."""
    rng = np.random.RandomState(0)
    preds, targets = rng.rand(300, 80), rng.rand(300, 80) < 0.05
    m = compute_metrics(preds, targets)
    ranked = np.take_along_axis(targets, np.argsort(-preds, axis=1), axis=1)
    for k in (1, 3, 5):
        found = ranked[:, :k].sum(1)
        recall = np.where(targets.sum(1) > 0, found / np.maximum(targets.sum(1), 1), 0.0)
        assert m[f"prec_at_{k}"] == pytest.approx(100 * (found / k).mean(), abs=1e-9)
        assert m[f"rec_at_{k}"] == pytest.approx(100 * recall.mean(), abs=1e-9)
        assert m[f"top_{k}"] == pytest.approx(100 * (found > 0).mean(), abs=1e-9)


def test_edge_cases_one_positive_an_empty_class_a_score_at_the_threshold():
    preds = np.array([[0.5, 0.2, 0.1], [0.4, 0.1, 0.2]])
    targets = np.array([[1, 0, 0], [0, 1, 0]])  # classes 0 and 1: one positive each; class 2: none
    m = compute_metrics(preds, targets)  # the default threshold is 0.5, and 0.5 counts as predicted
    assert m["num_empty_classes"] == 1
    # AP: class 0's positive ranks first (1), class 1's second (1/2), class 2 scores 0
    assert m["map"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    # one prediction (0.5 on class 0), a hit: per class precision (1, 0, 0), recall (1, 0, 0)
    assert m["cf1"] == pytest.approx(100 * 1 / 3)
    assert m["of1"] == pytest.approx(100 * 2 * 1 * 0.5 / 1.5)  # precision 1/1, recall 1/2
    nothing = compute_metrics(preds, targets, threshold=0.9)  # no prediction at all: F1 0, not NaN
    assert (nothing["cf1"], nothing["of1"]) == (0.0, 0.0)
    lone = compute_metrics(np.array([[0.9, 0.1]]), np.array([[1, 0]]), threshold=0.5)  # one positive overall
    assert lone["of1"] == pytest.approx(100.0)
