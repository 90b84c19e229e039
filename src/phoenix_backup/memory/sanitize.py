"""Secrets found and redacted in config and env files, for exports that leave the machine.

Two rules, applied to the text so the file keeps its format (JSON stays valid JSON):

1. **By key name**: a string value whose key names a secret (`apiKey`, `token`, `password`,
   `secret`, `passphrase`, `privateKey`, `accessKey`, `clientSecret`, `credentials`, `dsn`,
   `webhook`…) in JSON (`"apiKey": "…"`) or in env/YAML/TOML/INI lines (`API_KEY=…`,
   `token: …`, `password = "…"`). Keys that only name where a secret lives (`passwordEnv`,
   `tokenFile`, `passphraseCommand`), counts and limits (`maxTokens`), and values that are
   references (`${VAR}`, `$VAR`) or empty are left alone.
2. **By shape**, anywhere in those files: `sk-…` (OpenAI, Anthropic), `sk_live_…`/`rk_live_…`
   (Stripe), `ghp_…`/`gho_…`/`ghs_…`/`github_pat_…` (GitHub), `glpat-…` (GitLab), `xoxb-…`/
   `xoxp-…` (Slack) and Slack webhook URLs, `AKIA…`/`ASIA…` (AWS), `AIza…` (Google), `hf_…`
   (Hugging Face), JSON Web Tokens, `Bearer …`, Telegram bot tokens, age secret keys, PEM
   private key blocks, and the password in `scheme://user:password@host` URLs.

Each redaction is recorded as (file, line, key, kind) — never the value. The value becomes
`REDACTED`, a word that is valid unquoted in every one of these formats.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

REDACTED = "REDACTED"

CONFIG_SUFFIXES = (".json", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".conf", ".env", ".properties")


@dataclass(frozen=True)
class Redaction:
    file: str  # path inside the export
    line: int
    key: str | None  # the key whose value was redacted, when there was one
    kind: str  # "secret named by its key", "GitHub token", ...

    def to_json(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "key": self.key, "kind": self.kind}


def is_config_or_env(path: str) -> bool:
    """Config and env files by name: `.env`, `.env.local`, `prod.env`, `*.json`, `*.yaml`, …"""
    name = PurePosixPath(path).name.lower()
    if name == ".argent-alignment-integrity.json":
        return False  # hashes of the identity files, no secrets, and a tamper check that must stay
    return name == ".env" or name.startswith(".env.") or name.endswith(CONFIG_SUFFIXES)


_SECRET_KEY = re.compile(
    r"(apikey|secret|token|password|passwd|passphrase|pwd|privatekey|accesskey|authkey|credential"
    r"|sessionkey|signingkey|encryptionkey|masterkey|webhook|bearer|cookie|dsn|connectionstring|authorization)"
)
# Keys that name where a secret is, or hold counts: never redacted.
_NOT_SECRET_KEY = re.compile(
    r"(tokens|tokenizer|limit|budget|^max|^min|(count|env|file|path|command|cmd|ttl|type|name|id|ids|enabled"
    r"|method|provider|length|size|url|endpoint|header|prefix)$)"
)
_REFERENCE = re.compile(r"^(\$\{[^}]+\}|\$[A-Za-z_][A-Za-z0-9_]*|env:[A-Za-z_][A-Za-z0-9_]*|REDACTED|)$")


def secret_key(key: str) -> bool:
    norm = re.sub(r"[^a-z0-9]", "", key.lower())
    if not _SECRET_KEY.search(norm):
        return False
    if "webhook" in norm and not norm.endswith(("env", "file", "path", "enabled")):
        return True  # a webhook URL is the secret itself
    return not _NOT_SECRET_KEY.search(norm)


# (kind, pattern, group holding the secret)
TOKEN_SHAPES: tuple[tuple[str, re.Pattern[str], int], ...] = (
    (
        "PEM private key",
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
        0,
    ),
    ("OpenAI/Anthropic-style API key (sk-…)", re.compile(r"(?<![A-Za-z0-9_\-])sk-[A-Za-z0-9_\-]{16,}"), 0),
    ("Stripe secret key", re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"), 0),
    ("GitHub token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"), 0),
    ("GitLab token", re.compile(r"\bglpat-[A-Za-z0-9_\-]{20,}"), 0),
    ("Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"), 0),
    ("Slack webhook URL", re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/_\-]+"), 0),
    ("AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), 0),
    ("Google API key", re.compile(r"\bAIza[0-9A-Za-z_\-]{35}"), 0),
    ("Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{30,}"), 0),
    ("JSON Web Token", re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"), 0),
    ("Bearer token", re.compile(r"\b[Bb]earer\s+([A-Za-z0-9._~+/\-]{16,}=*)"), 1),
    ("Telegram bot token", re.compile(r"\b\d{8,10}:AA[A-Za-z0-9_\-]{33}\b"), 0),
    ("age secret key", re.compile(r"AGE-SECRET-KEY-1[0-9A-Z]{58}"), 0),
    ("password in a URL", re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@\"'<>]+:([^\s@/\"'<>]+)@"), 1),
)

_JSON_PAIR = re.compile(r'"((?:[^"\\]|\\.)*)"(\s*:\s*)"((?:[^"\\]|\\.)*)"')
_LINE_PAIR = re.compile(
    r"^(?P<lead>\s*(?:export\s+|-\s+)?)(?P<key>[A-Za-z_][A-Za-z0-9_.\-]*)(?P<sep>\s*[:=]\s*)(?P<val>.*?)\s*$"
)


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def sanitize_text(text: str, file: str) -> tuple[str, list[Redaction]]:
    """`text` with its secrets replaced by `REDACTED`, and what was redacted where."""
    found: list[Redaction] = []
    lines = text.split("\n")
    for i, line in enumerate(lines):
        lines[i] = _by_key(line, i + 1, file, found)
    text = "\n".join(lines)
    for kind, rx, group in TOKEN_SHAPES:
        text = _by_shape(text, kind, rx, group, file, found)
    found.sort(key=lambda r: (r.line, r.kind))
    return text, found


def _by_key(line: str, number: int, file: str, found: list[Redaction]) -> str:
    def json_pair(m: re.Match[str]) -> str:
        key, sep, value = m.group(1), m.group(2), m.group(3)
        if not secret_key(key) or _REFERENCE.match(value):
            return m.group(0)
        found.append(Redaction(file, number, key, "secret named by its key"))
        return f'"{key}"{sep}"{REDACTED}"'

    out = _JSON_PAIR.sub(json_pair, line)
    if out != line or line.lstrip().startswith(('"', "{", "[", "#", ";")):
        return out
    m = _LINE_PAIR.match(line)
    if not m or not secret_key(m.group("key")):
        return line
    raw = m.group("val")
    quote = raw[:1] if raw[:1] in ("'", '"') and raw.endswith(raw[:1]) and len(raw) >= 2 else ""
    core = raw[1:-1] if quote else raw.split(" #", 1)[0].rstrip()
    if not core or _REFERENCE.match(core) or core[:1] in ("{", "[", "|", ">", "&", "*"):
        return line
    rest = "" if quote else raw[len(core) :]
    found.append(Redaction(file, number, m.group("key"), "secret named by its key"))
    return f"{m.group('lead')}{m.group('key')}{m.group('sep')}{quote}{REDACTED}{quote}{rest}"


def _by_shape(text: str, kind: str, rx: re.Pattern[str], group: int, file: str, found: list[Redaction]) -> str:
    def replace(m: re.Match[str]) -> str:
        if m.group(group) == REDACTED:
            return m.group(0)
        found.append(Redaction(file, _line_of(text, m.start()), None, kind))
        if group == 0:
            return REDACTED
        start, end = m.span(group)
        return m.group(0)[: start - m.start()] + REDACTED + m.group(0)[end - m.start() :]

    sub: Callable[[re.Match[str]], str] = replace
    return rx.sub(sub, text)
