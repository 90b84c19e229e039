"""Sanitizing: planted secrets of many shapes are redacted — by key name and by token shape —
and nothing else in the file changes."""

from __future__ import annotations

import json
import tomllib

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from hostile import cpu_seconds
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
        ("client-key-data", True),  # a kubeconfig's private key (red23: exported)
        ("client-certificate-data", False),
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
    yes = [
        "workspace/config/models.json",
        "workspace/.env",
        "workspace/.env.local",
        "workspace/.envrc",
        "home/prod.env",
    ]
    yes += ["a/b.yaml", "a/B.YML", "a/prod.env.bak", "a/config.json~", "a/#settings.yaml#"]  # and copies
    no = ["workspace/SOUL.md", "workspace/.argent-alignment-integrity.json", "workspace/scripts/run.sh"]
    assert all(is_config_or_env(p) for p in yes)
    assert not any(is_config_or_env(p) for p in no)


def test_a_quoted_value_keeps_its_quotes_and_every_other_byte() -> None:
    # A quoted value with a comment after it stays quoted (bare REDACTED is no TOML value), a CRLF
    # file keeps its `\r`, and the first line of a file with a byte order mark is read like the rest.
    toml = f'password = "{DB_PASSWORD}" # set by the installer\r\nport = 5433\r\n'
    cleaned, _ = sanitize_text(toml, "a.toml")
    assert cleaned == f'password = "{REDACTED}" # set by the installer\r\nport = 5433\r\n'
    assert tomllib.loads(cleaned) == {"password": REDACTED, "port": 5433}
    env = f"\ufeffAPI_KEY={DB_PASSWORD}\r\nLOG_LEVEL=debug\r\n"
    assert sanitize_text(env, ".env")[0] == f"\ufeffAPI_KEY={REDACTED}\r\nLOG_LEVEL=debug\r\n"


def test_a_value_over_several_lines_is_redacted_whole() -> None:
    # YAML block scalars, a dotenv value quoted over lines (a PEM body), TOML multi-line strings, a
    # YAML anchor: each value goes whole, and the file still parses.
    body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"
    yaml_text = (
        f"gateway:\n  token: |\n    {body}\n    {DB_PASSWORD}\n\n  port: 18789\n"
        f"  secret: >-\n    {DB_PASSWORD}\n  password: &pw {PLAIN_PASSWORD}\n"
        f'  apiKey: "{DB_PASSWORD}\n    more"\n  model: gpt\n'
    )
    cleaned, found = sanitize_text(yaml_text, "a.yaml")
    assert yaml.safe_load(cleaned) == {
        "gateway": {
            "token": f"{REDACTED}\n",
            "port": 18789,
            "secret": REDACTED,
            "password": REDACTED,
            "apiKey": REDACTED,
            "model": "gpt",
        }
    }
    assert [(r.line, r.key) for r in found] == [(2, "token"), (7, "secret"), (9, "password"), (10, "apiKey")]
    env = f'PRIVATE_KEY="-----BEGIN KEY-----\n{body}\n-----END KEY-----"\nNEXT=1\n'
    assert sanitize_text(env, ".env")[0] == f'PRIVATE_KEY="{REDACTED}"\nNEXT=1\n'
    toml = f"password = \"\"\"\n{DB_PASSWORD}\n\"\"\"\ntoken = '''\n{body}'''\nport = 1\n"
    cleaned, _ = sanitize_text(toml, "a.toml")
    assert tomllib.loads(cleaned) == {"password": REDACTED, "token": REDACTED, "port": 1}
    assert DB_PASSWORD not in cleaned and body not in cleaned


def test_a_json_key_spelled_with_escapes_or_its_value_on_the_next_line() -> None:
    text = '{\n  "\\u0061piKey": "' + DB_PASSWORD + '",\n  "token":\n    "' + PLAIN_PASSWORD + '"\n}\n'
    cleaned, found = sanitize_text(text, "a.json")
    assert json.loads(cleaned) == {"apiKey": REDACTED, "token": REDACTED}
    assert [(r.line, r.key) for r in found] == [(2, "apiKey"), (4, "token")]


def test_a_url_password_after_an_empty_user_or_holding_an_at_sign() -> None:
    text = f"redis: redis://:{DB_PASSWORD}@cache:6379/0\npg: postgres://argent:p@ss{DB_PASSWORD}@db/argentos\n"
    cleaned, _ = sanitize_text(text, "a.yaml")
    assert cleaned == f"redis: redis://:{REDACTED}@cache:6379/0\npg: postgres://argent:{REDACTED}@db/argentos\n"


@pytest.mark.parametrize(
    "hostile",
    [
        '{"note": "' + '\\"' * 15_000,  # one JSON string left open: every `"` in it began a new scan
        "-----BEGIN PRIVATE KEY-----\n" * 3_600,  # PEM blocks with no END: each scanned the rest
        'TOKEN="' + '\\"' * 50_000,  # a quoted value left open, full of escaped quotes
        "eyJ-" * 25_000,  # a JSON Web Token's header was read to the end of its run from every `eyJ`
        "a." * 50_000,  # a URL's scheme was read to the end of its run from every letter
        "".join(" " * k + "token:\n" for k in range(1_200)),  # `token:` over a map over a map...
        "{a: [" * 100_000,  # flow maps and lists: a pair starts only at a line's start, `{` or `,`
        ',"\\"' * 100_000,  # strings in flow maps left open
        "?" + "a_" * 150_000,  # a query parameter's name is a bounded run of words
        ("&" + "a-" * 10) * 15_000,
        '"password": "x" :' * 20_000,  # a value followed by `:` on its key's line
        "a: !x " * 50_000,  # tags after every `: `: a block scalar's header is looked for once a line
        "- " * 100_000 + "a: " * 100_000,  # where a flow map would start is looked for once a line
        "LS0tLS1CRUdJTi" * 50_000,  # base64 of `-----BEGIN ` looks ahead a bounded way for `PRIVATE KEY`
    ],
)
def test_hostile_input_costs_linear_time(hostile: str) -> None:
    # 30-720 KB; before, the first took ~13 s and the second ~8 s on this 2-core machine, the
    # JSON Web Token run ~9 s, the URL scheme run ~10 s, the 1,200 levels of `token:` ~8 s.
    start = cpu_seconds()
    sanitize_text(hostile, "a.json")
    assert cpu_seconds() - start < 2.0


# NEL and the Unicode line and paragraph separators end a line in YAML, not in this line reader.
_PLAIN = st.text(
    st.characters(blacklist_characters="-_.:/@$\x85\u2028\u2029", blacklist_categories=("Cs",)), max_size=30
)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["apiKey", "password", "maxTokens", "tokenFile", "model", "note"]), _PLAIN),
    st.booleans(),
    st.booleans(),
)
def test_json_stays_json_and_loses_exactly_the_named_values(doc: dict[str, str], indent: bool, ascii_: bool) -> None:
    text = json.dumps({"cfg": doc, "list": [doc]}, indent=2 if indent else None, ensure_ascii=ascii_)
    cleaned, found = sanitize_text(text, "a.json")
    named = {k: (REDACTED if secret_key(k) and v else v) for k, v in doc.items()}
    assert json.loads(cleaned) == {"cfg": named, "list": [named]}
    assert all(r.key in ("apiKey", "password") for r in found)


@settings(max_examples=80, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["apiKey", "password", "maxTokens", "tokenFile", "model", "note"]), _PLAIN),
    st.sampled_from([None, '"', "'", "|", ">"]),
    st.integers(min_value=8, max_value=80),
)
def test_yaml_stays_yaml_and_loses_exactly_the_named_values(doc: dict[str, str], style: str | None, width: int) -> None:
    # Every way PyYAML writes a string: plain, quoted either way (folded over lines when long),
    # literal and folded blocks.
    text = yaml.safe_dump({"cfg": doc}, default_style=style, width=width, allow_unicode=True)
    cleaned, _ = sanitize_text(text, "a.yaml")
    loaded = yaml.safe_load(cleaned)["cfg"]
    for k, v in doc.items():
        if secret_key(k) and v.strip():
            assert loaded[k].strip() == REDACTED, (text, cleaned)
        elif secret_key(k):  # blanks only: redacting them or not loses nothing
            assert loaded[k] in (v, REDACTED), (text, cleaned)
        else:
            assert loaded[k] == v, (text, cleaned)


def test_a_secret_written_with_escapes_or_in_a_string_that_holds_json() -> None:
    # What a JSON string spells is read: a token with an escaped letter, a Slack hook written with
    # `\/` (as PHP writes every `/`), and JSON kept as a string (an MCP server's env, say).
    inner = json.dumps({"env": {"apiKey": DB_PASSWORD, "model": "gpt"}})
    escaped = OPENAI.replace("p", "\\u0070", 1)
    hook = "https:\\/\\/hooks.slack.com\\/services\\/T000\\/B000\\/XXXXXXXXXXXXXXXX"
    text = json.dumps({"server": inner, "note": "x"})[:-1] + f', "k": "{escaped}", "h": "{hook}"}}'
    cleaned, found = sanitize_text(text, "a.json")
    doc = json.loads(cleaned)
    assert json.loads(doc["server"]) == {"env": {"apiKey": REDACTED, "model": "gpt"}}
    assert (doc["note"], doc["k"], doc["h"]) == ("x", REDACTED, REDACTED)
    assert sorted(r.kind for r in found) == [
        "OpenAI/Anthropic-style API key (sk-…)",
        "Slack webhook URL",
        "secret named by its key",
    ]


def test_a_plain_value_goes_on_below_in_yaml_and_ini_but_not_in_an_env_file() -> None:
    cont = f"password = {DB_PASSWORD}\n  {PLAIN_PASSWORD}\nport = 1\n"
    assert sanitize_text(f"[db]\n{cont}", "a.ini")[0] == f"[db]\npassword = {REDACTED}\nport = 1\n"
    env = f"API_KEY={DB_PASSWORD}\n  LOG_LEVEL=debug\n"  # an indented line of its own
    assert sanitize_text(env, "prod.env")[0] == f"API_KEY={REDACTED}\n  LOG_LEVEL=debug\n"


def test_a_quoted_yaml_key_with_a_plain_value() -> None:
    text = f'"password": {DB_PASSWORD}\n\'apiKey\': {PLAIN_PASSWORD}\n"port": 1\n'
    cleaned, _ = sanitize_text(text, "a.yaml")
    assert yaml.safe_load(cleaned) == {"password": REDACTED, "apiKey": REDACTED, "port": 1}


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("a.yaml", f"token: |\n  abc\n  def\n  ghi\nnote: {OPENAI}\n"),
        ("a.toml", f'password = """\nabc\ndef\n"""\nnote = "{OPENAI}"\n'),
        (".env", f'PASSWORD="abc\ndef\nghi"\nNOTE=x\nX={OPENAI}\n'),
        (
            "a.yaml",
            "k: |\n  -----BEGIN RSA PRIVATE KEY-----\n  abc\n  -----END RSA PRIVATE KEY-----\n"
            f"b: {OPENAI}\ntoken: hunter22\n",
        ),
        ("a.yaml", f"cert: -----BEGIN PRIVATE KEY-----\n  abc\n  -----END PRIVATE KEY-----\nb: {OPENAI}\n"),
    ],
)
def test_a_token_below_a_value_over_several_lines_is_reported_on_its_own_line(name: str, text: str) -> None:
    # The value over several lines becomes one line; a token below it was reported lines too high.
    cleaned, found = sanitize_text(text, name)
    assert OPENAI not in cleaned
    lines = text.split("\n")
    assert [r.line for r in found if r.kind.startswith("OpenAI")] == [
        n for n, line in enumerate(lines, 1) if OPENAI in line
    ]
    for r in found:  # every other redaction on the line its key or its block begins on
        assert (r.key or "-----BEGIN") in lines[r.line - 1] or r.kind.startswith("OpenAI"), r


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (".env", 'PASSWORD="abc"hunter22\n', "PASSWORD=REDACTED\n"),  # a shell reads abchunter22
        (".env", 'PASSWORD="a\\\\"hunter22\r\n', "PASSWORD=REDACTED\r\n"),  # the `\\` is one backslash
        (".envrc", "export TOKEN='abc'hunter22\n", "export TOKEN=REDACTED\n"),
        ("a.ini", '[s]\npassword = "abc" hunter22\n', "[s]\npassword = REDACTED\n"),  # INI keeps it all
        (".env", 'PASSWORD="abc\ndef"hunter22\nX=1\n', "PASSWORD=REDACTED\nX=1\n"),
        (".env", 'PASSWORD="abc" # a comment\n', f'PASSWORD="{REDACTED}" # a comment\n'),
        ("a.yaml", 'password: "abc",  # c\n', f'password: "{REDACTED}",  # c\n'),
    ],
)
def test_a_value_going_on_after_its_closing_quote_is_redacted_whole(name: str, text: str, expected: str) -> None:
    # red17 redacted only what was inside the quotes and exported the rest of the value.
    cleaned, found = sanitize_text(text, name)
    assert cleaned == expected
    assert len(found) == 1


@pytest.mark.parametrize("escape", ["\\ud800", "\\u007f", "\\u0085", "\\u2028", "\\ufeff"])
def test_a_string_written_again_keeps_escaped_what_cannot_be_written_raw(escape: str) -> None:
    # red17 wrote these raw: a lone surrogate has no UTF-8 (the export failed), and PyYAML refuses
    # U+007F, U+FEFF or reads U+0085 and U+2028 as a line break.
    value = f"{escape} {OPENAI}"
    as_json, _ = sanitize_text(f'{{"note": "{value}"}}\n', "a.json")
    as_json.encode("utf-8")
    assert json.loads(as_json) == {"note": json.loads(f'"{escape}"') + f" {REDACTED}"}
    if escape != "\\ud800":  # PyYAML reads no lone surrogate
        as_yaml, _ = sanitize_text(f'note: "{value}"\n', "a.yaml")
        assert yaml.safe_load(as_yaml) == {"note": json.loads(f'"{escape}"') + f" {REDACTED}"}


@pytest.mark.parametrize(
    ("name", "text"),
    [("a.yaml", f'"token {GITHUB}": hunter22\n'), ("a.json", f'{{"token {GITHUB}": "hunter22"}}')],
)
def test_a_token_in_a_key_is_redacted_in_the_list_of_redactions_too(name: str, text: str) -> None:
    # red17 redacted the token in the file and wrote it whole as the key in redactions.json.
    cleaned, found = sanitize_text(text, name)
    listed = json.dumps([r.to_json() for r in found])
    assert GITHUB not in cleaned and GITHUB not in listed and "hunter22" not in cleaned + listed
    assert f"token {REDACTED}" in listed


def test_a_toml_value_that_was_no_string_becomes_a_quoted_string() -> None:
    # int and red17 wrote `token = REDACTED`, which is no TOML.
    text = 'token = 12345678  # c\npassword = true\n[db]\npassword = """\nhunter22\n"""\n'
    cleaned, found = sanitize_text(text, "a.toml")
    assert tomllib.loads(cleaned) == {"token": REDACTED, "password": REDACTED, "db": {"password": REDACTED}}
    assert cleaned.startswith(f'token = "{REDACTED}"  # c\n')
    assert len(found) == 3


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("a.json", '{"password": "hunter22" : 1}', f'{{"password": "{REDACTED}" : 1}}'),
        ("a.json", '{"password": "hunter22":}', f'{{"password": "{REDACTED}":}}'),
        ("a.json", '"apiKey" : "hunter22" ::\n', f'"apiKey" : {REDACTED}\n'),  # it goes on: all of it goes
        # on the next line a string followed by `:` is the next key, and that key's value goes
        ("a.json", '{"cfg":\n  "apiKey": "hunter22"}', f'{{"cfg":\n  "apiKey": "{REDACTED}"}}'),
        # and the `}` closing the map on the value's line stays (main wrote `"apiKey": REDACTED`: no JSON)
        ("a.json", '{"a": 1,\n "apiKey": "hunter22"}\n', f'{{"a": 1,\n "apiKey": "{REDACTED}"}}\n'),
        ("a.json", '[{"a": 1,\n "apiKey": "hunter22"}],\n', f'[{{"a": 1,\n "apiKey": "{REDACTED}"}}],\n'),
    ],
)
def test_almost_json_loses_its_named_values_as_before(name: str, text: str, expected: str) -> None:
    # the linear-time rewrite (main) exported these whole; the code before it (399a817) redacted them.
    cleaned, found = sanitize_text(text, name)
    assert cleaned == expected
    assert found


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (".env", 'PASSWORD="hunter22\nX=1\n', "PASSWORD=REDACTED\nX=1\n"),
        (".env", "export TOKEN='hunter22 \n", "export TOKEN=REDACTED \n"),
        ("a.yaml", "password: 'hunter22\r\nx: 1\r\n", "password: REDACTED\r\nx: 1\r\n"),
        ("a.toml", 'password = "hunter22\n', f'password = "{REDACTED}"\n'),
    ],
)
def test_a_quoted_value_never_closed_goes_with_the_rest_of_its_line(name: str, text: str, expected: str) -> None:
    # main left such a line whole (the code before the rewrite, 399a817, redacted it).
    cleaned, found = sanitize_text(text, name)
    assert (cleaned, len(found)) == (expected, 1)


@pytest.mark.parametrize(
    "text",
    [
        f"x: token_{GITHUB}\n",
        f"x: key_{AWS}\n",
        f"x: {AWS}extra\n",
        f"x: abc_{OPENAI}\n",
        "x: token_sk_live_AbCdEfGhIjKlMnOpQrStUvWx\n",
        "x: my_github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuv\n",
        "x: ci_glpat-AbCdEfGhIjKlMnOpQrSt\n",
        "x: key_AIzaSyA-0123456789abcdefghijklmnopqrstu\n",
        "x: my_hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345\n",
        f"x: bot_{SLACK}\n",
    ],
)
def test_a_token_glued_to_a_word_is_redacted(text: str) -> None:
    # main read a token only after a word boundary, and `_` is a word character: `token_ghp_…` went out whole.
    cleaned, found = sanitize_text(text, "a.yaml")
    secret = text.split("_", 1)[1] if "extra" not in text else AWS
    assert secret.strip()[-12:] not in cleaned, cleaned
    assert found and REDACTED in cleaned


def test_flow_maps_inline_tables_single_quotes_and_lists_lose_their_secrets() -> None:
    # main read none of these (docs/memory.md listed them as not read).
    as_yaml, found = sanitize_text("db: {password: hunter22, user: argent}\n- {token: 'hunter23'}\n", "a.yaml")
    assert as_yaml == f"db: {{password: {REDACTED}, user: argent}}\n- {{token: '{REDACTED}'}}\n"
    assert len(found) == 2
    as_toml, _ = sanitize_text('db = { password = "hunter22", port = 5432 }\nx = { token = 42 }\n', "a.toml")
    assert tomllib.loads(as_toml) == {"db": {"password": REDACTED, "port": 5432}, "x": {"token": REDACTED}}
    as_json5, _ = sanitize_text("{password: 'hunter22', 'apiKey': \"hunter23\", model: 'x'}\n", "a.json")
    assert as_json5 == f"{{password: '{REDACTED}', 'apiKey': \"{REDACTED}\", model: 'x'}}\n"
    listed = '{\n  "passwords": ["hunter22", "hunter23"],\n  "apiKey": ["hunter24", "$REF"],\n  "models": ["a"]\n}\n'
    as_json, found = sanitize_text(listed, "a.json")
    assert json.loads(as_json) == {"passwords": [REDACTED, REDACTED], "apiKey": [REDACTED, "$REF"], "models": ["a"]}
    assert [r.line for r in found] == [2, 3]
    as_yaml, _ = sanitize_text("tokens: [hunter22, hunter23]\nnames: [a, b]\n", "a.yaml")
    assert yaml.safe_load(as_yaml) == {"tokens": [REDACTED, REDACTED], "names": ["a", "b"]}


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("x: 'Authorization: Basic dXNlcjpodW50ZXIyMg=='\n", "dXNlcjpodW50ZXIyMg=="),
        ("x: curl -H 'Authorization: Token hunter22hunter22'\n", "hunter22hunter22"),
        (f"x: 'BEARER {BEARER}'\n", BEARER),
        ("x: curl -H 'X-Api-Key: hunter22hunter22'\n", "hunter22hunter22"),
        ("url: https://api.example.com/v1?access_token=hunter22&page=2\n", "hunter22"),
        ("url: https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sig=hunter22%2Bx%3D&se=1\n", "hunter22"),
        ("url: https://b.s3.amazonaws.com/k?X-Amz-Credential=a&X-Amz-Signature=hunter22beef\n", "hunter22beef"),
        ("url: https://x.example/hook?api_key=hunter22\n", "hunter22"),
        (
            "k: -----BEGIN PGP PRIVATE KEY BLOCK-----\n\n  lQOYBGhunter22\n  -----END PGP PRIVATE KEY BLOCK-----\n",
            "hunter22",
        ),
        ("x: whsec_AbCdEfGhIjKlMnOpQrStUvWxYz01\n", "whsec_"),
        ("x: xapp-1-A0123456789-1234567890123-abcdef0123456789\n", "abcdef0123456789"),
        ("x: ya29.a0AfH6SMBhunter22hunter22hunter22\n", "hunter22"),
        ("x: GOCSPX-hunter22hunter22hunter22ab\n", "hunter22"),
        ("x: DefaultEndpointsProtocol=https;AccountName=a;AccountKey=aHVudGVyMjJodW50ZXIyMmh1bnRlcjIy==\n", "aHVud"),
        ("x: //registry.npmjs.org/:_authToken=npm_hunter22hunter22hunter22hunter22hunt\n", "hunter22"),
        ("x: pypi-AgEIcHlwaS5vcmcCJGh1bnRlcjIyaHVudGVyMjJodW50ZXIyMmh1bnRlcjIy\n", "aHVud"),
        # a PEM private key cut short (no END line): its base64 lines and headers go all the same
        (
            "x: |\n  -----BEGIN RSA PRIVATE KEY-----\n  Proc-Type: 4,ENCRYPTED\n\n  MIIEpAIBAAKCAQEAhunter22\n",
            "hunter22",
        ),
        # a PEM private key in base64 (`PRIVATE KEY` at each of its three alignments), as a
        # kubeconfig's client-key-data or `base64 id_rsa` hold it
        ("x: LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQpNSUlodW50ZXIyMgo=\n", "dW50ZXIyMgo="),
        ("x: LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCk1JSWh1bnRlcjIyCg==\n", "bnRlcjIyCg=="),
        ("x: LS0tLS1CRUdJTiBFQyBQUklWQVRFIEtFWS0tLS0tCk1JSWh1bnRlcjIyCg==\n", "bnRlcjIyCg=="),
    ],
)
def test_credentials_in_headers_url_queries_and_more_key_shapes(text: str, secret: str) -> None:
    # main exported each of these whole.
    cleaned, found = sanitize_text(text, "a.yaml")
    assert secret not in cleaned, cleaned
    assert found


@pytest.mark.parametrize(
    "text",
    [
        "note: Authorization: required for every call, see `?password=` in the docs.\n",
        "note: first, token: see the vault; then {the} rest, password: ask\n",
        "note: desk-0123456789abcdefghij and the task-0123456789abcdefghij list\n",
        "url: https://example.com/search?q=monkey&keyword=x&page=2&turkey=y\n",
        "note: AKIAIOSFODNN7EXAMPLE0 is too long to be a key id\n",
        "      with: {token: ${{ secrets.GH_TOKEN }}, x: 1}\n",  # references in flow maps stay
        "x: {password: ${PW}, user: argent}\n",
    ],
)
def test_prose_and_ordinary_values_stay_as_they_are(text: str) -> None:
    assert sanitize_text(text, "a.yaml") == (text, [])


@settings(max_examples=30, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["apiKey", "password", "maxTokens", "tokenFile", "model", "note"]), _PLAIN),
    st.sampled_from([None, '"', "'"]),
)
def test_flow_maps_stay_yaml_and_toml_and_lose_exactly_the_named_values(doc: dict[str, str], style: str | None) -> None:
    as_yaml = yaml.safe_dump({"cfg": doc}, default_flow_style=True, default_style=style, width=10**6)
    loaded = yaml.safe_load(sanitize_text(as_yaml, "a.yaml")[0])["cfg"]
    quoted = {k: json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f") for k, v in doc.items()}
    inline = ", ".join(f"{k} = {q}" for k, q in quoted.items())
    as_toml = tomllib.loads(sanitize_text(f"cfg = {{ {inline} }}\n", "a.toml")[0])["cfg"]
    for k, v in doc.items():
        expected = REDACTED if secret_key(k) else v  # a blank value may stay or go
        assert loaded[k] in ((expected, v) if secret_key(k) and not v.strip() else (expected,)), (as_yaml, loaded)
        assert as_toml[k] in ((REDACTED, v) if secret_key(k) else (v,)), (inline, as_toml)


@pytest.mark.parametrize(
    ("file", "text", "secret"),
    [
        ("a.env", "key=hunter22x\npass=hunter22y\nauth=hunter22z\n", "hunter22"),
        ("a.yaml", "key: hunter22x\npass: hunter22y\nauth: hunter22z\n", "hunter22"),
        ("a.json", '{"key": "hunter22x", "pass": "hunter22y", "auth": {"pass": "hunter22z"}}\n', "hunter22"),
        (
            "sa.json",  # a GCP service account as Google writes it
            '{\n  "type": "service_account",\n  "private_key_id": "0123456789abcdef0123456789abcdef01234567",\n'
            '  "private_key": "-----BEGIN PRIVATE KEY-----\\nMIIE\\n-----END PRIVATE KEY-----\\n"\n}\n',
            "0123456789abcdef",
        ),
        ("a.properties", "db.password hunter22x\napi.token\thunter22y\n", "hunter22"),
        ("redis.conf", "requirepass hunter22x\nmasterauth hunter22y\n", "hunter22"),
        ("a.env", "declare -x API_TOKEN=hunter22x\ntypeset -rx PASSWORD=hunter22y\nset SECRET=hunter22z\n", "hunter22"),
        (".env", "setenv PASSWORD hunter22x\n", "hunter22"),
        ("a.yaml", "password:\n  hunter22x\n  hunter22y\nnext: 1\n", "hunter22"),
        ("a.yaml", "secrets:\n  - hunter22x\n  - hunter22y\ntokens:\n- hunter22z\n", "hunter22"),
        ("a.yaml", "cfg: {\n  password: hunter22x,\n  token: hunter22y\n}\n", "hunter22"),
        # a brace in a block scalar or a quoted string opens no flow map for the lines below
        ("a.yaml", "a: |-\n  {\npassword: |-\n  hunter22x\n", "hunter22"),
        ("a.yaml", 'note: "look { here"\npassword: |-\n  hunter22x\n', "hunter22"),
        ("a.yaml", "apiKey: 0{\npassword: x{hunter22x\n", "hunter22"),  # `0{` is a plain value
        ("a.yaml", "{cfg: {a: '}', b: '}', password: 'hunter22x'}}\n", "hunter22"),  # a quoted brace is text
        ("a.yaml", "{cfg: {apiKey: 'a''hunter22x'}}\n", "hunter22"),  # YAML's '' in a quoted value
        ("a.yaml", "{cfg: {apiKey: 'hunter22x\n\n    hunter22y', n: q, token: 'a\n\n    hunter22z'}}\n", "hunter22"),
    ],
)
def test_short_keys_spaced_pairs_shell_declarations_and_values_below_their_key_go(
    file: str, text: str, secret: str
) -> None:
    # red21 exported each of these with its secret (adv21).
    cleaned, found = sanitize_text(text, file)
    assert secret not in cleaned, cleaned
    assert found
    if file.endswith(".yaml"):
        assert yaml.safe_load(cleaned) is not None
    elif file.endswith(".json"):
        json.loads(cleaned)


@pytest.mark.parametrize(
    ("file", "text"),
    [
        ("a.yaml", "keyboard: us\nbypass: true\nauthor: Argent\nkeys_total: 3\nprivate_key_path: /k\n"),
        ("a.yaml", "password:\n  vault: prod\n  field: pw\ntokens:\n  max: 5\nsecrets:\n  - name: a\n"),
        ("a.properties", "db.user argent\ndb.url jdbc:postgresql://h/db\n"),
        ("a.env", "set -a\ndeclare -x HOME=/home/argent\n"),
        ("a.yaml", "other: a,\nlist: {a: 1,\n  b: 2}\n"),
    ],
)
def test_keys_naming_no_secret_and_maps_below_a_secret_key_stay(file: str, text: str) -> None:
    assert sanitize_text(text, file) == (text, [])


_KEYS = st.sampled_from(["key", "pass", "password", "secrets", "tokens", "note", "keyboard", "private_key_id", "cfg"])
_TREES = st.recursive(
    st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.none()),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=3)),
    max_leaves=10,
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_KEYS, _TREES, max_size=4), st.sampled_from([None, '"', "'", ">"]), st.booleans())
def test_nested_yaml_and_json_stay_yaml_and_json(doc: dict[str, object], style: str | None, flow: bool) -> None:
    # Flow maps over several lines (`{cfg: {password: x,` … `tokens: true}, note: 1}`) and tagged
    # values (`!!bool >-` then `false`): red21 wrote `password: REDACTED` without the `}` or `,`
    # after it, and `!!bool REDACTED`, neither of them YAML (adv21; 1 in 12 documents).
    text = yaml.safe_dump(doc, default_style=style, default_flow_style=flow, width=40, allow_unicode=True)
    yaml.safe_load(sanitize_text(text, "a.yaml")[0])
    json.loads(sanitize_text(json.dumps(doc, indent=2), "a.json")[0])


@pytest.mark.parametrize(
    "token",
    [
        "hf_abcdefghijklmnopqrstuvwxyz0123456",
        "AIza" + "B" * 35,
        "xoxb-1234567890-abcdef",
        "ya29.abcdefghijklmnopqrstuvwxyz",
        "sk_live_abcdefghijklmnopqrstu",
    ],
)
def test_a_token_glued_after_a_letter_is_redacted(token: str) -> None:
    # red21 read these only at a word's start (adv21); `sk-` still needs one: `task-…` stays.
    cleaned, found = sanitize_text(f"x: x{token}\n", "a.yaml")
    assert cleaned == f"x: x{REDACTED}\n" and found
