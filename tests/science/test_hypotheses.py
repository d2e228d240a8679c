import numpy as np
import pytest

from semtile.errors import SemtileError
from semtile.science.hypotheses import hypothesis_values


def test_curves_match_their_definitions():
    x = np.arange(16) / 15
    np.testing.assert_allclose(hypothesis_values("linear", 16), 1 - x)
    np.testing.assert_allclose(hypothesis_values("sqrt", 16), 1 - np.sqrt(x))
    np.testing.assert_allclose(hypothesis_values("log", 16), 1 - np.log(1 + 9 * x) / np.log(10))
    for name in ("linear", "sqrt", "log"):
        g = hypothesis_values(name, 16)
        assert g[0] == pytest.approx(1) and g[-1] == pytest.approx(0) and np.all(np.diff(g) < 0)


def test_table_forms_and_errors(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("0.8\n0.4\n0.0\n")
    np.testing.assert_allclose(hypothesis_values(f"table:{plain}", 3), [0.8, 0.4, 0.0])
    with pytest.raises(SemtileError, match="expected one per label"):
        hypothesis_values(f"table:{plain}", 4)
    bad = tmp_path / "bad.csv"
    bad.write_text("t,g\n0,1.5\n1,0.2\n")
    with pytest.raises(SemtileError, match=r"\[0, 1\]"):
        hypothesis_values(f"table:{bad}", 2)
    with pytest.raises(SemtileError, match="unknown hypothesis"):
        hypothesis_values("cubic", 3)


def test_more_curves_and_ranges():
    from semtile.science.hypotheses import parse_g_range

    x = np.arange(5) / 4
    np.testing.assert_allclose(hypothesis_values("power:2", 5), 1 - x**2)
    np.testing.assert_allclose(hypothesis_values("power:0.5", 5), hypothesis_values("sqrt", 5))
    e = hypothesis_values("exp", 5)
    assert e[0] == pytest.approx(1) and e[-1] == pytest.approx(0) and np.all(np.diff(e) < 0)
    np.testing.assert_allclose(hypothesis_values("linear", 3, (0.9, 0.2)), [0.9, 0.55, 0.2])
    assert parse_g_range("0.9,0.2") == (0.9, 0.2) and parse_g_range(None) == (1.0, 0.0) and parse_g_range("free") is None
    for bad in ("0.2,0.9", "x", "1,0,0"):
        with pytest.raises(SemtileError):
            parse_g_range(bad)
    with pytest.raises(SemtileError, match="fitted during training"):
        hypothesis_values("learned", 4)
    with pytest.raises(SemtileError, match="power:K"):
        hypothesis_values("power:abc", 4)
