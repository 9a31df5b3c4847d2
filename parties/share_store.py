"""Weight provisioning: a model's prepared weights split into per-party share files sealed to each party.

Why: no single party may ever see the weights, and a party's share file crosses disks, images and
volumes that are not trusted with it, so each file is sealed (HPKE, :mod:`pinfer.keys.envelope`) to its
party's envelope key. The model owner runs ``pinfer provision`` once;
each party node then loads only its own file.

Layout of ``OUT/<model>/``:

* ``model.json`` - the public model card (:class:`pinfer.keys.session.ModelCard`): name, tokenizer, the
  Hugging Face ``config.json``, the public per-norm shifts, the party count, and the SHA-256 of each
  party's envelope key.
* ``model.card`` - the same card signed by the deployment CA (:mod:`pinfer.keys.trust`): what the
  orchestrator serves and the client verifies before it seals a prompt.
* ``party<i>.shares`` - party *i*'s sealed shares.

As in :mod:`pinfer.protocols.sharing`, party 0 holds dense shares while every other party holds only
a 32-byte seed that expands to its shares, so party 1's file is a few hundred bytes whatever the
model size. A share file is ``PSHR | u8 version | u32 header length | header (JSON, public: model,
party, provisioning id, tensor names and shapes) | (u64 length | envelope)*``. Each envelope's
context binds the provisioning id, the party, the tensor name and the SHA-256 of everything before
the first envelope (magic, version, length and the header's exact bytes). The last is what makes the
header trustworthy: party 1's file holds a seed only, so the tensor names and shapes it expands to
come from the header alone, and an edited header must fail to open rather than change the model.
Envelopes therefore cannot be swapped between tensors, parties, provisioning runs or headers.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from pinfer.keys import envelope, trust
from pinfer.atomic_file import write_atomic
from pinfer.keys.session import ModelCard
from pinfer.protocols.sharing import ShareBundle, share

SHARE_MAGIC = b"PSHR"
SHARE_VERSION = 2
CARD_FILE = "model.json"
SIGNED_CARD_FILE = "model.card"
_HEAD = struct.Struct(">4sBI")
_LENGTH = struct.Struct(">Q")
_MAX_HEADER = 1 << 24
_SEED_PURPOSE = "weight-seed"


class ShareFileError(ValueError):
    """A share file that is not one, belongs to another party or model, or fails authentication."""


def load_card(model_dir: Path | str) -> ModelCard:
    """Read ``model.json`` of a provisioned model directory."""
    return ModelCard.from_json((Path(model_dir) / CARD_FILE).read_text(encoding="utf-8"))


def share_file(model_dir: Path | str, party: int) -> Path:
    return Path(model_dir) / f"party{party}.shares"


def signed_card(model_dir: Path | str) -> bytes:
    """The CA-signed card of a provisioned model (what the orchestrator serves)."""
    return (Path(model_dir) / SIGNED_CARD_FILE).read_bytes()


def _context(provision_id: str, party: int, purpose: str, preamble: bytes) -> envelope.EnvelopeContext:
    # EnvelopeContext has no field for the header, so its digest rides in the purpose.
    digest = hashlib.sha256(preamble).hexdigest()
    return envelope.EnvelopeContext(session_id=f"provision/{provision_id}", party=party,
                                    purpose=f"{purpose} header-sha256:{digest}")


def write_share_file(path: Path, bundle: ShareBundle, party: int, model: str, provision_id: str,
                     recipient: envelope.PublicKey) -> None:
    """Seal one party's bundle to ``recipient``: per tensor for dense shares, one envelope for a seed."""
    names = sorted(bundle.shapes)
    header = {
        "model": model, "party": party, "provision_id": provision_id,
        "kind": "seed" if bundle.seed is not None else "dense",
        "tensors": [[name, list(bundle.shapes[name])] for name in names],
    }
    head = json.dumps(header, sort_keys=True).encode()
    preamble = _HEAD.pack(SHARE_MAGIC, SHARE_VERSION, len(head)) + head
    chunks = [preamble]
    if bundle.seed is not None:
        sealed = [envelope.seal(bundle.seed, recipient, _context(provision_id, party, _SEED_PURPOSE, preamble))]
    else:
        sealed = [envelope.seal_tensor(bundle.dense[name], recipient,
                                       _context(provision_id, party, f"weights/{name}", preamble))
                  for name in names]
    for item in sealed:
        chunks += [_LENGTH.pack(len(item)), item]
    write_atomic(path, chunks, mode=0o600)


def read_share_file(path: Path | str, party: int, private_key: envelope.PrivateKey, card: ModelCard) -> ShareBundle:
    """Open party ``party``'s share file of ``card``'s model; the bundle it returns is ready to expand."""
    data = Path(path).read_bytes()
    if len(data) < _HEAD.size:
        raise ShareFileError("share file is truncated")
    magic, version, head_len = _HEAD.unpack_from(data)
    if magic == SHARE_MAGIC and 0 < version < SHARE_VERSION:
        raise ShareFileError(f"share file format version {version} does not authenticate its header; "
                             f"re-provision the model (pinfer provision) to write version {SHARE_VERSION}")
    if magic != SHARE_MAGIC or version != SHARE_VERSION or head_len > _MAX_HEADER:
        raise ShareFileError("not a pinfer share file of a known version")
    offset = _HEAD.size + head_len
    if offset > len(data):
        raise ShareFileError("share file is truncated")
    preamble = data[:offset]
    try:
        header = json.loads(data[_HEAD.size:offset])
        shapes = {str(name): tuple(int(d) for d in shape) for name, shape in header["tensors"]}
        kind = header["kind"]
    except (ValueError, KeyError, TypeError):
        raise ShareFileError("share file header is malformed") from None
    if (header.get("model"), header.get("party"), header.get("provision_id")) != (card.name, party, card.provision_id):
        raise ShareFileError(f"share file is not party {party}'s share of model {card.name!r} from this provisioning")
    envelopes: list[bytes] = []
    while offset < len(data):
        if offset + _LENGTH.size > len(data):
            raise ShareFileError("share file is truncated")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            raise ShareFileError("share file is truncated")
        envelopes.append(data[offset:offset + length])
        offset += length
    try:
        if kind == "seed":
            if len(envelopes) != 1:
                raise ShareFileError("a seed share file holds exactly one envelope")
            seed = envelope.open_envelope(envelopes[0], private_key,
                                          _context(card.provision_id, party, _SEED_PURPOSE, preamble))
            return ShareBundle(shapes, seed=seed)
        if kind != "dense" or len(envelopes) != len(shapes):
            raise ShareFileError("share file lists other tensors than it holds")
        dense = {
            name: envelope.open_tensor(item, private_key,
                                       _context(card.provision_id, party, f"weights/{name}", preamble),
                                       expected_shape=shapes[name])
            for name, item in zip(sorted(shapes), envelopes)
        }
    except envelope.EnvelopeError as exc:
        raise ShareFileError(f"share file does not open with this party's key ({type(exc).__name__})") from None
    return ShareBundle(shapes, dense=dense)


def provision(model: str, out: Path | str, party_keys: Mapping[int, envelope.PublicKey],
              ca_key: ec.EllipticCurvePrivateKey, name: str | None = None) -> Path:
    """Split ``model``'s prepared weights into sealed per-party share files; return the model directory.

    ``model`` is a registry name or checkpoint directory; ``name`` (default: ``model``) is what
    clients ask for. The public card records each party key's fingerprint, so a node given the
    wrong key directory fails clearly instead of with an authentication error; ``ca_key`` signs it,
    so that clients can trust what the orchestrator serves of it.
    """
    from pinfer.model import norm_plan
    from pinfer.model.decoder import prepare_weights
    from pinfer.model.registry import load_model, resolve

    parties = len(party_keys)
    if sorted(party_keys) != list(range(parties)) or parties not in (2, 3):
        raise ValueError("provisioning needs the envelope keys of parties 0..n-1, n = 2 or 3")
    name = name or str(model)
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"model name {name!r} must be letters, digits, '-', '_' or '.'")
    model_dir = resolve(model)
    config, weights, tokenizer = load_model(model)
    shifts = norm_plan.for_model(model_dir, config, weights, tokenizer)
    hf_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    card = ModelCard(
        name=name, tokenizer=str(model), hf_config=hf_config, norm_shifts=shifts, parties=parties,
        provision_id=secrets.token_hex(16),
        party_key_sha256=tuple(trust.key_fingerprint(party_keys[i]) for i in range(parties)),
    )
    target = Path(out) / name
    target.mkdir(parents=True, exist_ok=True)
    bundles = share(prepare_weights(config, weights), parties)
    for party, bundle in enumerate(bundles):
        write_share_file(share_file(target, party), bundle, party, name, card.provision_id, party_keys[party])
    text = card.to_json() + "\n"
    write_atomic(target / CARD_FILE, text.encode(), mode=0o644)
    write_atomic(target / SIGNED_CARD_FILE, trust.sign_statement(ca_key, trust.MODEL_CARD, text.encode()), mode=0o644)
    return target


def load_party_model(model_dir: Path | str, party: int, private_key: envelope.PrivateKey) -> tuple[ModelCard, ShareBundle]:
    """The public card and this party's opened weight shares (only this party's file is read)."""
    card = load_card(model_dir)
    if party >= card.parties:
        raise ShareFileError(f"model {card.name!r} was provisioned for {card.parties} parties")
    if trust.key_fingerprint(private_key.public_key()) != card.party_key_sha256[party]:
        raise ShareFileError(f"model {card.name!r} was provisioned for another party{party} key")
    return card, read_share_file(share_file(model_dir, party), party, private_key, card)

