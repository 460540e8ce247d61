"""Learning-rate schedules by hand."""

import math

import pytest
import torch

from medattn.engine.schedule import EpochSchedule, make_scheduler


def test_poly_cosine_constant_and_warmup():
    assert EpochSchedule("poly", 10)(0) == 1.0
    assert EpochSchedule("poly", 10)(5) == pytest.approx(0.5**0.9)
    assert EpochSchedule("cosine", 10)(5) == pytest.approx(0.5)
    assert EpochSchedule("cosine", 10)(10) == pytest.approx(0.0)
    assert EpochSchedule("constant", 10)(7) == 1.0
    warm = EpochSchedule("cosine", 10, warmup_epochs=2)
    assert [warm(0), warm(1)] == pytest.approx([1 / 3, 2 / 3])
    assert warm(2) == 1.0 and warm(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_scheduler_state_round_trips():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    s = make_scheduler(opt, "poly", 4, 0)
    for _ in range(2):
        opt.step()
        s.step()
    state = s.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    s2 = make_scheduler(opt2, "poly", 4, 0)
    s2.load_state_dict(state)
    assert s2.last_epoch == 2 and s2.get_last_lr() == pytest.approx([0.1 * 0.5**0.9])
