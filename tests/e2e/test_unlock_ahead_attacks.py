"""Issue 20, adversary: `phx backup` and `phx restore` derive the passphrase slot's key ahead of
their work (`ops.context.unlock_ahead`), reading the repository's config and key slots before the
real opening does. An attacker who can write the storage, or a careless user, must gain nothing
from that: the key-derivation budget (repo/keys.py `KdfBudget`) bounds both readings together,
a wrong passphrase is one sentence with one scrypt per slot, and nothing read ahead decides."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
import shutil
import tracemalloc
from pathlib import Path

import pytest
from e2e_support import Sandbox, assert_error

from phoenix_backup.config import load_config
from phoenix_backup.errors import CorruptObject, KdfBudgetExceeded, KeyChanged, WrongPassphrase
from phoenix_backup.ops import context
from phoenix_backup.ops import key as key_ops
from phoenix_backup.repo import keys

# Scrypt parameters that cost nothing: the attacker's slots are many, not slow, in these tests.
CHEAP = {"n": 2, "r": 1, "p": 1}


def planted(count: int, secret: str) -> dict[str, bytes]:
    """`count` passphrase slots of another key, as anyone who can write the storage can add."""
    other = keys.MasterSecrets.generate()
    slots = [keys.wrap_passphrase(other, f"{secret} {i}", kdf_params=CHEAP) for i in range(count)]
    return {slot.id: slot.to_json() for slot in slots}


def put(folder: Path, objects: dict[str, bytes]) -> None:
    for name, raw in objects.items():
        (folder / name).write_bytes(raw)


def counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each scrypt run's work (n*r*p), in the order run, from no key derived in this process."""
    runs: list[int] = []
    monkeypatch.setattr(keys, "_slot_keys", {})
    derive = keys._derive_kek

    def counted(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
        runs.append(n * r * p)
        return derive(passphrase, salt, n, r, p)

    monkeypatch.setattr(keys, "_derive_kek", counted)
    return runs


def test_slots_swapped_after_the_opening_ahead_cost_no_more_than_one_opening(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The attacker fills keys/ with slots, lets the opening ahead try them, then puts others in
    # their place for the real opening: the two must not spend twice the work one opening may.
    sb = backed_up
    keys_dir = sb.repo / "keys"
    owner = {p.name: p.read_bytes() for p in keys_dir.iterdir()}
    put(keys_dir, planted(keys.MAX_PASSPHRASE_SLOTS_TRIED + 1, "first"))
    second = planted(keys.MAX_PASSPHRASE_SLOTS_TRIED + 1, "second")
    envx = context.Environment(env=sb.env_with(PHX_PASSPHRASE="a careless guess"))
    cfg = load_config(sb.config_path, envx.env)
    runs = counting(monkeypatch)
    context.unlock_ahead(cfg, envx)
    shutil.rmtree(keys_dir)
    keys_dir.mkdir()
    put(keys_dir, owner | second)
    with pytest.raises((KdfBudgetExceeded, WrongPassphrase)):
        context.open_repository(cfg, envx)
    assert len(runs) <= keys.MAX_PASSPHRASE_SLOTS_TRIED, f"{len(runs)} scrypt runs for one command"


def test_the_owners_slot_behind_planted_ones_still_opens(backed_up: Sandbox, tmp_path: Path) -> None:
    # As many slots as one opening tries, the owner's among them anywhere: the opening ahead and
    # the real one try them in the same order, and a key derived ahead costs the real one nothing.
    sb = backed_up
    put(sb.repo / "keys", planted(keys.MAX_PASSPHRASE_SLOTS_TRIED - 1, "planted"))
    sb.backup()
    sb.phx("restore", "--latest", "--to", tmp_path / "out", "--yes")
    assert (tmp_path / "out" / "workspace" / "SOUL.md").read_bytes() == (sb.workspace / "SOUL.md").read_bytes()
    assert len(sb.snapshots()) == 2


def test_a_wrong_passphrase_runs_each_slots_scrypt_once(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As many slots as one opening tries: all of them ahead, all again (derived) in the real
    # opening, which still says "wrong passphrase", not that the slots ask for too much work.
    sb = backed_up
    put(sb.repo / "keys", planted(keys.MAX_PASSPHRASE_SLOTS_TRIED - 1, "planted"))
    envx = context.Environment(env=sb.env_with(PHX_PASSPHRASE="a careless guess"))
    cfg = load_config(sb.config_path, envx.env)
    runs = counting(monkeypatch)
    context.unlock_ahead(cfg, envx)
    with pytest.raises(WrongPassphrase):
        context.open_repository(cfg, envx)
    assert len(runs) == keys.MAX_PASSPHRASE_SLOTS_TRIED
    for args in (("backup",), ("restore", "--latest", "--to", str(tmp_path / "out"), "--yes")):
        assert_error(sb.phx(*args, env=envx.env, check=None), 1, "wrong passphrase")


def test_nothing_read_ahead_decides(backed_up: Sandbox, tmp_path: Path) -> None:
    # The opening ahead reads a repository made with the same passphrase (a careless user's second
    # `phx init` elsewhere, or an attacker's copy of one); then the owner's is back, and the other
    # way round.
    sb = backed_up
    envx = context.Environment(env=sb.env)
    cfg = load_config(sb.config_path, envx.env)
    other = tmp_path / "other"
    elsewhere = sb.env_with(XDG_DATA_HOME=str(tmp_path / "elsewhere"))  # pinned on another machine
    context.open_repository(
        dataclasses.replace(cfg, backup_dir=other), context.Environment(env=elsewhere), create=True, kdf_params=CHEAP
    ).close()
    owner = tmp_path / "owner"
    shutil.copytree(sb.repo, owner)

    def swap(to: Path) -> None:
        shutil.rmtree(sb.repo)
        shutil.copytree(to, sb.repo)

    swap(other)
    context.unlock_ahead(cfg, envx)
    swap(owner)
    repo = context.open_repository(cfg, envx)
    assert repo.config.raw == (owner / "config").read_bytes()
    repo.close()
    envx = context.Environment(env=sb.env)
    context.unlock_ahead(cfg, envx)
    swap(other)
    with pytest.raises(KeyChanged, match="not the one this machine used before"):
        context.open_repository(cfg, envx)


def test_a_passphrase_removed_or_changed_no_longer_opens_in_the_same_process(backed_up: Sandbox) -> None:
    # The keys a process derived are kept for as long as it runs: they must open only the slots
    # they were derived for, never the repository after their passphrase left it.
    sb = backed_up
    cfg = load_config(sb.config_path, sb.env)
    second = context.Environment(env=sb.env_with(PHX_PASSPHRASE="a second person's passphrase"))
    added = key_ops.key_add(
        cfg, context.Environment(env=sb.env_with(PHX_NEW_PASSPHRASE=second.env["PHX_PASSPHRASE"])), method="passphrase"
    )
    context.unlock_ahead(cfg, second)
    context.open_repository(cfg, second).close()
    key_ops.key_remove(cfg, context.Environment(env=sb.env), added.id)
    context.unlock_ahead(cfg, second)
    with pytest.raises(WrongPassphrase):
        context.open_repository(cfg, second)
    owner = context.Environment(env=sb.env)
    context.open_repository(cfg, owner).close()
    key_ops.key_passwd(cfg, context.Environment(env=sb.env_with(PHX_NEW_PASSPHRASE="the owner's new passphrase")))
    for _ in range(2):
        context.unlock_ahead(cfg, owner)
        with pytest.raises(WrongPassphrase):
            context.open_repository(cfg, owner)
    changed = context.Environment(env=sb.env_with(PHX_PASSPHRASE="the owner's new passphrase"))
    context.open_repository(cfg, changed).close()


def test_a_process_that_opens_again_and_again_keeps_no_more_of_planted_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    # The Python API in a process that backs up every hour for months (docs/python-api.md); before
    # each opening, someone who can write the storage plants fresh slots with 2 KiB salts. What the
    # process keeps of the keys it derived must not grow with the openings.
    monkeypatch.setattr(keys, "_slot_keys", {})
    master = keys.MasterSecrets.generate()
    own = keys.wrap_passphrase(master, "pw", kdf_params=CHEAP)
    creds = keys.Credentials(passphrase="pw")

    def fresh() -> list[keys.KeySlot]:
        count = keys.MAX_PASSPHRASE_SLOTS_TRIED - 1
        return [
            dataclasses.replace(
                own, id=secrets.token_hex(8), params={**own.params, "salt": base64.b64encode(os.urandom(2048)).decode()}
            )
            for _ in range(count)
        ]

    assert keys.open_any([*fresh(), own], creds) == (own, master)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            assert keys.open_any([*fresh(), own], creds) == (own, master)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 200_000, f"{kept} bytes kept after 20 openings"


def test_a_slot_whose_scrypt_runs_out_of_memory_is_tried_once_per_command(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slot whose parameters this machine cannot get the memory for (MemoryError): the opening
    # ahead skips it, and the real opening must not run its scrypt (and wait for the memory) a
    # second time, yet says the same sentence. (The owner's slot is set aside: the slots' order
    # in keys/ decides which one an opening tries first.)
    sb = backed_up
    for owner in (sb.repo / "keys").iterdir():
        owner.rename(sb.root / owner.name)
    hostile = planted(1, "hungry")
    put(sb.repo / "keys", hostile)
    salt = base64.b64decode(json.loads(next(iter(hostile.values())))["params"]["salt"])
    tried: list[bytes] = []
    monkeypatch.setattr(keys, "_slot_keys", {})
    derive = keys._derive_kek

    def short_of_memory(passphrase: str, salt_: bytes, n: int, r: int, p: int) -> bytes:
        tried.append(salt_)
        if salt_ == salt:
            raise MemoryError
        return derive(passphrase, salt_, n, r, p)

    monkeypatch.setattr(keys, "_derive_kek", short_of_memory)
    envx = context.Environment(env=sb.env)
    cfg = load_config(sb.config_path, envx.env)
    context.unlock_ahead(cfg, envx)
    with pytest.raises(CorruptObject, match="more memory than this process could get"):
        context.open_repository(cfg, envx)
    assert tried == [salt], f"the slot short of memory was derived {tried.count(salt)} times"
