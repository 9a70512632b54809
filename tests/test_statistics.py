"""cardio.evaluation.statistics against scikit-learn, MLstatkit, statsmodels and a bootstrap, on fixed data."""
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from cardio.evaluation import statistics as S


def _scores(seed=0, n_pos=60, n_neg=90, shift=1.0, ties=False):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    scores = np.r_[rng.normal(shift, 1, n_pos), rng.normal(0, 1, n_neg)]
    if ties:
        scores = np.round(scores, 1)     # many ties: midranks must count them one half
    return labels, scores


@pytest.mark.parametrize("ties", [False, True])
def test_auc_matches_sklearn_and_the_variance_matches_mlstatkit(ties):
    from MLstatkit import Delong_test

    labels, scores = _scores(ties=ties)
    other = _scores(seed=1, ties=ties)[1]
    auc, variance = S.delong_auc_variance(labels, scores)
    assert auc == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    # MLstatkit's per-model CI is AUC +- z * sqrt(its DeLong variance).
    *_, ci_a, _, auc_a, _, info = Delong_test(labels, scores, other, return_ci=True, return_auc=True)
    assert info["method"] == "delong" and auc_a == pytest.approx(auc, abs=1e-12)
    ours = S.auc_with_ci(labels, scores)
    np.testing.assert_allclose(ours["ci"], ci_a, atol=1e-12)
    assert ours["se"] == pytest.approx(math.sqrt(variance))


def test_delong_variance_agrees_with_a_bootstrap():
    """An independent estimate: the bootstrap variance of the AUC (stratified resampling)."""
    labels, scores = _scores(seed=3, n_pos=80, n_neg=120)
    _, variance = S.delong_auc_variance(labels, scores)
    rng = np.random.default_rng(0)
    pos, neg = scores[labels == 1], scores[labels == 0]
    boots = [skm.roc_auc_score(np.r_[np.ones(pos.size), np.zeros(neg.size)],
                               np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
             for _ in range(1500)]
    assert np.var(boots) == pytest.approx(variance, rel=0.15)


def test_perfect_separation_has_zero_variance_and_a_degenerate_ci():
    labels = np.array([0, 0, 0, 1, 1])
    result = S.auc_with_ci(labels, np.array([0.1, 0.2, 0.3, 0.8, 0.9]))
    assert result["auc"] == 1.0 and result["ci"] == [1.0, 1.0]
    assert S.auc_with_ci(np.array([1, 1]), np.array([0.2, 0.4]))["auc"] is None


def test_paired_delong_equals_an_independent_covariance_computation():
    """z from MLstatkit vs z from the structural components computed here independently
    (pairwise covariance of the per-case components, DeLong et al. 1988, eq. for the contrast)."""
    labels, a = _scores(seed=4)
    b = a + np.random.default_rng(5).normal(0, 0.8, a.size)   # correlated, somewhat worse
    result = S.delong_paired(labels, a, b)

    pos, neg = labels == 1, labels == 0
    def components(s):
        diff = s[pos][:, None] - s[neg][None, :]
        psi = (diff > 0) + 0.5 * (diff == 0)
        return psi.mean(axis=1), psi.mean(axis=0), psi.mean()
    v10a, v01a, auc_a = components(a)
    v10b, v01b, auc_b = components(b)
    m, n = pos.sum(), neg.sum()
    var = (np.var(v10a, ddof=1) + np.var(v10b, ddof=1) - 2 * np.cov(v10a, v10b)[0, 1]) / m + \
          (np.var(v01a, ddof=1) + np.var(v01b, ddof=1) - 2 * np.cov(v01a, v01b)[0, 1]) / n
    z = (auc_b - auc_a) / math.sqrt(var)
    assert result["method"] == "delong"
    assert result["auc_a"] == pytest.approx(auc_a) and result["auc_b"] == pytest.approx(auc_b)
    assert result["z"] == pytest.approx(z, rel=1e-9)
    assert result["p"] == pytest.approx(2 * (1 - __import__("scipy").stats.norm.cdf(abs(z))))
    assert result["p"] < 0.05


def test_identical_or_identically_ranked_models_do_not_differ():
    """MLstatkit's bootstrap fallback would call these p = 0; they are p = 1."""
    labels, a = _scores(seed=6)
    assert S.delong_paired(labels, a, a.copy())["p"] == 1.0
    assert S.delong_paired(labels, a, 1 / (1 + np.exp(-a)))["p"] == 1.0


def test_unpaired_delong_flags_a_worse_group_and_not_a_similar_one():
    labels_1, good = _scores(seed=7, shift=2.0)
    labels_2, bad = _scores(seed=8, shift=0.3)
    worse = S.delong_unpaired(labels_2, bad, labels_1, good)
    assert worse["z"] < 0 and worse["p"] < 0.001
    auc_1, var_1 = S.delong_auc_variance(labels_2, bad)
    auc_2, var_2 = S.delong_auc_variance(labels_1, good)
    assert worse["z"] == pytest.approx((auc_1 - auc_2) / math.sqrt(var_1 + var_2))
    labels_3, similar = _scores(seed=9, shift=2.0)
    assert S.delong_unpaired(labels_3, similar, labels_1, good)["p"] > 0.05


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.71])
def test_threshold_metrics_match_sklearn(threshold):
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 2, 200)
    scores = np.clip(labels * 0.3 + rng.uniform(0, 0.7, 200), 0, 1)
    scores[:5] = threshold          # the serving rule is score >= threshold
    got = S.threshold_metrics(labels, scores, threshold)
    predicted = (scores >= threshold).astype(int)
    assert got["sensitivity"] == pytest.approx(skm.recall_score(labels, predicted))
    assert got["specificity"] == pytest.approx(skm.recall_score(labels, predicted, pos_label=0))
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    assert got["precision"] == pytest.approx(skm.precision_score(labels, predicted))
    assert got["npv"] == pytest.approx(skm.precision_score(labels, predicted, pos_label=0))
    assert got["f1"] == pytest.approx(skm.f1_score(labels, predicted))
    low, high = got["sensitivity_ci"]
    assert low <= got["sensitivity"] <= high and low < high


def test_wilson_interval_of_a_published_example():
    # Newcombe (1998), Stat Med 17:857, Table I, 81/263: Wilson 0.2553 to 0.3662.
    low, high = S.wilson_ci(81, 263)
    assert low == pytest.approx(0.2553, abs=5e-5) and high == pytest.approx(0.3662, abs=5e-5)
    assert S.wilson_ci(0, 0) == [None, None]


def test_predictive_values_follow_bayes():
    got = S.predictive_values(0.9, 0.8, 0.1)
    assert got["ppv"] == pytest.approx(0.09 / (0.09 + 0.18))
    assert got["npv"] == pytest.approx(0.72 / (0.72 + 0.01))
    # At the balanced test set's 50% prevalence PPV is just the precision there.
    assert S.predictive_values(0.9, 0.8, 0.5)["ppv"] == pytest.approx(0.9 / 1.1)
    with pytest.raises(ValueError, match="prevalence"):
        S.predictive_values(0.9, 0.8, 1.0)


def test_holm_matches_the_step_down_rule():
    # Holm (1979): sorted p * (k - rank), cumulative max, capped at 1.
    assert S.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert S.holm([]) == []


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        S.delong_auc_variance([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="both classes"):
        S.delong_auc_variance([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="3 labels but 2 scores"):
        S.threshold_metrics([0, 1, 1], [0.1, 0.2], 0.5)


def test_hanley_mcneil_worked_example():
    """Hanley & McNeil (1982), Radiology 143:29, Table 1: 58 normal and 51 abnormal CT scans
    rated 1-5; published AUC 0.893 and SE 0.032 (their exponential approximation, so DeLong's
    empirical SE lies near it, not on it)."""
    normal, abnormal = [33, 6, 6, 11, 2], [3, 2, 2, 11, 33]
    labels = np.r_[np.zeros(sum(normal)), np.ones(sum(abnormal))].astype(int)
    ratings = np.r_[np.repeat(np.arange(1, 6), normal), np.repeat(np.arange(1, 6), abnormal)]
    result = S.auc_with_ci(labels, ratings)
    assert round(result["auc"], 3) == 0.893
    assert result["se"] == pytest.approx(0.032, abs=0.002)
