"""Keeping secrets out of everything Phoenix prints: `redact_url` for every URL it shows, and
`redact` for free text (messages that may quote a URL or a secret the run knows).

A URL's user name and password are credentials (a Git host's `user:TOKEN@`, a database's
`:password@`), and so are its query and fragment (`?token=`). For many Apprise services the host
part itself is the token: `prowl://APIKEY`, `pbul://ACCESS_TOKEN`, `pover://USER@TOKEN`,
`join://APIKEY/DEVICE`, `ntfy://TOPIC`, `tgram://BOT_TOKEN/CHAT`. So a host is shown only for the
schemes whose host is a network host, and a path only where the caller asks (a Git remote's path
names the repository; a webhook's path is usually its secret).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

REDACTED = "***"

# Schemes whose host part names a machine. Every other scheme shows as `scheme://***`.
_HOST_SCHEMES = frozenset(
    {
        "http",
        "https",
        "ssh",
        "git",
        "git+ssh",
        "ssh+git",
        "ftp",
        "ftps",
        "file",
        "s3",
        "redis",
        "rediss",
        "postgres",
        "postgresql",
        # Apprise: webhooks and e-mail, whose host is the server.
        "json",
        "jsons",
        "xml",
        "xmls",
        "form",
        "forms",
        "mailto",
        "mailtos",
    }
)
# scp-like Git remotes: user@host:path (a careless user:password@host:path too).
_SCP = re.compile(r"^[^/@\s]+@([^/:\s]+):(.*)$")
# Anything that looks like a URL inside free text, up to whitespace or a quote.
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_QUERY_SECRET = re.compile(
    r"((?:[?&;]|\b)(?:token|key|secret|password|passwd|pass|apikey|api_key|sig|signature)=)[^&\s;]+", re.I
)
# A secret shorter than this is not searched for. Every line of stdout, the run log and `--json`
# goes through `without_secrets`: a 4-character password `data` showed every `data/` of `phx ls`
# and `list --json` as `***/` (a path a user copies into `restore --include` and a program reads),
# and a password that short is guessed in seconds anyway, so masking it protects nothing.
_MIN_SECRET = 8


def redact_url(url: str, *, path: bool = False, port: bool = False) -> str:
    """`url` as it may be shown: never its user name, password, query or fragment; its host only
    when the scheme's host is a network host; its port with `port` or `path`, its path only with
    `path`."""
    scp = _SCP.match(url)
    if scp is not None and "://" not in url:
        return f"{scp.group(1)}:{scp.group(2)}" if path else scp.group(1)
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        number = parts.port
    except ValueError:
        scheme = url.split("://", 1)[0] if "://" in url else ""
        return f"{scheme}://{REDACTED}" if scheme.isalnum() else "an unparsable URL"
    if not parts.scheme:
        return REDACTED if "@" in url else url  # a local path, or user:secret@host without a scheme
    scheme = parts.scheme.lower()
    # An "@" after the host part: a password holding "/" or "?" that ended the user info early.
    if scheme not in _HOST_SCHEMES or "@" in parts.path + parts.query + parts.fragment:
        return f"{scheme}://{REDACTED}"
    if ":" in host:
        host = f"[{host}]"  # IPv6
    shown = f"{scheme}://{host}" + (f":{number}" if number and (port or path) else "")
    return shown + parts.path if path else shown


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without the given secrets, and with every URL in it shown as `redact_url` shows it."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0), path=True), without_secrets(text, secrets))
    return _QUERY_SECRET.sub(rf"\1{REDACTED}", text)


def without_secrets(text: str, secrets: Iterable[str]) -> str:
    """`text` with each of the given secrets (the longest first) shown as `***`; URLs left as they
    are. A secret that is a word (letters only: `postgres`) is taken where it stands alone, not
    inside a longer word (`_standing_alone`); any other wherever it is, glued to what may be an
    escape (`%3Dhunter2000`, a JSON string's `\\nhunter2000`) too."""
    for secret in sorted({s for s in secrets if s and len(s) >= _MIN_SECRET}, key=len, reverse=True):
        if secret in text:  # the usual case, none: one scan
            text = _standing_alone(text, secret) if secret.isalpha() else text.replace(secret, REDACTED)
    return text


def _standing_alone(text: str, secret: str) -> str:
    """`text` with `secret` shown as `***` where it does not continue a word: no letter or digit
    right before its first character or after its last when that character is a letter or digit.
    A password `postgres` (the usual one of a PostgreSQL container) turned `"engine":
    "postgresql"` into `"***ql"` in every `--json` document; where it stands alone (`:postgres@`,
    `=postgres`, quoted, a path's `/postgres/`) it is still taken."""
    head, tail = secret[0].isalnum(), secret[-1].isalnum()
    out, done, at = [], 0, text.find(secret)
    while at >= 0:
        end = at + len(secret)
        if (head and at > 0 and text[at - 1].isalnum()) or (tail and end < len(text) and text[end].isalnum()):
            at = text.find(secret, at + 1)
            continue
        out += [text[done:at], REDACTED]
        done, at = end, text.find(secret, end)
    return "".join([*out, text[done:]])


def without_secrets_in(doc: object, secrets: Iterable[str]) -> object:
    """A JSON-like document with `without_secrets` applied to each string value (its keys, names
    Phoenix chose, and its numbers, `true`, `false` and `null` left as they are: a passphrase
    `1234` must not turn a size into invalid JSON). Only a document holding a secret is walked."""
    known = [s for s in secrets if s and len(s) >= _MIN_SECRET]

    def walk(value: object) -> object:
        if isinstance(value, str):
            return without_secrets(value, known)
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [walk(item) for item in value]
        return value

    return walk(doc) if known else doc


_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")


def redact_quoted(message: str) -> str:
    """A library's message about a URL or connection string it could not parse, without the parts
    it quotes: the part it could not parse may be the password (libpq: `invalid percent-encoded
    token: "pa%ss"`, urllib: `Port could not be cast to integer value as 'pa'`)."""
    return _QUOTED.sub(lambda m: m.group(0)[0] + REDACTED + m.group(0)[0], message)
