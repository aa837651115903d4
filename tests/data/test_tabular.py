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
