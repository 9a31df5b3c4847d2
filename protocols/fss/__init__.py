"""Function secret sharing: keys a dealer makes so that two parties evaluate a secret function locally.

A distributed comparison function (DCF) key pair for ``f(x) = beta * [x < alpha]`` lets each party
compute an additive share of ``f(x)`` at a public point ``x`` with no interaction. Opening a masked
value ``x + r`` (one round) and evaluating keys made for the mask turns any comparison of a secret
into one online round (Boyle et al., "Function Secret Sharing for Mixed-Mode and Fixed-Point Secure
Computation", Eurocrypt 2021; SIGMA, PETS 2024). The price is key material: about ``24 n`` bytes per
comparison of ``n``-bit values, sent by the dealer to each party.

One primitive per module: :mod:`prg` (the length-doubling generator over fixed-key AES) and
:mod:`dcf` (key generation and evaluation, vectorised over many independent keys).
"""
