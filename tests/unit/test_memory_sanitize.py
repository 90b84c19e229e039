"""Sanitizing: planted secrets of many shapes are redacted — by key name and by token shape —
and nothing else in the file changes."""

from __future__ import annotations

import json

import pytest

from phoenix_backup.memory.sanitize import REDACTED, is_config_or_env, sanitize_text, secret_key

# Fake secrets, each of a real-world shape (none is a working credential).
OPENAI = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
ANTHROPIC = "sk-ant-api03-AAAABBBBCCCCDDDDEEEEFFFF0000"
GITHUB = "ghp_0123456789abcdefghijABCDEFGHIJ0123"
SLACK = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
AWS = "AKIAIOSFODNN7EXAMPLE"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
BEARER = "Zm9vYmFyYmF6cXV4cXV1eDEyMzQ1Njc4OTA"
DB_PASSWORD = "hunter2-but-longer"
PLAIN_PASSWORD = "correct horse battery staple"
TELEGRAM = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0"

CONFIG = {
    "providers": {
        "openai": {"apiKey": OPENAI, "model": "gpt-4o-mini", "maxTokens": 4096},
        "anthropic": {"api_key": ANTHROPIC, "baseUrl": "https://api.anthropic.com"},
    },
    "github": {"note": f"token is {GITHUB}"},
    "slack": {"botToken": SLACK, "channel": "#general"},
    "database": {"url": f"postgres://argent:{DB_PASSWORD}@localhost:5433/argentos", "passwordEnv": "PG_PASSWORD"},
    "auth": {"password": PLAIN_PASSWORD, "tokenFile": "~/.argentos/token", "passphraseCommand": "pass show phx"},
    "http": {"headers": {"Authorization": f"Bearer {BEARER}"}, "example": f"curl -H 'Authorization: Bearer {BEARER}'"},
    "telegram": {"chatId": "123456789", "bot": TELEGRAM},
    "checksum": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "agentId": "0040c2e2-1d8f-44f6-9f75-d90e97e65475",
    "token_count": "12",
    "secretRef": "${OPENAI_API_KEY}",
}

ENV = f"""# ArgentOS environment
export OPENAI_API_KEY={OPENAI}
AWS_ACCESS_KEY_ID={AWS}
AWS_SECRET_ACCESS_KEY="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
JWT_FOR_TESTS='{JWT}'
LOG_LEVEL=debug
ARGENT_HOME=/home/argent
EMPTY_TOKEN=
SECRET_FROM_ENV=$VAULT_SECRET
"""

YAML = """gateway:
  port: 18789
  password: swordfish-and-more  # set by the installer
  admin_password: "also-secret-1"
  tokenizer: cl100k_base
"""


def test_json_config_keeps_its_shape_and_loses_every_secret() -> None:
    text = json.dumps(CONFIG, indent=2) + "\n"
    cleaned, found = sanitize_text(text, "files/home/.argentos/argent.json")
    doc = json.loads(cleaned)  # still valid JSON
    for secret in (OPENAI, ANTHROPIC, GITHUB, SLACK, JWT, BEARER, DB_PASSWORD, PLAIN_PASSWORD, TELEGRAM):
        assert secret not in cleaned, secret
    assert doc["providers"]["openai"]["apiKey"] == REDACTED
    assert doc["github"]["note"] == f"token is {REDACTED}"
    assert doc["database"]["url"] == f"postgres://argent:{REDACTED}@localhost:5433/argentos"
    assert doc["http"]["headers"]["Authorization"] == REDACTED  # the key names a secret: all of it goes
    assert doc["http"]["example"] == f"curl -H 'Authorization: Bearer {REDACTED}'"
    # Nothing else changed: the original with exactly the secrets replaced is what came out.
    expected = text.replace(f'Bearer {BEARER}"', f'{REDACTED}"')
    for secret in (OPENAI, ANTHROPIC, GITHUB, SLACK, BEARER, DB_PASSWORD, PLAIN_PASSWORD, TELEGRAM):
        expected = expected.replace(secret, REDACTED)
    assert cleaned == expected
    kinds = {(r.key, r.kind) for r in found}
    assert ("apiKey", "secret named by its key") in kinds
    assert ("botToken", "secret named by its key") in kinds
    assert (None, "GitHub token") in kinds
    assert (None, "password in a URL") in kinds
    assert (None, "Bearer token") in kinds
    assert (None, "Telegram bot token") in kinds
    assert len(found) == 9
    assert all(r.file == "files/home/.argentos/argent.json" and r.line > 1 for r in found)
    # Never the values.
    assert not any(s in json.dumps([r.to_json() for r in found]) for s in (OPENAI, SLACK, PLAIN_PASSWORD))


def test_env_file() -> None:
    cleaned, found = sanitize_text(ENV, "files/workspace/config/.env")
    expected = (
        ENV.replace(OPENAI, REDACTED)
        .replace(AWS, REDACTED)
        .replace("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", REDACTED)
        .replace(JWT, REDACTED)
    )
    assert cleaned == expected
    assert sorted((r.line, r.key) for r in found) == [
        (2, "OPENAI_API_KEY"),
        (3, None),
        (4, "AWS_SECRET_ACCESS_KEY"),
        (5, None),
    ]


def test_yaml_keeps_comments() -> None:
    cleaned, found = sanitize_text(YAML, "files/workspace/config/gateway.yaml")
    assert cleaned == YAML.replace("swordfish-and-more", REDACTED).replace("also-secret-1", REDACTED)
    assert [r.key for r in found] == ["password", "admin_password"]


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("apiKey", True),
        ("OPENAI_API_KEY", True),
        ("client_secret", True),
        ("adminPassword", True),
        ("slackWebhookUrl", True),
        ("passwordEnv", False),
        ("tokenFile", False),
        ("maxTokens", False),
        ("passphraseCommand", False),
        ("keyId", False),
        ("model", False),
    ],
)
def test_secret_key_names(key: str, secret: bool) -> None:
    assert secret_key(key) is secret


def test_which_files_are_config_or_env() -> None:
    yes = ["workspace/config/models.json", "workspace/.env", "workspace/.env.local", "home/prod.env", "a/b.yaml"]
    no = ["workspace/SOUL.md", "workspace/.argent-alignment-integrity.json", "workspace/scripts/run.sh"]
    assert all(is_config_or_env(p) for p in yes)
    assert not any(is_config_or_env(p) for p in no)
