"""Slow, obviously-correct Python-integer references for the accel tests."""

from __future__ import annotations

from pinfer.accel.primes import negacyclic_root


def bitrev(i: int, bits: int) -> int:
    return int(format(i, f"0{bits}b")[::-1], 2) if bits else 0


def ntt_definition(a: list[int], q: int) -> list[int]:
    """O(N^2) negacyclic NTT, bit-reversed order: out[p] = sum_n a[n] psi^(n (2 br(p) + 1))."""
    n = len(a)
    psi = negacyclic_root(n, q)
    bits = n.bit_length() - 1
    out = []
    for p in range(n):
        x = pow(psi, 2 * bitrev(p, bits) + 1, q)
        acc, xp = 0, 1
        for coef in a:
            acc += coef * xp
            xp = xp * x % q
        out.append(acc % q)
    return out


def ntt_recursive(a: list[int], q: int) -> list[int]:
    """Same map in O(N log N) Python ints: twist by psi^n, then a textbook recursive cyclic FFT."""
    n = len(a)
    psi = negacyclic_root(n, q)
    w = psi * psi % q
    twisted = [x * pow(psi, i, q) % q for i, x in enumerate(a)]

    def fft(v: list[int], root: int) -> list[int]:
        if len(v) == 1:
            return v
        even, odd = fft(v[0::2], root * root % q), fft(v[1::2], root * root % q)
        half, out, r = len(v) // 2, [0] * len(v), 1
        for k in range(half):
            t = odd[k] * r % q
            out[k], out[k + half] = (even[k] + t) % q, (even[k] - t) % q
            r = r * root % q
        return out

    natural = fft(twisted, w)  # natural[k] = sum a[n] psi^n w^(n k)
    bits = n.bit_length() - 1
    return [natural[bitrev(p, bits)] for p in range(n)]


def negacyclic_mul(a: list[int], b: list[int], q: int) -> list[int]:
    """Exact product mod (X^N + 1, q) by Kronecker substitution on Python big ints.

    Coefficients are reduced into [0, q), packed into byte-aligned slots wide enough that the
    integer product's slots never carry into each other, multiplied once, and unpacked.
    """
    n = len(a)
    a = [x % q for x in a]
    b = [x % q for x in b]
    width = ((q - 1) ** 2 * n).bit_length() // 8 + 1

    def pack(v: list[int]) -> int:
        return int.from_bytes(b"".join(x.to_bytes(width, "little") for x in v), "little")

    raw = (pack(a) * pack(b)).to_bytes(2 * n * width, "little")
    c = [int.from_bytes(raw[i * width:(i + 1) * width], "little") for i in range(2 * n)]
    return [(c[i] - c[i + n]) % q for i in range(n)]


def negacyclic_mul_schoolbook(a: list[int], b: list[int], q: int) -> list[int]:
    n = len(a)
    out = [0] * n
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            if i + j < n:
                out[i + j] += x * y
            else:
                out[i + j - n] -= x * y
    return [v % q for v in out]
