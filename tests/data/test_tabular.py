"""Tabular encoding: train statistics, an unknown slot, and missing values treated alike in fit and encode."""
import numpy as np

from engine.data.tabular import TabularEncoder


def test_numeric_normalised_with_train_statistics_and_missing_is_mean():
    enc = TabularEncoder.fit([{"a": "1"}, {"a": "3"}, {"a": ""}], ["a"], [])
    num, _ = enc.encode([{"a": "1"}, {"a": "3"}, {"a": None}, {"a": "oops"}])
    np.testing.assert_allclose(num[:, 0], [-1.0, 1.0, 0.0, 0.0])


def test_categorical_unknown_and_missing_go_to_slot_zero():
    enc = TabularEncoder.fit([{"c": "None"}, {"c": "x"}, {"c": None}, {"c": ""}], [], ["c"])
    assert enc.vocabs == [["None", "x"]] and enc.cardinalities == [3]
    _, cat = enc.encode([{"c": "None"}, {"c": "x"}, {"c": None}, {"c": ""}, {"c": "unseen"}, {}])
    assert cat[:, 0].tolist() == [1, 2, 0, 0, 0, 0]  # a literal "None" category is not a missing value


def test_round_trip_through_dict():
    enc = TabularEncoder.fit([{"a": 2, "c": "k"}], ["a"], ["c"])
    assert TabularEncoder.from_dict(enc.to_dict()) == enc


def test_non_finite_values_are_missing_not_poison():
    enc = TabularEncoder.fit([{"a": "1"}, {"a": "3"}, {"a": "inf"}, {"a": "1e400"}, {"a": "nan"}], ["a"], [])
    assert enc.means == [2.0] and enc.stds == [1.0]
    num, _ = enc.encode([{"a": "-inf"}, {"a": "3"}])
    assert np.isfinite(num).all() and num[:, 0].tolist() == [0.0, 1.0]


def test_a_column_that_never_parses_is_refused_naming_it(caplog):
    import pytest

    with pytest.raises(ValueError, match=r"numeric column 'w': none of its 2 .*'1,5'.*decimal point"):
        TabularEncoder.fit([{"w": "1,5"}, {"w": "2,25"}, {"w": ""}], ["w"], [])
    with caplog.at_level("WARNING"):
        TabularEncoder.fit([{"w": "1.5"}, {"w": "n/a"}], ["w"], [])
    assert "1 train values are not finite numbers" in caplog.text and "'n/a'" in caplog.text
