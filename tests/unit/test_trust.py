"""The decoders of `config` and key slots under fuzzing, the config's authentication, the rule
that only the configured method opens a repository, the gpg packet check, and the pin file.

Hypothesis runs a small budget by default; `PHX_TEST_HEAVY=1` runs a large one. The crafted
attacks of issue 14 are kept as a regression corpus (tests/unit/corpus/)."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phoenix_backup.errors import (
    ConfigError,
    ConfigNotAuthenticated,
    CorruptObject,
    KeyChanged,
    UnsupportedFormat,
    WrongPassphrase,
)
from phoenix_backup.repo import keys
from phoenix_backup.repo.pack import PackIds
from phoenix_backup.repo.pins import Pins
from phoenix_backup.repo.repository import FORMAT_VERSION, RepoConfig, Repository
from phoenix_backup.storage.local import LocalBackend

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
BUDGET = settings(max_examples=20_000 if HEAVY else 150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CORPUS = Path(__file__).parent / "corpus"
FAST = {"n": 2**10}

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=16,
)


def _config(secrets: keys.MasterSecrets, encrypted: bool = True) -> RepoConfig:
    return RepoConfig(
        "ab" * 16, 2, "2026-01-01T00:00:00+00:00", encrypted, {"min": 524288, "avg": 1048576, "max": 8388608}, 64
    ).signed(secrets)


# -- fuzzing the decoders -------------------------------------------------------------------


@given(st.binary(max_size=400))
@BUDGET
def test_config_decoder_on_any_bytes(raw: bytes) -> None:
    with contextlib.suppress(CorruptObject, UnsupportedFormat):
        RepoConfig.from_bytes(raw, "fuzz")


@given(
    st.sampled_from(["id", "version", "encryption", "chunker", "sqliteRunPages", "mac", "created", "x"]), json_values
)
@BUDGET
def test_config_decoder_on_any_field_value(key: str, value: object) -> None:
    secrets = keys.MasterSecrets(bytes(32), bytes(32), 1)
    doc = json.loads(_config(secrets).to_bytes())
    doc[key] = value
    try:
        config = RepoConfig.from_bytes(json.dumps(doc).encode(), "fuzz")
    except (CorruptObject, UnsupportedFormat):
        return
    # Whatever still parses is either not authenticated by the key, or exactly the original.
    if config.problem(secrets, "passphrase") is None:
        assert json.loads(config.to_bytes()) == json.loads(_config(secrets).to_bytes())


@given(st.binary(max_size=600))
@BUDGET
def test_key_slot_decoder_on_any_bytes(raw: bytes) -> None:
    with contextlib.suppress(CorruptObject, UnsupportedFormat):
        keys.KeySlot.from_json(raw)


@given(st.sampled_from(["version", "id", "type", "params", "data", "meta", "host", "label"]), json_values)
@BUDGET
def test_key_slot_decoder_on_any_field_value(key: str, value: object) -> None:
    secrets = keys.MasterSecrets(bytes(32), bytes(32), 1)
    doc = json.loads(keys.wrap_none(secrets).to_json())
    doc[key] = value
    try:
        slot = keys.KeySlot.from_json(json.dumps(doc).encode())
    except (CorruptObject, UnsupportedFormat):
        return
    slot.with_info(secrets)  # never raises: metadata that does not open is simply unknown
    with contextlib.suppress(CorruptObject):
        keys.unwrap(slot, keys.Credentials(passphrase="pw"))


@given(st.binary(max_size=200))
@BUDGET
def test_slot_metadata_decoder_on_any_bytes(raw: bytes) -> None:
    with contextlib.suppress(CorruptObject):
        keys.SlotInfo.from_bytes(raw, "fuzz")


@given(st.binary(max_size=300))
@BUDGET
def test_gpg_packet_check_on_any_bytes(raw: bytes) -> None:
    assert keys._public_key_message(raw) in (True, False)


# -- the regression corpus of crafted attacks -----------------------------------------------


def _corpus(kind: str) -> list[Path]:
    return sorted((CORPUS / kind).iterdir())


@pytest.mark.parametrize("path", _corpus("configs"), ids=lambda p: p.name)
def test_crafted_configs_are_refused(path: Path) -> None:
    """Each is refused before use: malformed, a path as id, or not authenticated by the key."""
    secrets = keys.MasterSecrets(bytes(32), bytes(32), 1)
    try:
        config = RepoConfig.from_bytes(path.read_bytes(), path.name)
    except CorruptObject:
        return
    assert config.problem(secrets, "passphrase") is not None


@pytest.mark.parametrize("path", _corpus("slots"), ids=lambda p: p.name)
def test_crafted_slots_never_open_an_encrypted_repository(path: Path, tmp_path: Path) -> None:
    """A `none` slot and a `gpg --store` slot, planted beside the owner's passphrase slot."""
    owner = keys.MasterSecrets.generate()
    backend = LocalBackend(tmp_path / "repo")
    Repository.init(backend, lambda m: keys.wrap_passphrase(m, "pw", kdf_params=FAST), True)
    (tmp_path / "repo" / "keys" / json.loads(path.read_bytes())["id"]).write_bytes(path.read_bytes())
    for methods in ({"passphrase"}, {"passphrase", "gpg", "none"}):
        creds = keys.Credentials(passphrase="pw", methods=frozenset(methods))
        assert Repository.open(backend, creds).secrets != owner
        opened = Repository.open(backend, creds)
        assert opened.opened_with != json.loads(path.read_bytes())["id"]
    with pytest.raises((WrongPassphrase, CorruptObject)):
        Repository.open(backend, keys.Credentials(passphrase="wrong", methods=frozenset({"passphrase", "gpg"})))


# -- config authentication ------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"encryption": "none"},
        {"chunker": {"algorithm": "fastcdc-2020", "min": 65536, "avg": 131072, "max": 262144}},
        {"sqliteRunPages": 1},
        {"id": "cd" * 16},
        {"created": "2020-01-01T00:00:00+00:00"},
    ],
)
def test_every_parameter_is_authenticated(change: dict[str, object]) -> None:
    secrets = keys.MasterSecrets.generate()
    doc = {**json.loads(_config(secrets).to_bytes()), **change}
    config = RepoConfig.from_bytes(json.dumps(doc).encode(), "test")
    assert config.problem(secrets, "passphrase") is not None
    assert _config(secrets).problem(secrets, "passphrase") is None
    assert _config(secrets).problem(keys.MasterSecrets.generate(), "passphrase") is not None


def test_none_slots_and_encrypted_configs_never_go_together() -> None:
    secrets = keys.MasterSecrets.generate()
    assert _config(secrets, encrypted=True).problem(secrets, "none") is not None
    assert _config(secrets, encrypted=False).problem(secrets, "passphrase") is not None
    legacy = RepoConfig("ab" * 16, 1, "t", True, {"min": 64, "avg": 512, "max": 1024}, 64)
    assert legacy.problem(secrets, "none") is not None and legacy.problem(secrets, "age") is None


def test_only_the_configured_method_opens() -> None:
    owner, attacker = keys.MasterSecrets.generate(), keys.MasterSecrets.generate()
    slots = [keys.wrap_none(attacker), keys.wrap_passphrase(owner, "pw", kdf_params=FAST)]
    creds = keys.Credentials(passphrase="pw", methods=frozenset({"passphrase"}))
    assert [m for _s, m in keys.open_slots(slots, creds)] == [owner]
    with pytest.raises(WrongPassphrase, match="no key slot of the configured encryption"):
        keys.open_any([slots[0]], keys.Credentials(methods=frozenset({"passphrase"})))


def test_gpg_packet_check() -> None:
    pkesk = bytes([0xC1, 3, 3, 0, 0])  # new-format public-key session key packet
    seipd = bytes([0xD2, 2, 1, 0])  # new-format SEIPD
    skesk = bytes([0xC3, 2, 4, 9])
    literal = bytes([0xCB, 3, ord("b"), 0, 0])
    old_pkesk = bytes([0x84, 2, 3, 0])  # old format, tag 1, one length byte
    old_sed = bytes([0xA4, 1, 0])  # old format, tag 9
    assert keys._public_key_message(pkesk + seipd)
    assert keys._public_key_message(old_pkesk + old_sed)
    assert not keys._public_key_message(seipd)
    assert not keys._public_key_message(skesk + seipd)
    assert not keys._public_key_message(pkesk + skesk + seipd)
    assert not keys._public_key_message(literal)
    assert not keys._public_key_message(b"")


# -- the pin file ---------------------------------------------------------------------------


def test_pins_record_and_refuse_a_changed_key(tmp_path: Path) -> None:
    pins = Pins(tmp_path / "data" / "pins.json")
    backend = LocalBackend(tmp_path / "repo")
    repo = Repository.init(backend, lambda m: keys.wrap_passphrase(m, "pw", kdf_params=FAST), True, pins=pins)
    creds = keys.Credentials(passphrase="pw")
    assert Repository.open(backend, creds, pins=pins).secrets == repo.secrets
    assert stat.S_IMODE(pins.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pins.path.parent.stat().st_mode) == 0o700
    pin = pins.get(repo.config.id)
    assert pin is not None and pin.fingerprint == repo.secrets.fingerprint
    assert pin.format == repo.config.version == FORMAT_VERSION
    # Someone replaces config and slot with their own under the same id.
    attacker = keys.MasterSecrets.generate()
    (tmp_path / "repo" / "config").write_bytes(repo.config.signed(attacker).to_bytes())
    slot = keys.wrap_passphrase(attacker, "pw", kdf_params=FAST)
    (tmp_path / "repo" / "keys" / slot.id).write_bytes(slot.to_json())
    with pytest.raises(KeyChanged, match="changed"):
        Repository.open(backend, creds, pins=pins)
    # Without a pin, the config says which key is the repository's: here the attacker's (it is
    # theirs now, and a first use cannot know better; see docs/security.md).
    assert Repository.open(backend, creds, pins=Pins(tmp_path / "other" / "pins.json")).secrets == attacker
    # A downgraded config (format 1, no MAC) is refused where an authenticated format (2 to 4) was seen.
    doc = json.loads(repo.config.to_bytes())
    doc["version"] = 1
    del doc["mac"]
    (tmp_path / "repo" / "config").write_text(json.dumps(doc))
    with pytest.raises(ConfigNotAuthenticated, match="downgraded"):
        Repository.open(backend, creds, pins=pins)


def test_damaged_pin_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "pins.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"pin file .* is damaged"):
        Pins(path).get("ab" * 16)


def test_concurrent_pins_lose_nothing(tmp_path: Path) -> None:
    pins = Pins(tmp_path / "pins.json")

    def record(i: int) -> None:
        pins.record(f"{i:032x}", f"/repo/{i}", "0000:" * 7 + "0000", format=2)

    threads = [threading.Thread(target=record, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    doc = json.loads(pins.path.read_text())
    assert len(doc["repositories"]) == 16


def test_fingerprint_format() -> None:
    secrets = keys.MasterSecrets(bytes(32), bytes(32), 1)
    fp = secrets.fingerprint
    assert keys.format_fingerprint(fp.replace(":", "").upper()) == fp
    assert len(fp) == 39 and fp.count(":") == 7
    assert keys.MasterSecrets(bytes(31) + b"\1", bytes(32), 1).fingerprint != fp
    with pytest.raises(ValueError):
        keys.format_fingerprint("zz")


@pytest.mark.parametrize("pack_ids", [PackIds.SHA256, PackIds.BLAKE3], ids=["format-2-to-3", "format-4"])
def test_a_write_only_repository_put_back_to_its_old_config_is_refused(tmp_path: Path, pack_ids: PackIds) -> None:
    """Someone who can write the storage, with a copy of it from before `phx key add --write-only`,
    puts the old config and passphrase slot back: both are authenticated by the same master key, so
    only the pin can tell that this machine saw the repository write-only. A format 2 repository
    becomes format 3 when made write-only; a format 4 one stays format 4, so its version alone
    cannot tell."""
    import pyrage

    from phoenix_backup.repo.writer import convert

    pins = Pins(tmp_path / "data" / "pins.json")
    backend = LocalBackend(tmp_path / "repo")
    repo = Repository.init(
        backend, lambda m: keys.wrap_passphrase(m, "pw", kdf_params=FAST), True, pins=pins, pack_ids=pack_ids
    )
    before = {p.relative_to(tmp_path / "repo"): p.read_bytes() for p in (tmp_path / "repo").rglob("*") if p.is_file()}
    identity = pyrage.x25519.Identity.generate()
    converted = convert(repo, (str(identity.to_public()),), tmp_path / "writer").repository
    owner = keys.Credentials(age_identities=(str(identity),))
    assert Repository.open(backend, owner, pins=pins).config.write_only is not None
    # The attacker's roll-back: the config and key slot of before, byte for byte.
    for rel, data in before.items():
        (tmp_path / "repo" / rel).write_bytes(data)
    assert RepoConfig.from_bytes((tmp_path / "repo" / "config").read_bytes(), "repo").write_only is None
    for creds in (owner, keys.Credentials(passphrase="pw")):
        with pytest.raises(ConfigNotAuthenticated, match="write-only"):
            Repository.open(backend, creds, pins=pins)
    # The config the owner saw opens again.
    (tmp_path / "repo" / "config").write_bytes(converted.config.to_bytes())
    assert Repository.open(backend, owner, pins=pins).config.write_only is not None
