"""Key slots: master secrets wrapped by passphrase (scrypt), age, gpg and none; real crypto only."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pyrage
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostile import cpu_seconds
from phoenix_backup.errors import (
    CorruptObject,
    KdfBudgetExceeded,
    MissingCredentials,
    ToolMissing,
    UnsupportedFormat,
    UsageError,
    WrongPassphrase,
)
from phoenix_backup.repo.keys import (
    Credentials,
    KeySlot,
    MasterSecrets,
    load_age_identities,
    open_any,
    unwrap,
    wrap_age,
    wrap_gpg,
    wrap_none,
    wrap_passphrase,
)

FAST = {"n": 2**10}  # scrypt parameters small enough for unit tests
GPG = shutil.which("gpg")
GPG_EMAIL = "t@example.invalid"


def fast_passphrase_slot(secrets: MasterSecrets, passphrase: str = "correct horse") -> KeySlot:
    return wrap_passphrase(secrets, passphrase, kdf_params=FAST)


def with_params(slot: KeySlot, **changes: object) -> KeySlot:
    return replace(slot, params={**slot.params, **changes})


# ------------------------------------------------------------------------------------------
# gpg fixtures: throwaway homedirs, their agents killed afterwards


def _kill_agent(home: Path) -> None:
    if shutil.which("gpgconf"):
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


@pytest.fixture(scope="module")
def gpg_home() -> Iterator[Path]:
    if GPG is None:
        print("gpg is not installed: skipping the gpg key slot tests")
        pytest.skip("gpg is not installed")
    # Short path: gpg-agent's socket lives in the homedir and unix socket paths are limited.
    home = Path(tempfile.mkdtemp(prefix="phxgpg"))
    try:
        subprocess.run(
            [
                GPG,
                "--homedir",
                str(home),
                "--batch",
                "--passphrase",
                "",
                "--quick-gen-key",
                f"Phoenix Test <{GPG_EMAIL}>",
                "future-default",
                "default",
                "never",
            ],
            check=True,
            capture_output=True,
        )
        yield home
    finally:
        _kill_agent(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def empty_gpg_home() -> Iterator[Path]:
    """A keyring with no keys, so no test ever touches the real ~/.gnupg."""
    home = Path(tempfile.mkdtemp(prefix="phxgpg0"))
    home.chmod(0o700)
    try:
        yield home
    finally:
        _kill_agent(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated_gnupghome(empty_gpg_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GNUPGHOME", str(empty_gpg_home))


@pytest.fixture(scope="module")
def secrets() -> MasterSecrets:
    return MasterSecrets.generate()


# ------------------------------------------------------------------------------------------
# MasterSecrets


def test_generate_gives_valid_distinct_secrets() -> None:
    a, b = MasterSecrets.generate(), MasterSecrets.generate()
    assert len(a.encryption_key) == 32 and len(a.id_key) == 32
    assert 0 < a.chunker_seed < 2**63
    assert a != b and a.encryption_key != a.id_key


def test_master_secrets_to_bytes_is_canonical_json(secrets: MasterSecrets) -> None:
    document = json.loads(secrets.to_bytes())
    assert document == {
        "chunkerSeed": secrets.chunker_seed,
        "encryptionKey": base64.b64encode(secrets.encryption_key).decode(),
        "idKey": base64.b64encode(secrets.id_key).decode(),
        "version": 1,
    }
    assert secrets.to_bytes() == json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def test_repr_hides_secrets(secrets: MasterSecrets) -> None:
    text = repr(secrets) + repr(Credentials(passphrase="hunter2", age_identities=("AGE-X",)))
    assert secrets.encryption_key.hex() not in text
    assert str(secrets.chunker_seed) not in text
    assert "hunter2" not in text and "AGE-X" not in text


master_secrets = st.builds(
    MasterSecrets,
    encryption_key=st.binary(min_size=32, max_size=32),
    id_key=st.binary(min_size=32, max_size=32),
    chunker_seed=st.integers(min_value=1, max_value=2**63 - 1),
)


@given(master_secrets)
def test_master_secrets_round_trip(value: MasterSecrets) -> None:
    data = value.to_bytes()
    assert MasterSecrets.from_bytes(data) == value
    assert MasterSecrets.from_bytes(data).to_bytes() == data


def _secrets_doc(**changes: object) -> bytes:
    document: dict[str, object] = {
        "encryptionKey": base64.b64encode(bytes(32)).decode(),
        "idKey": base64.b64encode(bytes(range(32))).decode(),
        "chunkerSeed": 12345,
        "version": 1,
    }
    document.update(changes)
    return json.dumps({k: v for k, v in document.items() if v is not None}).encode()


def test_valid_secrets_doc_parses() -> None:
    assert MasterSecrets.from_bytes(_secrets_doc()).chunker_seed == 12345


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        _secrets_doc(version=None),
        _secrets_doc(version="1"),
        _secrets_doc(version=0),
        _secrets_doc(encryptionKey=base64.b64encode(bytes(31)).decode()),
        _secrets_doc(idKey=base64.b64encode(bytes(33)).decode()),
        _secrets_doc(idKey="%%%not base64%%%"),
        _secrets_doc(idKey=7),
        _secrets_doc(encryptionKey=None),
        _secrets_doc(chunkerSeed=0),
        _secrets_doc(chunkerSeed=-5),
        _secrets_doc(chunkerSeed=2**63),
        _secrets_doc(chunkerSeed=True),
        _secrets_doc(chunkerSeed=1.5),
        _secrets_doc(chunkerSeed=None),
    ],
)
def test_bad_master_secrets_are_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptObject):
        MasterSecrets.from_bytes(data)


def test_newer_master_secrets_are_unsupported() -> None:
    with pytest.raises(UnsupportedFormat, match="upgrade phoenix-backup"):
        MasterSecrets.from_bytes(_secrets_doc(version=2))


# ------------------------------------------------------------------------------------------
# KeySlot serialisation

json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
key_slots = st.builds(
    KeySlot,
    id=st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
    type=st.sampled_from(["passphrase", "age", "gpg", "none"]),
    params=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    data=st.binary(max_size=300),
    meta=st.binary(max_size=100),
)


@given(key_slots)
@settings(max_examples=200)
def test_key_slot_json_round_trip(slot: KeySlot) -> None:
    raw = slot.to_json()
    raw.decode("ascii")  # always plain ASCII JSON
    again = KeySlot.from_json(raw)
    assert again == slot
    assert again.to_json() == raw  # stable: same slot, same bytes


def test_key_slot_json_layout(secrets: MasterSecrets) -> None:
    slot = fast_passphrase_slot(secrets)
    document = json.loads(slot.to_json())
    assert document["version"] == 2
    assert list(document) == sorted(document)
    assert base64.b64decode(document["data"]) == slot.data
    # Only what opening needs is in the clear: no host, user, label, recipient or key id.
    assert set(document) == {"version", "id", "type", "params", "data", "meta"}
    assert set(document["params"]) == {"kdf", "n", "r", "p", "salt"}


def _slot_doc(slot: KeySlot, **changes: object) -> bytes:
    document = json.loads(slot.to_json())
    for key, value in changes.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    return json.dumps(document).encode()


def test_newer_key_slot_is_unsupported(secrets: MasterSecrets) -> None:
    raw = _slot_doc(wrap_none(secrets), version=7)
    with pytest.raises(UnsupportedFormat) as caught:
        KeySlot.from_json(raw)
    assert str(caught.value) == ("key slot written by a newer Phoenix (format 7); upgrade phoenix-backup")


def test_unknown_slot_type_is_unsupported(secrets: MasterSecrets) -> None:
    with pytest.raises(UnsupportedFormat, match="upgrade phoenix-backup"):
        KeySlot.from_json(_slot_doc(wrap_none(secrets), type="fido2"))


@pytest.mark.parametrize(
    "changes",
    [
        {"version": None},
        {"version": 0},
        {"version": True},
        {"id": None},
        {"id": "ABCDEF0123456789"},
        {"id": "0123"},
        {"id": 5},
        {"type": None},
        {"type": 3},
        {"params": None},
        {"meta": None},
        {"meta": "not base64!"},
        {"params": [1, 2]},
        {"data": None},
        {"data": "not base64!"},
    ],
)
def test_malformed_key_slot_is_corrupt(secrets: MasterSecrets, changes: dict[str, object]) -> None:
    with pytest.raises(CorruptObject):
        KeySlot.from_json(_slot_doc(wrap_none(secrets), **changes))


@pytest.mark.parametrize("raw", [b"", b"{", b"\xc3\x28", b'"a string"', b"null"])
def test_key_slot_that_is_not_a_json_object_is_corrupt(raw: bytes) -> None:
    with pytest.raises(CorruptObject):
        KeySlot.from_json(raw)


# ------------------------------------------------------------------------------------------
# Passphrase slots


def test_passphrase_round_trip(secrets: MasterSecrets) -> None:
    slot = fast_passphrase_slot(secrets, "correct horse battery staple")
    assert re.fullmatch(r"[0-9a-f]{16}", slot.id)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", slot.created)
    assert slot.type == "passphrase" and slot.label == "passphrase"
    assert slot.params["kdf"] == "scrypt"
    assert (slot.params["n"], slot.params["r"], slot.params["p"]) == (2**10, 8, 1)
    assert len(base64.b64decode(str(slot.params["salt"]))) == 16
    assert secrets.encryption_key not in slot.data
    assert unwrap(slot, Credentials(passphrase="correct horse battery staple")) == secrets
    # and after a trip through its JSON form
    loaded = KeySlot.from_json(slot.to_json())
    assert open_any([loaded], Credentials(passphrase="correct horse battery staple")) == (
        loaded,
        secrets,
    )


def test_default_scrypt_parameters(secrets: MasterSecrets) -> None:
    slot = wrap_passphrase(secrets, "pw")
    assert (slot.params["n"], slot.params["r"], slot.params["p"]) == (2**15, 8, 1)
    assert unwrap(slot, Credentials(passphrase="pw")) == secrets


def test_each_wrap_is_fresh(secrets: MasterSecrets) -> None:
    a, b = fast_passphrase_slot(secrets), fast_passphrase_slot(secrets)
    assert a.id != b.id and a.params["salt"] != b.params["salt"] and a.data != b.data


def test_wrong_passphrase(secrets: MasterSecrets) -> None:
    slot = fast_passphrase_slot(secrets, "right")
    assert unwrap(slot, Credentials(passphrase="wrong")) is None
    with pytest.raises(WrongPassphrase) as caught:
        open_any([slot], Credentials(passphrase="wrong"))
    message = str(caught.value)
    assert "wrong passphrase" in message and "PHX_PASSPHRASE" in message
    assert message.count(".") <= 1  # one sentence


def test_no_passphrase_is_missing_credentials(secrets: MasterSecrets) -> None:
    slot = fast_passphrase_slot(secrets)
    assert unwrap(slot, Credentials()) is None
    with pytest.raises(MissingCredentials) as caught:
        open_any([slot], Credentials())
    message = str(caught.value)
    assert "encrypted (passphrase)" in message
    assert "PHX_PASSPHRASE" in message and "PHX_PASSPHRASE_FILE" in message


def test_credentials_of_another_kind_find_no_slot_of_their_method(secrets: MasterSecrets) -> None:
    identity = pyrage.x25519.Identity.generate()
    with pytest.raises(WrongPassphrase, match=r"no key slot of the configured encryption \(age\), only passphrase"):
        open_any([fast_passphrase_slot(secrets)], Credentials(age_identities=(str(identity),)))


@pytest.mark.parametrize("position", [0, 5, 12, 20, -1])
def test_tampered_slot_does_not_open(secrets: MasterSecrets, position: int) -> None:
    slot = fast_passphrase_slot(secrets, "pw")
    data = bytearray(slot.data)
    data[position] ^= 0x01
    tampered = replace(slot, data=bytes(data))
    assert unwrap(tampered, Credentials(passphrase="pw")) is None
    with pytest.raises(WrongPassphrase):
        open_any([tampered], Credentials(passphrase="pw"))


def test_ciphertext_is_bound_to_its_slot_id(secrets: MasterSecrets) -> None:
    slot = fast_passphrase_slot(secrets, "pw")
    moved = replace(slot, id="0123456789abcdef" if slot.id != "0123456789abcdef" else "f" * 16)
    assert unwrap(moved, Credentials(passphrase="pw")) is None


def test_changed_salt_does_not_open(secrets: MasterSecrets) -> None:
    slot = fast_passphrase_slot(secrets, "pw")
    other = with_params(slot, salt=base64.b64encode(bytes(16)).decode())
    assert unwrap(other, Credentials(passphrase="pw")) is None


def test_passphrase_is_unicode_normalised(secrets: MasterSecrets) -> None:
    composed = unicodedata.normalize("NFC", "Grüße, café")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    slot = fast_passphrase_slot(secrets, composed)
    assert unwrap(slot, Credentials(passphrase=decomposed)) == secrets


@pytest.mark.parametrize(
    "changes",
    [
        {"n": 2**40},  # terabytes of memory
        {"n": 2**23},  # just over the ceiling
        {"n": 3000},  # not a power of two
        {"n": 1},
        {"n": 0},
        {"n": -1024},
        {"n": "1024"},
        {"n": 1024.0},
        {"n": True},
        {"r": 0},
        {"r": 33},
        {"r": 10**9},
        {"p": 0},
        {"p": 17},
        {"p": 2**31},
        {"n": 2**22, "r": 32},  # each within bounds, together 16 GiB
        {"n": None},
        {"kdf": "argon2id-from-the-future"},
        {"kdf": None},
        {"salt": "!!"},
        {"salt": base64.b64encode(b"short").decode()},
        {"salt": 5},
    ],
)
def test_hostile_scrypt_params_are_corrupt(secrets: MasterSecrets, changes: dict[str, object]) -> None:
    slot = fast_passphrase_slot(secrets, "pw")
    params = {**slot.params, **changes}
    hostile = replace(slot, params={k: v for k, v in params.items() if v is not None})
    # Through JSON, as it would arrive from a repository.
    hostile = KeySlot.from_json(hostile.to_json())
    with pytest.raises(CorruptObject):
        unwrap(hostile, Credentials(passphrase="pw"))
    with pytest.raises(CorruptObject):
        open_any([hostile], Credentials(passphrase="pw"))


def test_truncated_passphrase_data_is_corrupt(secrets: MasterSecrets) -> None:
    slot = replace(fast_passphrase_slot(secrets, "pw"), data=b"short")
    with pytest.raises(CorruptObject):
        unwrap(slot, Credentials(passphrase="pw"))


@pytest.mark.parametrize("kdf_params", [{"n": 1000}, {"n": 2**23}, {"r": 0}, {"p": 99}, {"salt": 1}])
def test_wrap_rejects_bad_scrypt_params(secrets: MasterSecrets, kdf_params: dict[str, int]) -> None:
    with pytest.raises(UsageError):
        wrap_passphrase(secrets, "pw", kdf_params=kdf_params)


def test_wrap_rejects_empty_passphrase(secrets: MasterSecrets) -> None:
    with pytest.raises(UsageError, match="empty"):
        wrap_passphrase(secrets, "", kdf_params=FAST)


def test_wrap_rejects_a_new_passphrase_of_spaces_but_keeps_an_old_one(secrets: MasterSecrets) -> None:
    with pytest.raises(UsageError, match="only spaces"):
        wrap_passphrase(secrets, " \t ", kdf_params=FAST)
    # A repository whose passphrase was chosen before: `phx key rotate` seals it again and it opens.
    slot = wrap_passphrase(secrets, "  ", kdf_params=FAST, kept=True)
    assert open_any([slot], Credentials(passphrase="  "))[1].to_bytes() == secrets.to_bytes()


@pytest.mark.parametrize(
    "blank",
    [
        "\n",
        "\t\t",
        "\u00a0\u00a0",
        "\u3000",
        "\u200b",
        "\u200b\u200c\u200d",
        "\ufeff",
        " \u2060 ",
        "\u180e",
        # Default-ignorable characters outside category Cf, and the braille blank: before, each of
        # these was taken as a passphrase.
        "\u115f\u1160",
        "\u3164",
        "\uffa0",
        "\u2800",
        "\ufe00\ufe0f",
        "\U000e0100\U000e01ef",
        "\u034f",
        "\u17b4\u17b5",
        "\u180b\u180f",
        "\u2065",
        "\ufff0",
        " \u3164\u2800 ",
    ],
    ids=[
        "newline",
        "tabs",
        "nbsp",
        "ideographic-space",
        "zwsp",
        "zero-width-joiners",
        "bom",
        "word-joiner",
        "mvs",
        "hangul-choseong-jungseong-fillers",
        "hangul-filler",
        "halfwidth-hangul-filler",
        "braille-blank",
        "variation-selectors",
        "variation-selectors-supplement",
        "combining-grapheme-joiner",
        "khmer-inherent-vowels",
        "mongolian-variation-selectors",
        "unassigned-ignorable",
        "unassigned-specials",
        "mixed",
    ],
)
def test_wrap_rejects_a_new_passphrase_of_any_blank_characters(secrets: MasterSecrets, blank: str) -> None:
    """Other Unicode white space and the invisible format characters `str.strip` keeps (zero-width
    space, byte-order mark) are spaces alone too; a visible character among them makes a passphrase."""
    with pytest.raises(UsageError, match="only spaces"):
        wrap_passphrase(secrets, blank, kdf_params=FAST)
    slot = wrap_passphrase(secrets, blank + "x", kdf_params=FAST)
    assert open_any([slot], Credentials(passphrase=blank + "x"))[1].to_bytes() == secrets.to_bytes()


def test_authenticated_but_invalid_secrets_are_corrupt(secrets: MasterSecrets) -> None:
    """A slot that decrypts fine but holds nonsense (a buggy writer) is corrupt, not 'wrong'."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    slot = fast_passphrase_slot(secrets, "pw")
    salt = base64.b64decode(str(slot.params["salt"]))
    kek = Scrypt(salt=salt, length=32, n=2**10, r=8, p=1).derive(b"pw")
    nonce = bytes(12)
    sealed = AESGCM(kek).encrypt(nonce, b'{"version":1}', b"phoenix-key-slot-v1" + slot.id.encode())
    with pytest.raises(CorruptObject):
        unwrap(replace(slot, data=nonce + sealed), Credentials(passphrase="pw"))


# ------------------------------------------------------------------------------------------
# age slots


def test_age_round_trip(secrets: MasterSecrets) -> None:
    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())
    slot = wrap_age(secrets, [recipient])
    assert slot.type == "age"
    assert slot.params == {}  # the recipient is in the sealed metadata only
    assert slot.label == f"age {recipient[:12]}…" and slot.info is not None and slot.info.recipients == (recipient,)
    assert recipient.encode() not in slot.to_json()
    assert KeySlot.from_json(slot.to_json()).with_info(secrets).info == slot.info
    loaded = KeySlot.from_json(slot.to_json())
    assert unwrap(loaded, Credentials(age_identities=(str(identity),))) == secrets
    assert open_any([loaded], Credentials(age_identities=(str(identity),))) == (loaded, secrets)


def test_age_wrong_identity(secrets: MasterSecrets) -> None:
    identity = pyrage.x25519.Identity.generate()
    stranger = str(pyrage.x25519.Identity.generate())
    slot = wrap_age(secrets, [str(identity.to_public())])
    assert unwrap(slot, Credentials(age_identities=(stranger,))) is None
    with pytest.raises(WrongPassphrase):
        open_any([slot], Credentials(age_identities=(stranger,)))
    with pytest.raises(MissingCredentials, match=r"\(age\).*identityFile"):
        open_any([slot], Credentials())


def test_age_several_recipients_and_identities(secrets: MasterSecrets) -> None:
    alice, bob = pyrage.x25519.Identity.generate(), pyrage.x25519.Identity.generate()
    slot = wrap_age(secrets, [str(alice.to_public()), str(bob.to_public())])
    assert slot.label.endswith("(+1 more)")
    stranger = str(pyrage.x25519.Identity.generate())
    assert unwrap(slot, Credentials(age_identities=(str(bob),))) == secrets
    assert unwrap(slot, Credentials(age_identities=(stranger, str(alice)))) == secrets


def _age_to_strangers(count: int) -> bytes:
    """An age file to `count` recipients nobody here holds: what anyone can write into keys/."""
    return bytes(pyrage.encrypt(b"x" * 64, [pyrage.x25519.Identity.generate().to_public() for _ in range(count)]))


def test_an_age_slot_naming_hundreds_of_recipients_is_skipped_unread(secrets: MasterSecrets) -> None:
    # age's decryption time grows with the square of the recipients a file names: 1,000 of them
    # (98 KB) took 17 s, 2,000 took 65 s, on every opening of an age repository.
    identity = pyrage.x25519.Identity.generate()
    own = wrap_age(secrets, [str(identity.to_public())])
    planted = replace(own, id="0" * 16, data=_age_to_strangers(600))
    started = cpu_seconds()
    assert open_any([planted, own], Credentials(age_identities=(str(identity),))) == (own, secrets)
    assert cpu_seconds() - started < 1  # 5 s before
    with pytest.raises(UsageError, match="at most 32"):
        wrap_age(secrets, [str(pyrage.x25519.Identity.generate().to_public()) for _ in range(33)])


def test_a_pile_of_planted_age_slots_costs_a_second_not_minutes(secrets: MasterSecrets) -> None:
    identity = pyrage.x25519.Identity.generate()
    own = wrap_age(secrets, [str(identity.to_public())])
    data = _age_to_strangers(32)  # each try costs 25 ms
    pile = [replace(own, id=f"{i:016x}", data=data) for i in range(300)]
    creds = Credentials(age_identities=(str(identity),))
    started = cpu_seconds()
    with pytest.raises(KdfBudgetExceeded, match="delete the keys/ objects you did not create"):
        open_any([*pile, own], creds)
    assert cpu_seconds() - started < 3  # 8 s before
    assert open_any([*pile[:5], own], creds) == (own, secrets)


@pytest.mark.parametrize("recipient", ["age1notarecipient", "", "ssh-ed25519 AAAA", "AGE-SECRET"])
def test_age_bad_recipient_is_a_usage_error(secrets: MasterSecrets, recipient: str) -> None:
    with pytest.raises(UsageError) as caught:
        wrap_age(secrets, [recipient])
    assert repr(recipient) in str(caught.value) and "age-keygen -y" in str(caught.value)


def test_age_no_recipients(secrets: MasterSecrets) -> None:
    with pytest.raises(UsageError, match="recipient"):
        wrap_age(secrets, [])


def test_age_bad_identity_is_a_usage_error_without_echoing_it(secrets: MasterSecrets) -> None:
    slot = wrap_age(secrets, [str(pyrage.x25519.Identity.generate().to_public())])
    with pytest.raises(UsageError) as caught:
        unwrap(slot, Credentials(age_identities=("AGE-SECRET-KEY-1BOGUSSECRET",)))
    assert "BOGUSSECRET" not in str(caught.value)


def test_load_age_identities(tmp_path: Path) -> None:
    first, second = pyrage.x25519.Identity.generate(), pyrage.x25519.Identity.generate()
    path = tmp_path / "keys.txt"
    path.write_text(f"# created: 2026-01-01T00:00:00Z\n# public key: {first.to_public()}\n{first}\n\n   {second}  \n")
    assert load_age_identities(path) == (str(first), str(second))


def test_load_age_identities_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.txt"
    with pytest.raises(UsageError, match=re.escape(str(path))):
        load_age_identities(path)


def test_load_age_identities_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=re.escape(str(tmp_path))):
        load_age_identities(tmp_path)  # a directory
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UsageError, match=re.escape(str(binary))):
        load_age_identities(binary)


@pytest.mark.parametrize("content", ["", "# only a comment\n", "hello\n", "AGE-SECRET-KEY-1NOPE\n"])
def test_load_age_identities_bad_content(tmp_path: Path, content: str) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(content)
    with pytest.raises(UsageError, match=re.escape(str(path))):
        load_age_identities(path)


# ------------------------------------------------------------------------------------------
# gpg slots


def test_gpg_round_trip(secrets: MasterSecrets, gpg_home: Path) -> None:
    slot = wrap_gpg(secrets, GPG_EMAIL, homedir=gpg_home)
    assert slot.type == "gpg" and slot.label == f"gpg {GPG_EMAIL}"
    assert slot.params == {} and slot.info is not None and slot.info.key_id == GPG_EMAIL
    assert GPG_EMAIL.encode() not in slot.to_json()
    loaded = KeySlot.from_json(slot.to_json())
    assert unwrap(loaded, Credentials(gpg_homedir=gpg_home)) == secrets
    assert open_any([loaded], Credentials(gpg_homedir=gpg_home)) == (loaded, secrets)


def test_gpg_honours_gnupghome(secrets: MasterSecrets, gpg_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GNUPGHOME", str(gpg_home))
    slot = wrap_gpg(secrets, GPG_EMAIL)
    assert unwrap(slot, Credentials()) == secrets


def test_gpg_without_the_secret_key(secrets: MasterSecrets, gpg_home: Path, empty_gpg_home: Path) -> None:
    slot = wrap_gpg(secrets, GPG_EMAIL, homedir=gpg_home)
    assert unwrap(slot, Credentials(gpg_homedir=empty_gpg_home)) is None
    with pytest.raises(WrongPassphrase):
        open_any([slot], Credentials(gpg_homedir=empty_gpg_home))
    # nothing supplied and the default keyring (GNUPGHOME, empty here) cannot open it
    with pytest.raises(MissingCredentials, match=re.escape("secret key of encryption.keyId")):
        open_any([slot], Credentials())


def test_gpg_unknown_key(secrets: MasterSecrets, gpg_home: Path) -> None:
    with pytest.raises(UsageError) as caught:
        wrap_gpg(secrets, "nobody@example.invalid", homedir=gpg_home)
    message = str(caught.value)
    assert "nobody@example.invalid" in message and "gpg --list-keys" in message


@pytest.fixture(scope="module")
def foreign_gpg_slot() -> Iterator[KeySlot]:
    """A gpg slot anyone can write: encrypted to a key of their own, its recipient hidden."""
    if GPG is None:
        pytest.skip("gpg is not installed")
    attacker = Path(tempfile.mkdtemp(prefix="phxgpgA"))
    try:
        subprocess.run(
            # The owner's key algorithm (gpg_home's), so that gpg tries each session key packet.
            [
                *(GPG, "--homedir", str(attacker), "--batch", "--passphrase", ""),
                *("--quick-gen-key", "a@example.invalid", "future-default", "default", "never"),
            ],
            check=True,
            capture_output=True,
        )
        yield wrap_gpg(MasterSecrets.generate(), "a@example.invalid", homedir=attacker)
    finally:
        _kill_agent(attacker)
        shutil.rmtree(attacker, ignore_errors=True)


def test_a_pile_of_planted_gpg_slots_costs_a_second_not_minutes(
    secrets: MasterSecrets, gpg_home: Path, foreign_gpg_slot: KeySlot
) -> None:
    # Each such slot costs one gpg run (about 14 ms): a thousand made every opening take 14 s.
    pile = [replace(foreign_gpg_slot, id=f"{i:016x}") for i in range(300)]
    own = wrap_gpg(secrets, GPG_EMAIL, homedir=gpg_home)
    creds = Credentials(gpg_homedir=gpg_home)
    started = cpu_seconds()
    with pytest.raises(KdfBudgetExceeded, match="delete the keys/ objects you did not create"):
        open_any([*pile, own], creds)
    assert cpu_seconds() - started < 3  # 4 s before, and 14 s for a thousand
    assert open_any([*pile[:5], own], creds) == (own, secrets)


def test_a_gpg_slot_of_hundreds_of_session_keys_is_skipped_unread(
    secrets: MasterSecrets, gpg_home: Path, foreign_gpg_slot: KeySlot
) -> None:
    # gpg tries every public-key session key packet of a message on the secret keys it holds,
    # 4 ms each for this key (20 ms for an RSA key): one slot of 1,000 of them (400 KB) took 4 s
    # (24 s), and an opening tries 32 slots. Phoenix writes one.
    data = foreign_gpg_slot.data
    assert not data[0] & 0x40 and data[0] & 0x03 < 3, "gpg writes its session key packet in the old format"
    size = 1 << (data[0] & 0x03)  # old format: a length of 1, 2 or 4 bytes
    first = 1 + size + int.from_bytes(data[1 : 1 + size], "big")
    planted = replace(foreign_gpg_slot, id="0" * 16, data=data[:first] * 1000 + data[first:])
    own = wrap_gpg(secrets, GPG_EMAIL, homedir=gpg_home)
    started = cpu_seconds()
    assert open_any([planted, own], Credentials(gpg_homedir=gpg_home)) == (own, secrets)
    assert cpu_seconds() - started < 1.5  # 4 s before


@pytest.mark.parametrize("key_id", ["", "   ", "--armor", "a\nb"])
def test_gpg_bad_key_id(secrets: MasterSecrets, key_id: str) -> None:
    with pytest.raises(UsageError):
        wrap_gpg(secrets, key_id)


def test_gpg_missing_binary(secrets: MasterSecrets, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-gpg")
    with pytest.raises(ToolMissing) as caught:
        wrap_gpg(secrets, GPG_EMAIL, gpg=missing)
    assert str(caught.value) == (
        "gpg is not installed; install GnuPG (apt install gnupg) or choose another encryption method"
    )
    slot = replace(wrap_none(secrets), type="gpg", params={}, data=b"x")
    with pytest.raises(ToolMissing):
        unwrap(slot, Credentials(gpg_binary=missing))
    with pytest.raises(ToolMissing):
        open_any([slot], Credentials(gpg_binary=missing))
    # ...but a missing gpg does not stand in the way of another slot that opens
    other = fast_passphrase_slot(secrets, "pw")
    assert open_any([slot, other], Credentials(passphrase="pw", gpg_binary=missing))[0] == other


# ------------------------------------------------------------------------------------------
# none slots and several slots


def test_none_slot_opens_without_credentials(secrets: MasterSecrets) -> None:
    slot = wrap_none(secrets)
    assert slot.type == "none" and slot.params == {}
    assert MasterSecrets.from_bytes(slot.data) == secrets
    assert unwrap(slot, Credentials()) == secrets
    assert open_any([KeySlot.from_json(slot.to_json())], Credentials())[1] == secrets


def test_open_any_with_no_slots() -> None:
    with pytest.raises(CorruptObject):
        open_any([], Credentials(passphrase="pw"))


@pytest.fixture(scope="module")
def mixed(secrets: MasterSecrets, gpg_home: Path) -> tuple[list[KeySlot], str]:
    identity = pyrage.x25519.Identity.generate()
    slots = [
        fast_passphrase_slot(secrets, "first"),
        wrap_gpg(secrets, GPG_EMAIL, homedir=gpg_home),
        wrap_age(secrets, [str(identity.to_public())]),
        fast_passphrase_slot(secrets, "second"),
    ]
    return slots, str(identity)


def test_open_any_finds_the_slot_that_fits(
    secrets: MasterSecrets, gpg_home: Path, mixed: tuple[list[KeySlot], str]
) -> None:
    slots, identity = mixed
    assert open_any(slots, Credentials(passphrase="first")) == (slots[0], secrets)
    assert open_any(slots, Credentials(passphrase="second")) == (slots[3], secrets)
    assert open_any(slots, Credentials(age_identities=(identity,))) == (slots[2], secrets)
    assert open_any(slots, Credentials(gpg_homedir=gpg_home)) == (slots[1], secrets)
    assert open_any(slots, Credentials(passphrase="wrong", age_identities=(identity,))) == (
        slots[2],
        secrets,
    )


def test_open_any_mixed_failures(mixed: tuple[list[KeySlot], str]) -> None:
    slots, _ = mixed
    with pytest.raises(WrongPassphrase):
        open_any(slots, Credentials(passphrase="third"))
    with pytest.raises(MissingCredentials) as caught:
        open_any(slots, Credentials())
    message = str(caught.value)
    assert "(age, passphrase, gpg)" in message
    assert "PHX_PASSPHRASE" in message and "identityFile" in message
    assert "gpg --list-secret-keys" in message


def test_corrupt_slot_does_not_block_a_good_one(secrets: MasterSecrets) -> None:
    good = fast_passphrase_slot(secrets, "pw")
    hostile = with_params(fast_passphrase_slot(secrets, "pw"), n=2**40)
    assert open_any([hostile, good], Credentials(passphrase="pw")) == (good, secrets)


def test_none_slot_among_encrypted_ones(secrets: MasterSecrets) -> None:
    none = wrap_none(secrets)
    slots = [fast_passphrase_slot(secrets, "pw"), none]
    assert open_any(slots, Credentials()) == (none, secrets)
