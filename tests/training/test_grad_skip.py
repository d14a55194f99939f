"""--skip-grad-norm-above: a step whose gradient norm exceeds the limit changes nothing and is
counted as skipped; a limit above every norm gives the plain run's numbers."""
import pytest

from dist_utils import run_distributed
from training.common import TINY_MODEL, TRAIN, train

RUN = TINY_MODEL + TRAIN + ["--loss-preset", "sft", "--train-iters", "2"]


def three_runs(argv):
    """Rank entry point: the plain run, then with a limit above and one below its norms."""
    plain = train(argv)
    norms = [m["grad_norm"] for m in plain]
    return (plain, train(argv + ["--skip-grad-norm-above", str(max(norms) * 2)]),
            train(argv + ["--skip-grad-norm-above", str(min(norms) / 2)]))


def test_skip_grad_norm_above():
    (plain, high, low), = run_distributed(three_runs, 1, RUN)
    norms = [m["grad_norm"] for m in plain]
    assert [m["lm loss"] for m in high] == pytest.approx([m["lm loss"] for m in plain], abs=1e-6)
    assert all(m["skipped"] == 0 and m["skipped grad norm"] == 0 for m in high)
    # below the first norm: every step is skipped, so the weights never move and every step
    # sees the same loss (the data differs per step, so compare step 1 with the plain run)
    assert all(m["skipped"] == 1 and m["skipped grad norm"] == 1 for m in low)
    assert low[0]["lm loss"] == pytest.approx(plain[0]["lm loss"], abs=1e-6)
    assert low[0]["grad_norm"] == pytest.approx(norms[0], rel=1e-5)
    assert low[1]["grad_norm"] != pytest.approx(norms[1], rel=1e-3)  # plain moved, low did not
