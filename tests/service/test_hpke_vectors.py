"""Known-answer tests: the installed ``cryptography`` HPKE is RFC 9180 HPKE.

pinfer's envelopes (``pinfer/keys/envelope.py``) are RFC 9180 HPKE base mode, sealed and opened by
``cryptography.hazmat.primitives.hpke`` with HKDF-SHA256 and ChaCha20-Poly1305 over either
DHKEM(X25519, HKDF-SHA256) or the hybrid MLKEM768-X25519 KEM. Round trips only prove the library
agrees with itself; these tests decrypt the published test vectors, so they pin that the library we
ship is the RFC's construction (same KEM, key schedule, nonce derivation and AEAD), and a future
``cryptography`` release that drifted from it would fail here rather than in an interop incident.

Vector sources (hex data copied verbatim, nothing derived):
  * RFC 9180, Appendix A.1.1 and A.2.1 (mode_base), from the RFC's source document
    cfrg/draft-irtf-cfrg-hpke, ``draft-irtf-cfrg-hpke.md`` (commit b1f7cb0c).
  * draft-ietf-hpke-pq (tag draft-ietf-hpke-pq-04 and later), section "Test Vectors",
    "MLKEM768-X25519, HKDF-SHA256, ChaCha20Poly1305", from hpkewg/hpke-pq ``test-vectors.json``
    (commit 74dafaa6). That generator hex-encodes ``info`` and ``pt`` twice, i.e. the bytes
    are the ASCII of the hex strings; the vector is used exactly as published.

The public ``Suite.decrypt`` is RFC 9180 Section 6.1 single-shot Open with empty AAD, while the
vectors' first encryption (sequence number 0) uses aad = "Count-0"; the private
``_decrypt_with_aad`` is the same single-shot Open with a caller-chosen AAD, so it checks exactly
the published ciphertext. Sequence number 0 is the only one single-shot Open can reach (Section 6.1),
and the only one pinfer uses.
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.bindings._rust import openssl as rust_openssl
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

_decrypt_with_aad = rust_openssl.hpke._decrypt_with_aad
_encrypt_with_aad = rust_openssl.hpke._encrypt_with_aad

# Common to every RFC 9180 Appendix A vector: info = "Ode on a Grecian Urn",
# pt = "Beauty is truth, truth beauty", sequence number 0 uses aad = "Count-0".
INFO = bytes.fromhex("4f6465206f6e2061204772656369616e2055726e")
PT = bytes.fromhex("4265617574792069732074727574682c20747275746820626561757479")
AAD_SEQ0 = bytes.fromhex("436f756e742d30")
assert INFO == b"Ode on a Grecian Urn"
assert PT == b"Beauty is truth, truth beauty"
assert AAD_SEQ0 == b"Count-0"

# RFC 9180 Appendix A.1.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, mode_base
# (mode 0, kem_id 32, kdf_id 1, aead_id 1).
A_1_1 = {
    "skRm": "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8",
    "pkRm": "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d",
    "enc": "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431",
    "ct": "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a9"
          "6d8770ac83d07bea87e13c512a",
}

# RFC 9180 Appendix A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305, mode_base
# (mode 0, kem_id 32, kdf_id 1, aead_id 3). This is pinfer's X25519 envelope suite.
A_2_1 = {
    "skRm": "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb",
    "pkRm": "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a",
    "enc": "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a",
    "ct": "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db"
          "21993c62ce81883d2dd1b51a28",
}

RFC9180_VECTORS = [
    pytest.param(hpke.AEAD.AES_128_GCM, A_1_1, id="A.1.1-X25519-HKDF_SHA256-AES_128_GCM"),
    pytest.param(hpke.AEAD.CHACHA20_POLY1305, A_2_1, id="A.2.1-X25519-HKDF_SHA256-ChaCha20Poly1305"),
]


def _x25519_suite(aead: hpke.AEAD) -> hpke.Suite:
    return hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, aead)


def _recipient(vector: dict[str, str]) -> X25519PrivateKey:
    # RFC 9180 Section 7.1.2: X25519 private keys serialize as the raw 32-byte scalar.
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(vector["skRm"]))


def _single_shot_ciphertext(vector: dict[str, str]) -> bytes:
    # cryptography's single-shot ciphertext is enc || ct (RFC 9180 Section 6.1 returns both).
    return bytes.fromhex(vector["enc"]) + bytes.fromhex(vector["ct"])


@pytest.mark.parametrize(("aead", "vector"), RFC9180_VECTORS)
def test_recipient_key_matches_the_vector(aead: hpke.AEAD, vector: dict[str, str]) -> None:
    # RFC 9180 Section 7.1.1: SerializePublicKey for X25519 is the raw 32-byte u-coordinate.
    assert _recipient(vector).public_key().public_bytes_raw() == bytes.fromhex(vector["pkRm"])
    assert len(bytes.fromhex(vector["enc"])) == hpke.KEM.X25519.enc_length() == 32


@pytest.mark.parametrize(("aead", "vector"), RFC9180_VECTORS)
def test_sequence_zero_encryption_opens_to_the_vector_plaintext(aead: hpke.AEAD, vector: dict[str, str]) -> None:
    # RFC 9180 Appendix A.x.1, "Encryptions", sequence number 0 (Section 5.2: nonce = base_nonce).
    plain = _decrypt_with_aad(_x25519_suite(aead), _single_shot_ciphertext(vector), _recipient(vector),
                              info=INFO, aad=AAD_SEQ0)
    assert plain == PT


@pytest.mark.parametrize(("aead", "vector"), RFC9180_VECTORS)
@pytest.mark.parametrize("where", ["enc", "ct-first", "ct-tag"])
def test_one_flipped_byte_is_rejected(aead: hpke.AEAD, vector: dict[str, str], where: str) -> None:
    # RFC 9180 Section 5.2: Open fails (OpenError) when the AEAD tag does not verify; a changed
    # enc gives another shared secret (Section 4.1), so the tag fails too.
    data = bytearray(_single_shot_ciphertext(vector))
    index = {"enc": 0, "ct-first": 32, "ct-tag": len(data) - 1}[where]
    data[index] ^= 0x01
    with pytest.raises(InvalidTag):
        _decrypt_with_aad(_x25519_suite(aead), bytes(data), _recipient(vector), info=INFO, aad=AAD_SEQ0)


@pytest.mark.parametrize(("aead", "vector"), RFC9180_VECTORS)
def test_wrong_aad_or_info_is_rejected(aead: hpke.AEAD, vector: dict[str, str]) -> None:
    # The vector's ct binds aad (Section 5.2) and info (key schedule, Section 5.1): the public
    # empty-AAD decrypt, the sequence-1 AAD, or another info must all fail.
    suite, key, data = _x25519_suite(aead), _recipient(vector), _single_shot_ciphertext(vector)
    with pytest.raises(InvalidTag):
        suite.decrypt(data, key, info=INFO)
    with pytest.raises(InvalidTag):
        _decrypt_with_aad(suite, data, key, info=INFO, aad=b"Count-1")
    with pytest.raises(InvalidTag):
        _decrypt_with_aad(suite, data, key, info=INFO + b"!", aad=AAD_SEQ0)


@pytest.mark.parametrize(("aead", "vector"), RFC9180_VECTORS)
def test_public_api_round_trip_against_the_vector_key(aead: hpke.AEAD, vector: dict[str, str]) -> None:
    # Section 6.1 single-shot Seal/Open with the public API (empty AAD), as pinfer calls it.
    suite, key = _x25519_suite(aead), _recipient(vector)
    sealed = suite.encrypt(PT, key.public_key(), info=INFO)
    assert len(sealed) == 32 + len(PT) + 16
    assert suite.decrypt(sealed, key, info=INFO) == PT
    # A fresh ephemeral key each time (Section 4: Encap is randomized).
    assert suite.encrypt(PT, key.public_key(), info=INFO)[:32] != sealed[:32]
    # The private AAD helper and the public API agree on what empty AAD means.
    assert _decrypt_with_aad(suite, sealed, key, info=INFO, aad=b"") == PT


# draft-ietf-hpke-pq, Test Vectors, "MLKEM768-X25519, HKDF-SHA256, ChaCha20Poly1305", mode_base
# (mode 0, kem_id 25722 = 0x647a, kdf_id 1, aead_id 3): pinfer's hybrid envelope suite.
# skRm is the 32-byte hybrid seed (draft-ietf-hpke-pq: SerializePrivateKey is the identity);
# pkRm = ML-KEM-768 ek (1184) || X25519 pk (32); enc = ML-KEM ct (1088) || X25519 ephemeral (32).
_PQ_SKRM = bytes.fromhex(
    "3ec47fa82dd5689d27c6190e724c74ec8f608df3331ce331929e37b829676630"
)
_PQ_PKRM = bytes.fromhex(
    "f5fb01a5db909ac907ecc9524de9b9eaf4997dac7d22c961267c964403825160"
    "5a105ba7216669a8a1208ecaaf3a706fa7a7c4d7492260ca88c42a19732869f3"
    "b4c383477cd51c1da5c13a400244ec4b5c25ba350ed1509731bf801a7cfc92c4"
    "9650269405931b05c584f8737252141d2a9d1b02ad1b05afc18083681818e2bc"
    "324fc0403bb96447959a0a4aa874481f6444cdaa5c6f7010c841b99170d9b575"
    "fb2da199c038e62672334048d33ed5d84c6193c5ad69b92310bd1359a662da65"
    "db688c33eb2f98f627f4b4600b4002611693a0e581aad6a5454a424af00cc44c"
    "6cb09a8100838cbabb16e39acf88d41733785f531a141961ad64588e87d5c252"
    "eb101934a56f38316984cd6ea3a635218d560b5e0df4aa77a58d70aaaa0b36b5"
    "3c783e6eb59b1fa5990db51402c03a55829775a45be2cbc3f3914f2d1869ff64"
    "643ae777d74a47966537b7315d06dc29812004daa7b9a406b12cdb744bfc5ba5"
    "ca602261785e38939c530d8cdc33020b4a2f77761e64985271ca1ea4a0b5f0a7"
    "51704e705a94fd238c0770c262946758d5a5cd1cb82931771c4376f7887a1e77"
    "bd7b772d39c991de6c00093c87e5880bb82a0ea101b00ddb81c15684eaeb5c72"
    "784e0b1979f2c991b602b25a727b1ef8925ac96d0f993badeb3602b181faa8b7"
    "dfd38ba32c420d1b02eff996c8954c5e732cc5149b9c35262e27c25d1979cbb8"
    "77735212d7bbb759f72e54155260950962d475a3d7a1f354c378038a5633b0a8"
    "698ba579a88a403cb3cba9b3e563d3c25cc89b143fcc16a9284655253ec7db8b"
    "2dbb7b3e3a6d49cb220ebbb18ea635d6b2016d0a2f4b775d659a5ad59b9e68cb"
    "b8bdf0b69aca1d5670520552574b812b66d23a67270d1163a250a54c37aa3aa8"
    "68b318185412f84b11b16ebfdc3509eb805bb4536d63a920e0921c3209678751"
    "f9d782368490de2693aaf8390d7a2a3d831fb48009a104422889891915aad657"
    "9950a91be324755d299a30f8baa8babe21081ce0e0cc7f8826174c6d71b44e5f"
    "6c1d15f250b63b930c0703b22cb9d1493e65918ae3137e4e91c6ea9a83b90606"
    "228698b83480c0a77f72a3c628f48621b4b7ff497e5c7307ebc7586495b1724b"
    "158311421a5ac8539651c0012dffbb01f9350e63104be9294e61ba9889e17691"
    "c9c572c4a9cc8759359b2b4f73bd19f97fc935895dba7e4fe43aa5b629edaa82"
    "5ce7c1ca430e006228c4649de0414fdf5a5a53eb27965cb5840644ce0ab5c0db"
    "ab89f048b6677b9d8b8f933ab4f14b296cf184b9eb660c14b0a8a8c5c7b371a2"
    "87a0a67354c9295646e36d4b13c65eb2bcb90728b0c71e9ff801ccbb13119b5c"
    "d6380fc193a5baf1998b231a59c3517b196263694fb9da3904e67fab95c251c0"
    "47ac698fa000a045e764a3598f0cd84b83e3ca5366cf6f6ba1b8fb38166bc165"
    "466e94e50c354546bd912b3d6c44e2e46fb6c244e5527b3948aecb8a1865ab90"
    "ac44a6bcc13606641831a836be96b00a403f8ddc8e88bb9a1ad774dd251861ba"
    "b6bfd180ae7c2c94107259e7b5bbf92ca836b496aab97794bf3e5797013b1605"
    "8c7d7c38c118034c39201fae92c79773361747ba2b8aac31a9afc7b53a36d74a"
    "e3415e3526c23f98bfc6584d1069019dd977c37e950ed90f14f52991b2b28d0b"
    "f571686619612d7bc8206650c1d2fc9072220e7f4d4f557f15b33dcf32e5c837"
)
_PQ_ENC = bytes.fromhex(
    "26759c7b22923ea5cc9c78e3e14c8fc62dcb0a66ce44460966978a7fe9685e0c"
    "6d22999d99a3f112c307a6d5b2e63591f41e8a3516ba62908376d664557206e6"
    "96ae870305ff6ba08125266bc0765672beca90fd5c6dae0d3ddad1506065a9d4"
    "f297e0c3e70bb441961df26d7a19d79d1ef7e2ac5e53b32a3c7b4e07f2af2ae6"
    "5830a3e8d1cb2ac1932fc19ec5434303b62c9d010645cf95a475913da5d77a28"
    "2b88402e4a77ab17b09559dce8a96c67a27bea8f653ceaca3d278b6ed150fe93"
    "6dda28b1726665c946cab30363ef89eb878ffcc74caa277a5dab1994193a6796"
    "7125ebd50986dc16997b8f7484d7d0e27c79ff4b68201c1b4102f5a73322fd3d"
    "a96bf655d90c9b1e6305e01ab1b3449ea3f458b0e98e1f2d1632825c3b30018b"
    "b5eefbcc80f767d0b9e7f9f731e1958083879ebcc1b5bb061e89302c444a85ee"
    "ed169b10d2520fd47b6a111914f3bda2f31d04f250522ba951012a629fa2cd21"
    "92583cc9abd75d02b7a11fd18056c414b8f0e0936535bf9b637c7e614a1ae9b9"
    "e907fe9d14243f13625ec92a97599eaa491b9da918b586e27d34c7279205dd76"
    "cf0ecdbf60b5aea4cfb9dca41069f3e2fc8f371a7cf3b089ea469d8417bda314"
    "9159992399ccd5baf776a0f8966d4742cbedaeac131dde853cb1fbb7b869a4c0"
    "1cea8a487a2e52e757bf4dfcec23995e5f088804d2cf99c82f087454144cc586"
    "845d7cf81249e7ad919ea1b06001ad13501da118ee19859595015b4b1872912d"
    "d2d4f5dd854f144ae07038bd8bb2b498f8edcb1c70c2102af768d508a1b42372"
    "38c0c6e34a9c819b0ebf28f49505d374095b2b58c7a810cf1e806cb3c79af3bc"
    "84c8b657787804e374df2b49be6ac510d43024e65fd031540a7cd45c9348ad9f"
    "5511b969be6f9c4d849c1428f611225b0d9a3ae341669ba645baa877cdc34c39"
    "f5975f4991a77f86eca2c25ebee63a06928c1bbc9513f35547645e835544c1e4"
    "a8f33d7f29c1cfbde6425fa05aeff69f373aa8a281c92817cbe5be9305795354"
    "efc71a89462e87ce83919d679dcbfded88f7fff9177f4b49e8a959d9aa78b63f"
    "eb99fa56735df0f4fc253653a9177f767b307bb2a9e7e4d9042f22cc6c4f177d"
    "b80efaebfef8a3baa6f1423335c830308c2496118263f0bd361d93f8b4e75a7c"
    "ba94c2af72dd13ee8926524cfe9df14f79165a3498b9fd631cbb874d25b11315"
    "f9acb442512561cf7dc6098a08874fcc704cdd5e84e57811a49e78fbd56e5a8e"
    "767617321c295095595ea2b0f4aaca30dd38749ab83532be1bdcf4c32a119e03"
    "5558bb427dbdb806b4e15cea8df3c098728c2b5e40209c5138531db1b6607775"
    "44e6a014477a7d1b93eb0f245fe9e7053997c10504ef692f21639c86d8926ddc"
    "e6886d0c39eb7c59357ee54f81871019593713f4a6df37bf7003358694cff59a"
    "f9872ca02bf762e20499227dba2f552203459dcc69780ef08d9bab4140d96e1c"
    "478f06b63b60c9bfb10d90e31d47570ea949ab8e9b99db6ec2f8a2a77dcb25cc"
    "36b733dfc09b8299a9d7b19e68c09ad82703f9b47d34d1a3cbafe42c73f57d0e"
)
_PQ_INFO = bytes.fromhex(
    "3466363436353230366636653230363132303437373236353633363936313665"
    "3230353537323665"
)
_PQ_PT = bytes.fromhex(
    "3432363536313735373437393230363937333230373437323735373436383263"
    "3230373437323735373436383230363236353631373537343739"
)
_PQ_AAD = bytes.fromhex(
    "436f756e742d30"
)
_PQ_CT = bytes.fromhex(
    "c5c591f99092d5e38df0a52699af249c66f8275a863423c076de8147a53e65cc"
    "584041c963b77a7e59ea93841b1339b5efda8909b71f74bb0073ad62e899de31"
    "0c1566dea2fd29eba377"
)


def _pq_suite() -> hpke.Suite:
    return hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


def _pq_recipient() -> tuple[hpke.MLKEM768X25519PrivateKey, bytes]:
    # The 32-byte seed expands (draft-irtf-cfrg-concrete-hybrid-kems MLKEM768-X25519, as X-Wing)
    # to SHAKE256(seed, 96) = ML-KEM-768 seed d||z (64) || X25519 private key (32). cryptography
    # builds the hybrid key from its two halves, so the expansion happens here; the pkRm check
    # below proves it is the draft's.
    expanded = hashlib.shake_256(_PQ_SKRM).digest(96)
    mlkem_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
    x25519_key = X25519PrivateKey.from_private_bytes(expanded[64:])
    public = mlkem_key.public_key().public_bytes_raw() + x25519_key.public_key().public_bytes_raw()
    return hpke.MLKEM768X25519PrivateKey(mlkem_key, x25519_key), public


def test_mlkem768_x25519_recipient_key_matches_the_vector() -> None:
    _, public = _pq_recipient()
    assert public == _PQ_PKRM
    assert len(_PQ_ENC) == hpke.KEM.MLKEM768_X25519.enc_length() == 1120


def test_mlkem768_x25519_sequence_zero_encryption_opens_to_the_vector_plaintext() -> None:
    key, _ = _pq_recipient()
    plain = _decrypt_with_aad(_pq_suite(), _PQ_ENC + _PQ_CT, key, info=_PQ_INFO, aad=_PQ_AAD)
    assert plain == _PQ_PT
    assert plain.decode() == PT.hex()  # the generator's double hex encoding, see the docstring
    assert _PQ_AAD == AAD_SEQ0


@pytest.mark.parametrize("index", [0, 1087, 1088, 1119, 1120, -1], ids=lambda i: f"byte{i}")
def test_mlkem768_x25519_one_flipped_byte_is_rejected(index: int) -> None:
    # Bytes 0 and 1087: ML-KEM ciphertext (implicit rejection gives a pseudorandom secret);
    # 1088 and 1119: the X25519 ephemeral; 1120 and the last byte: AEAD ciphertext and tag.
    key, _ = _pq_recipient()
    data = bytearray(_PQ_ENC + _PQ_CT)
    data[index] ^= 0x01
    with pytest.raises(InvalidTag):
        _decrypt_with_aad(_pq_suite(), bytes(data), key, info=_PQ_INFO, aad=_PQ_AAD)


def test_mlkem768_x25519_round_trip_with_a_generated_key() -> None:
    key = hpke.MLKEM768X25519PrivateKey(mlkem.MLKEM768PrivateKey.generate(), X25519PrivateKey.generate())
    suite, info = _pq_suite(), b"pinfer hpke kat round trip"
    sealed = suite.encrypt(PT, key.public_key(), info=info)
    assert len(sealed) == 1120 + len(PT) + 16
    assert suite.decrypt(sealed, key, info=info) == PT
    sealed_aad = _encrypt_with_aad(suite, PT, key.public_key(), info=info, aad=AAD_SEQ0)
    assert _decrypt_with_aad(suite, sealed_aad, key, info=info, aad=AAD_SEQ0) == PT
    with pytest.raises(InvalidTag):
        suite.decrypt(sealed_aad, key, info=info)
    other = hpke.MLKEM768X25519PrivateKey(mlkem.MLKEM768PrivateKey.generate(), X25519PrivateKey.generate())
    with pytest.raises(InvalidTag):
        suite.decrypt(sealed, other, info=info)
