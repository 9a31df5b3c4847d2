import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pinfer.accel.barrett import Barrett


@st.composite
def modulus_and_inputs(draw):
    q = draw(st.integers(min_value=2, max_value=(1 << 31) - 1))
    b = Barrett.for_modulus(q)
    zs = draw(st.lists(st.integers(min_value=0, max_value=b.input_bound - 1), min_size=1, max_size=32))
    edge = [0, q - 1, q, b.input_bound - 1, min(q * q - 1, b.input_bound - 1)]
    return q, b, zs + edge


@given(modulus_and_inputs())
@settings(max_examples=300, deadline=None)
def test_barrett_python_ints(case):
    q, b, zs = case
    assert [b.reduce(z) for z in zs] == [z % q for z in zs]


@given(modulus_and_inputs())
@settings(max_examples=200, deadline=None)
def test_barrett_torch_int64(case):
    q, b, zs = case
    out = b.reduce(torch.tensor(zs, dtype=torch.int64))
    assert out.tolist() == [z % q for z in zs]


def test_barrett_rejects_wide_moduli():
    for bad in (1, 1 << 31, (1 << 31) + 11):
        try:
            Barrett.for_modulus(bad)
        except ValueError:
            continue
        raise AssertionError(bad)
