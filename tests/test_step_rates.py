"""The choice of a speculating engine's next kind of step (engine/step_rates.py), on a clock of the
test's own: which arms are measured and in what order, when the engine stops looking for proposals,
and how often the slower arms are tried again."""

from vllm_mlx.engine.step_rates import EXPLORE_EVERY, EXPLORE_STEPS, StepRates


class Steps:
    """Steps of a batch of ``rows`` that take a given time per arm (tokens per step: ``rows`` for a
    pipelined step, more for a verify step)."""

    def __init__(self, seconds: dict[int, float], rows: int = 16):
        self.now, self.seconds, self.rows = 0.0, seconds, rows
        self.rates = StepRates(4, clock=lambda: self.now)

    def run(self, arm: int, count: int = 1) -> None:
        for _ in range(count):
            self.rates.launched = arm
            self.now += self.seconds[arm]
            self.rates.observe(arm, self.rows * (2 if arm else 1), self.rows)

    def decide(self) -> int:
        """One decision with proposals at hand, and the steps it starts (a try lasts EXPLORE_STEPS)."""
        if self.rates.settled_on_plain(self.rows):
            self.run(0)
            return 0
        arm = self.rates.choose(self.rows)
        self.run(arm)
        return arm


def test_verify_arms_are_measured_largest_first_and_one_between_slower_arms_is_skipped():
    steps = Steps({0: 0.005, 1: 0.02, 2: 0.02, 4: 0.03})  # verify steps never pay here
    steps.run(0, 3)
    tried = [steps.decide() for _ in range(2 * EXPLORE_STEPS)]
    assert tried == [4] * EXPLORE_STEPS + [1] * EXPLORE_STEPS
    # arm 2 lies between two verify arms measured slower than the pipelined step: not tried
    assert all(steps.decide() == 0 for _ in range(EXPLORE_EVERY - 2 * EXPLORE_STEPS - 1))


def test_a_settled_engine_stops_looking_and_tries_the_others_ever_more_seldom():
    steps = Steps({0: 0.005, 1: 0.02, 2: 0.02, 4: 0.03})
    steps.run(0, 3)
    for _ in range(2 * EXPLORE_STEPS):
        steps.decide()
    assert steps.rates.settled_on_plain(16)  # no proposal needs to be looked for
    verify_at = [i for i in range(16 * EXPLORE_EVERY) if steps.decide()]
    starts = [i for i in verify_at if i - 1 not in verify_at]
    assert len(starts) >= 3
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps[0] >= 2 * EXPLORE_EVERY - EXPLORE_STEPS and gaps[1] >= 4 * EXPLORE_EVERY - EXPLORE_STEPS


def test_an_arm_that_pays_is_chosen_and_the_periods_start_short_again():
    steps = Steps({0: 0.005, 1: 0.02, 2: 0.02, 4: 0.03})
    steps.run(0, 3)
    for _ in range(3 * EXPLORE_EVERY):
        steps.decide()
    steps.seconds[4] = 0.002  # the workload turned copy-heavy: K = 4 is now the fastest
    chosen = [steps.decide() for _ in range(8 * EXPLORE_EVERY)]
    assert chosen[-EXPLORE_EVERY // 2:].count(4) > EXPLORE_EVERY // 2 - 2 * EXPLORE_STEPS
    assert not steps.rates.settled_on_plain(16)


def test_a_pipelined_step_is_measured_before_anything_settles():
    steps = Steps({0: 0.005, 1: 0.02, 2: 0.02, 4: 0.03}, rows=3)
    assert not steps.rates.settled_on_plain(3)
    assert steps.rates.choose(3) == 0  # the pipelined step is measured first at a new batch size
