"""Seeds: the run layout, mean ± std and the t interval against hand values, and the noise verdict."""

import dataclasses
import math

import pytest

from col775.core.report import Report
from col775.core.seeds import SeedNoise, Spread, by_variant, first_seed, parse_seeds, seeded, verdict


@dataclasses.dataclass
class Config:
    lr: float = 0.1
    seed: int = 0


def test_several_seeds_nest_one_folder_per_seed_and_one_seed_keeps_the_layout():
    runs = {"norm-bn": Config(), "norm-gn": Config(lr=0.2)}
    many = seeded(runs, [0, 3])
    assert list(many) == ["norm-bn/seed-0", "norm-bn/seed-3", "norm-gn/seed-0", "norm-gn/seed-3"]
    assert [c.seed for c in many.values()] == [0, 3, 0, 3] and many["norm-gn/seed-3"].lr == 0.2
    assert {name: c.seed for name, c in seeded(runs, [7]).items()} == {"norm-bn": 7, "norm-gn": 7}
    assert seeded(runs, None) == runs
    assert list(by_variant(many)) == ["norm-bn", "norm-gn"]
    assert {key: name for key, (name, _) in first_seed(many).items()} == {"norm-bn": "norm-bn/seed-0",
                                                                          "norm-gn": "norm-gn/seed-0"}


@pytest.mark.parametrize("text", ["0,x", "", "1,1"])
def test_bad_seeds_are_one_clear_error(text):
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds(text)


def test_mean_std_and_interval_equal_hand_computation():
    spread = Spread((80.0, 82.0, 87.0))
    # mean 83, sample variance ((-3)^2 + (-1)^2 + 4^2) / 2 = 13, t(0.975, df 2) = 4.302653 from a t table
    assert spread.mean == pytest.approx(83.0)
    assert spread.std == pytest.approx(math.sqrt(13))
    half = 4.302653 * math.sqrt(13) / math.sqrt(3)
    assert spread.interval == pytest.approx((83 - half, 83 + half), abs=1e-5)
    assert spread.text() == "83.0 ± 3.6" and spread.interval_text() == f"{83 - half:.1f} to {83 + half:.1f}"
    # two values, df 1: t = 12.706205
    low, high = Spread((1.0, 2.0)).interval
    assert (high - low) / 2 == pytest.approx(12.706205 * math.sqrt(0.5) / math.sqrt(2), abs=1e-5)
    assert Spread((5.0, 5.0)).interval == (5.0, 5.0)
    assert math.isnan(Spread((5.0,)).std) and Spread((5.0,)).text() == "5.0"


def test_the_verdict_is_whether_the_intervals_overlap():
    tight_low, tight_high = Spread((10.0, 10.1, 9.9)), Spread((20.0, 20.1, 19.9))
    assert verdict(tight_low, tight_high) == "differs beyond seed noise"
    assert verdict(Spread((10.0, 14.0, 6.0)), Spread((12.0, 13.0, 11.0))) == "within seed noise"
    assert verdict(Spread((10.0,)), tight_high).startswith("seed noise unknown")


def test_the_seed_section_tables_every_variant_and_says_each_comparison(tmp_path):
    noise = SeedNoise({"BN": {"acc": [80.0, 82.0, 87.0]}, "GN": {"acc": [10.0, 10.1, 9.9]}, "IN": {"acc": [84.0]}},
                      [("GN vs BN", "GN", "BN", "acc"), ("IN vs BN", "IN", "BN", "acc"), ("LN vs BN", "LN", "BN", "acc")])
    report = Report("t")
    noise.add_to(report)
    report.write(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| variant | seeds | acc: mean ± std | acc: 95% interval |" in md
    assert "| BN | 3 | 83.0 ± 3.6 | 74.0 to 92.0 |" in md and "| IN | 1 | 84.0 | n/a (one seed) |" in md
    assert "GN vs BN (acc): GN 10.0 ± 0.1 against BN 83.0 ± 3.6: differs beyond seed noise." in md
    assert "IN vs BN (acc): IN 84.0 against BN 83.0 ± 3.6: seed noise unknown" in md
    assert "LN vs BN" not in md  # a variant the study did not run is not compared
