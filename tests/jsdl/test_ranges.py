"""RangeValue semantics (JSDL §6.1.1): a union of parts, exclusive bounds, epsilon."""

from __future__ import annotations

import math

import pytest

from bes.jsdl.model import Boundary, Exact, Range, RangeValue


def test_union_of_all_parts() -> None:
    rv = RangeValue(
        upper_bounded_range=Boundary(value=1),
        lower_bounded_range=Boundary(value=100),
        exact=(Exact(value=10),),
        range=(Range(lower=Boundary(value=20), upper=Boundary(value=30)),),
    )
    assert [x for x in (0, 1, 5, 10, 15, 20, 25, 30, 31, 99, 100, 1e6) if rv.contains(x)] == [
        0,
        1,
        10,
        20,
        25,
        30,
        100,
        1e6,
    ]


def test_exclusive_bounds() -> None:
    rv = RangeValue(
        range=(
            Range(lower=Boundary(value=2, exclusive=True), upper=Boundary(value=4, exclusive=True)),
        )
    )
    assert not rv.contains(2) and rv.contains(2.0001) and rv.contains(3.9999) and not rv.contains(4)
    assert not RangeValue(upper_bounded_range=Boundary(value=5, exclusive=True)).contains(5)
    assert RangeValue(upper_bounded_range=Boundary(value=5)).contains(5)
    assert not RangeValue(lower_bounded_range=Boundary(value=5, exclusive=True)).contains(5)


@pytest.mark.parametrize(("x", "inside"), [(3.5, True), (4.5, True), (3.49, False), (4.51, False)])
def test_epsilon(x: float, inside: bool) -> None:
    assert RangeValue(exact=(Exact(value=4, epsilon=0.5),)).contains(x) is inside


def test_exact_without_epsilon_is_exact() -> None:
    rv = RangeValue(exact=(Exact(value=2),))
    assert rv.contains(2) and not rv.contains(2.0000001)


def test_nan_is_never_inside() -> None:
    assert not RangeValue(lower_bounded_range=Boundary(value=0)).contains(math.nan)


def test_lowest_and_highest() -> None:
    rv = RangeValue(
        exact=(Exact(value=8, epsilon=1),),
        range=(Range(lower=Boundary(value=2), upper=Boundary(value=4)),),
    )
    assert (rv.lowest(), rv.highest()) == (2, 9)
    assert RangeValue(lower_bounded_range=Boundary(value=3)).lowest() == 3
    assert RangeValue(lower_bounded_range=Boundary(value=3)).highest() is None
    assert RangeValue(upper_bounded_range=Boundary(value=3)).lowest() is None
