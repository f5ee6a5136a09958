from __future__ import annotations

from batchadmin.lib import numbers


def test_it_reads_only_ascii_digits():
    assert numbers.whole("0") == 0
    assert numbers.whole("42") == 42
    for bad in ("²", "٣", "", " 7", "+7", "-1", "1_000", "7.0", "1e3", None, 7):
        assert numbers.whole(bad) is None, bad


def test_it_refuses_numbers_too_big_for_a_bigint():
    assert numbers.whole("9" * 18) == 10**18 - 1
    assert numbers.whole("9" * 19) is None
