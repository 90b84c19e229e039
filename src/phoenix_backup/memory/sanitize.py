"""Secrets found and redacted in config and env files, for exports that leave the machine.

Two rules, applied to the text so the file keeps its format (JSON stays valid JSON):

1. **By key name**: a string value whose key names a secret (`apiKey`, `token`, `password`,
   `secret`, `passphrase`, `privateKey`, `accessKey`, `clientSecret`, `credentials`, `dsn`,
   `webhook`, `client-key-data`…) in JSON (`"apiKey": "…"`) or in env/YAML/TOML/INI lines (`API_KEY=…`,
   `token: …`, `password = "…"`); a value over several lines (`token: |`, a TOML multi-line
   string) goes whole. Keys that only name where a secret lives (`passwordEnv`, `tokenFile`,
   `passphraseCommand`), counts and limits (`maxTokens`), and values that are references
   (`${VAR}`, `$VAR`) or empty are left alone.
2. **By shape**, anywhere in those files: `sk-…` (OpenAI, Anthropic), `sk_live_…`/`rk_live_…`
   (Stripe), `ghp_…`/`gho_…`/`ghs_…`/`github_pat_…` (GitHub), `glpat-…` (GitLab), `xoxb-…`/
   `xoxp-…` (Slack) and Slack webhook URLs, `AKIA…`/`ASIA…` (AWS), `AIza…` (Google), `hf_…`
   (Hugging Face), `npm_…` (npm), `pypi-AgE…` (PyPI), JSON Web Tokens, `Bearer …`, Telegram bot
   tokens, age secret keys, PEM private key blocks, and the password in
   `scheme://user:password@host` URLs. Any other text of an export loses these (`sanitize_shapes`).

Each redaction is recorded as (file, line, key, kind) — never the value. The value becomes
`REDACTED`, a word that is valid unquoted in every one of these formats but TOML, where a value
that was not a string (`token = 8`) becomes the string `"REDACTED"`.
"""

from __future__ import annotations

import bisect
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
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


# What editors and careful users add to a copy: `.pgpass~`, `#.netrc#`, `id_rsa.bak`,
# `credentials.old`, `prod.env.orig`. The copy holds what the file held, and is read as the file.
_COPY_SUFFIX = re.compile(r"(?:~|\.(?:bak|backup|old|orig|save|sav|prev|tmp|copy|swp|\d{1,3}))+$")


def _file_name(path: str) -> str:
    """The file's name in lower case, without the marks of a copy (`_COPY_SUFFIX`, emacs's `#…#`)."""
    name = PurePosixPath(path).name.lower()
    if len(name) > 2 and name.startswith("#") and name.endswith("#"):
        name = name[1:-1]
    return _COPY_SUFFIX.sub("", name) or name


def is_config_or_env(path: str) -> bool:
    """Config and env files by name: `.env`, `.env.local`, `.envrc`, `prod.env`, `*.json`, `*.yaml`, …
    and their copies (`config.json.bak`, `.env~`)."""
    name = _file_name(path)
    if name == ".argent-alignment-integrity.json":
        return False  # hashes of the identity files, no secrets, and a tamper check that must stay
    return name.startswith(".env") or name.endswith(CONFIG_SUFFIXES)


_SECRET_KEY = re.compile(
    r"(apikey|secret|token|password|passwd|passphrase|pwd|privatekey|accesskey|authkey|credential"
    r"|sessionkey|signingkey|encryptionkey|masterkey|keydata|webhook|bearer|cookie|dsn|connectionstring|authorization)"
)
# Keys that name where a secret is, or hold counts: never redacted.
_NOT_SECRET_KEY = re.compile(
    r"(tokens|tokenizer|limit|budget|^max|^min|(count|env|file|path|command|cmd|ttl|type|name|id|ids|enabled"
    r"|method|provider|length|size|url|endpoint|header|prefix)$)"
)
# Keys that name a secret only when they are the whole name: `key`, `pass`, `auth` (`keyboard`,
# `bypass` and `author` are no secrets), Redis's `requirepass`/`masterauth`, and a GCP service
# account's `private_key_id` (an `id` else names no secret).
_SECRET_NAMES = frozenset({"key", "pass", "auth", "pw", "requirepass", "masterauth", "privatekeyid"})
_REFERENCE = re.compile(r"^(\$\{[^}]+\}|\$[A-Za-z_][A-Za-z0-9_]*|env:[A-Za-z_][A-Za-z0-9_]*|REDACTED|)$")


@functools.lru_cache(maxsize=4096)  # a file names the same keys again and again
def secret_key(key: str) -> bool:
    norm = re.sub(r"[^a-z0-9]", "", key.lower())
    if norm in _SECRET_NAMES:
        return True
    if not _SECRET_KEY.search(norm):
        return False
    if "webhook" in norm and not norm.endswith(("env", "file", "path", "enabled")):
        return True  # a webhook URL is the secret itself
    return not _NOT_SECRET_KEY.search(norm)


# (kind, pattern, group holding the secret)
TOKEN_SHAPES: tuple[tuple[str, re.Pattern[str], int], ...] = (
    (
        "PEM private key",
        # the body holds no `-----`: a BEGIN with no END costs the text up to the next line of dashes,
        # not the rest of the file (thousands of them were seconds each 100 KB). With no END (a key
        # cut short when pasted, `head id_rsa`), the lines of base64 and `Name: value` headers that
        # follow the BEGIN go with it (they were kept).
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY(?: BLOCK)?-----(?:(?:(?!-----)[\s\S])*+"
            r"-----END [A-Z ]*PRIVATE KEY(?: BLOCK)?-----"
            r"|(?:(?:\r?\n|\\r\\n|\\n){1,2}[ \t]*(?:[A-Za-z0-9+/=]{16,}+|[A-Z][A-Za-z\-]*+: [^\r\n\\]*+))*+)"
        ),
        0,
    ),
    (
        "base64 of a PEM private key",
        # a kubeconfig's client-key-data, `base64 id_rsa` pasted in a note: `-----BEGIN `, then
        # `PRIVATE KEY` at any of its three alignments, then the rest of the base64 (wrapped or not)
        re.compile(
            r"LS0tLS1CRUdJTi[A-Za-z0-9+/]{0,40}?(?:UFJJVkFURSBLRV|BSSVZBVEUgS0VZ|QUklWQVRFIEtFW)"
            r"[A-Za-z0-9+/]*+(?:(?:\r?\n|\\r\\n|\\n)(?=[A-Za-z0-9+/]{2}[A-Za-z0-9+/=]{2})[A-Za-z0-9+/]++)*+=*"
        ),
        0,
    ),
    ("OpenAI/Anthropic-style API key (sk-…)", re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{16,}"), 0),
    (
        "Stripe secret key",
        re.compile(r"(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9]{24,})"),
        0,
    ),
    ("GitHub token", re.compile(r"(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"), 0),
    ("GitLab token", re.compile(r"glpat-[A-Za-z0-9_\-]{20,}"), 0),
    ("Slack token", re.compile(r"(?:xox[abposre]|xapp)-[A-Za-z0-9\-]{10,}"), 0),
    ("Slack webhook URL", re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/_\-]+"), 0),
    ("AWS access key id", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Z])"), 0),
    ("Google API key", re.compile(r"AIza[0-9A-Za-z_\-]{35}"), 0),
    ("Google OAuth token or client secret", re.compile(r"(?:ya29\.|GOCSPX-)[A-Za-z0-9_\-]{20,}"), 0),
    ("Azure storage key", re.compile(r"(?i:\b(?:Account|SharedAccess)Key=)([A-Za-z0-9+/]{20,}=*)"), 1),
    ("Hugging Face token", re.compile(r"hf_[A-Za-z0-9]{30,}"), 0),
    ("npm token", re.compile(r"npm_[A-Za-z0-9]{36}"), 0),
    ("PyPI token", re.compile(r"pypi-AgE[A-Za-z0-9_\-]{40,}"), 0),
    (
        "JSON Web Token",
        # read from where a run of token characters starts, once: from every `eyJ` inside the run
        # (`eyJ-eyJ-…`) it was read to its end again (1 MB: minutes); the header is any such run
        re.compile(r"(?<![A-Za-z0-9_\-])[A-Za-z0-9_\-]{11,}+\.eyJ[A-Za-z0-9_\-]{8,}+\.[A-Za-z0-9_\-]{8,}+"),
        0,
    ),
    ("Bearer token", re.compile(r"(?i:\bbearer)\s+([A-Za-z0-9._~+/\-]{16,}=*)"), 1),
    (
        "Authorization header",
        # `Authorization: Basic …`, `Token …`: the scheme is named, so prose (`Authorization: required`) stays
        re.compile(
            r"(?i:\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:basic|token|digest|apikey|key|sso-key)\s+)"
            r"([A-Za-z0-9._~+/\-]{8,}=*)"
        ),
        1,
    ),
    (
        "API key header",
        re.compile(
            r"(?i:\bx-(?:api-key|auth-token|access-token|token|key)[\"']?\s*:\s*[\"']?)([A-Za-z0-9._~+/\-]{8,}=*)"
        ),
        1,
    ),
    ("Telegram bot token", re.compile(r"\b\d{8,10}:AA[A-Za-z0-9_\-]{33}\b"), 0),
    ("age secret key", re.compile(r"AGE-SECRET-KEY-1[0-9A-Z]{58}"), 0),
    (
        "credential in a URL's query",
        # `?access_token=…`, `&sig=…`, `X-Amz-Signature=…`: a parameter whose name ends in a secret's
        # word; the name's words are bounded, so each `?` or `&` costs the same however long the text
        re.compile(
            r"[?&](?:[A-Za-z0-9]{1,20}[_.\-]){0,3}"
            r"(?i:token|apikey|key|secret|password|passwd|pwd|sig|signature|auth|credential)=([A-Za-z0-9%_.~+/=:*!$\-]+)"
        ),
        1,
    ),
    (
        "password in a URL",
        # the scheme is read once from where its run starts (`a.a.a.…` was read again from each letter)
        re.compile(r"(?<![a-zA-Z0-9+.\-])[a-zA-Z0-9+.\-]*+://[^\s:/@\"'<>]*:([^\s/\"'<>]+)@"),
        1,
    ),
)

# A JSON string never spans lines; one left open runs to the end of its line. Each string is
# read once, possessively, so hostile input (`"\"\"\"…` on one line) costs linear time.
_JSON_STRING = r'"(?:[^"\\\n]|\\.)*+"'
# A value on its key's line is a value whatever follows it (`{"password": "x" : 1}` is not JSON,
# its value goes all the same); on the next line, a string followed by `:` is the next key (when
# `"cfg":` ends its line), not a value.
_JSON_PAIR = re.compile(
    rf'({_JSON_STRING})(?:([ \t\r]*:[ \t\r]*)|(\s*:\s*))({_JSON_STRING})(?(2)|(?!\s*:))|"(?:[^"\\\n]|\\.)*+"?'
)
_LINE_PAIR = re.compile(
    r"^(?P<lead>\ufeff?\s*(?:export\s+|(?:declare|typeset|local|readonly)\s+(?:-[A-Za-z]+\s+)*|set\s+|-\s+)?)"
    r"""(?P<key>[A-Za-z_][A-Za-z0-9_.\-]*|"[^"\n]*"|'[^'\n]*')"""
    r"(?P<sep>\s*[:=]\s*)(?P<val>.*)$"
)
# A `.properties` or `.conf` pair with blanks for its separator (`db.password hunter2`,
# Redis's `requirepass hunter2`), and an env file's csh `setenv PASSWORD hunter2`.
_SPACE_PAIR = re.compile(r"^(?P<lead>\s*(?:setenv\s+)?)(?P<key>[A-Za-z_][A-Za-z0-9_.\-]*)(?P<sep>[ \t]+)(?P<val>.*)$")
_SPACED = (".properties", ".conf")
# A YAML block scalar's header (`token: |`, `key: >-`) and a YAML anchor or tag before a value.
_BLOCK_HEADER = re.compile(r"[|>][+\-0-9]*")
_ANCHOR_OR_TAG = re.compile(r"(?:[&!][^\s]*\s+)+")
_TAG = re.compile(r"![^\s]*\s+")
_FLOW_END = re.compile(r"[,{}\[\]]")
# A YAML line whose value is a block scalar (`key: |-`, `- >`, with an anchor or tag before it),
# and a string quoted on one line (its braces are text).
_YAML_BLOCK_LINE = re.compile(r"^[ \t]*(?:-[ \t]+|[^#\n]*?:[ \t]+)(?:[&!][^\s]*[ \t]+)*[|>][+\-0-9]*[ \t]*(?:#.*)?\r?$")
_YAML_FLOW_START = re.compile(r"[ \t]*(?:-[ \t]+)*(?:[^#\n{\[]*?:[ \t]+)?(?:[&!][^\s]*[ \t]+)*(?=[{\[])")
_QUOTED_ON_LINE = re.compile(r"\"(?:[^\"\\\n]|\\.)*(?:\"|$)|'(?:[^'\n]|'')*(?:'|$)")  # one left open: to the end


# A pair inside a flow map on one line: YAML's `{password: x, token: y}`, a TOML inline table
# `{ password = "x" }`, JSON5's `{password: 'x'}`; and a list of values under a key that names a
# secret (`"passwords": ["x", "y"]`, YAML `tokens: [a, b]`). A match starts only at a line's
# start, a `{` or a `,`, and each string in it ends at its line: linear time. A plain value
# that runs into a `{` is a reference (`${{ secrets.TOKEN }}`, `${PW}`) or no value: left whole.
_FLOW_PAIR = re.compile(
    r"""(?P<pre>(?:^|[{,])[ \t]*)"""
    r"""(?P<key>"(?:[^"\\\n]|\\.)*+"|'(?:[^'\n]|'')*+'|[A-Za-z_][A-Za-z0-9_.\-]*+)"""
    r"""(?P<sep>[ \t]*[:=][ \t]*)"""
    r"""(?P<val>\[(?:[^\[\]{}\n"']|"(?:[^"\\\n]|\\.)*+"|'(?:[^'\n]|'')*+')*+\]|"(?:[^"\\\n]|\\.)*+"|'(?:[^'\n]|'')*+'|[^\s,{}\[\]"'#][^,{}\[\]\n]*+(?![{\[])"""
    r"""|"(?:[^"\\\n]|\\.)*+$|'(?:[^'\n]|'')*+$)""",
    re.MULTILINE,
)
_CLOSERS = re.compile(r"[\s,}\]]*")
_FLOW_ITEM = re.compile(r"""(?P<q>"(?:[^"\\\n]|\\.)*+"|'(?:[^'\n]|'')*+')|[^\s,\[\]"']+""")
# Keys a list may follow that name no single secret but hold them (`credentials`, `passwords`).
_SECRET_LIST = re.compile(r"(tokens|passwords|secrets|keys|apikeys|credentials)$")


_WRITE_ESCAPED = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]")


class _Lines:
    """Line numbers of positions in one text, found by bisection (a redaction each costs log n)."""

    def __init__(self, text: str) -> None:
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def of(self, pos: int) -> int:
        return bisect.bisect_right(self.starts, pos)


def sanitize_text(text: str, file: str) -> tuple[str, list[Redaction]]:
    """`text` with its secrets replaced by `REDACTED`, and what was redacted where."""
    found: list[Redaction] = []
    text = _json_pairs(text, file, found)
    lines = text.split("\n")
    yaml = file.lower().endswith((".yaml", ".yml"))
    unclosed: dict[str, int] = {}  # a quote no line closes from this line on: not looked for again
    n, carried = 0, False
    while n < len(lines):
        line = lines[n]
        if "{" in line or "[" in line or carried:
            lines[n], opened = _flow_pairs(line, n + 1, file, found, carried)
            carried = False
            # a YAML quoted value in a flow map over several lines (PyYAML writes `{apiKey: '0` then
            # `'}}` for "0\n"): its lines below go up to its closing quote, which ends the value
            j = n + 1
            if opened and yaml and unclosed.get(opened, len(lines)) > n:
                while j < len(lines) and (at := _closing(lines[j], opened, 0, False)) < 0:
                    j += 1
                if j < len(lines):
                    lines[n + 1 : j + 1] = [""] * (j - n - 1) + [lines[j][at + 1 :]]
                    n, carried = j, True  # the rest of that line is still in the flow map
                    continue
                unclosed[opened] = n
        n += 1
    # whether each line starts inside a `{` opened on a line above (a flow map over several lines);
    # a brace inside a quoted string, a YAML block scalar (`a: |-` then `  {`) or a YAML plain value
    # (`a: 0{`) opens none: it made the lines below read as a flow map, where a block under a
    # secret key was kept and a plain value cut at its `{`
    inflow: list[bool] = []
    depth, block_end = 0, 0
    for at, line in enumerate(lines):
        inflow.append(depth > 0 and at >= block_end)
        if at < block_end:
            continue
        if yaml and depth == 0:  # a flow map opens only where a value starts: `0{` is plain text
            if _YAML_BLOCK_LINE.match(line):
                block_end = _below(lines, at, len(line) - len(line.lstrip(" \t")))
            opening = _YAML_FLOW_START.match(line)
            if opening is None:
                continue
            line = line[opening.end() :]
        if "{" in line or "}" in line:
            bare = _QUOTED_ON_LINE.sub("", line)
            depth = max(0, depth + bare.count("{") - bare.count("}"))
    out: list[str] = []
    # the file's line number of each line of `out`: a value over several lines became one line,
    # and a shape found below it is reported on the line it was on
    origin: list[int] = []
    i = 0
    while i < len(lines):
        start, first = len(out), i
        i = _by_key(lines, i, out, file, found, inflow)
        origin.extend(range(first + 1, first + 1 + len(out) - start))
    text = "\n".join(out)
    for kind, rx, group in TOKEN_SHAPES:
        text = _by_shape(text, kind, rx, group, file, found, origin)
    # a key may hold a token itself (`"token ghp_…": x`): it is redacted in the list as in the file
    found = [replace(r, key=_masked(r.key)) if r.key else r for r in found]
    found.sort(key=lambda r: (r.line, r.kind))
    return text, found


def sanitize_shapes(text: str, file: str) -> tuple[str, list[Redaction]]:
    """`text` with the secrets that need no key name (`TOKEN_SHAPES`: PEM private key blocks, API
    tokens, JSON Web Tokens, URL passwords) replaced by `REDACTED`: what any text, not only a
    config file, loses in a sanitized export."""
    found: list[Redaction] = []
    for kind, rx, group in TOKEN_SHAPES:
        text = _by_shape(text, kind, rx, group, file, found)
    return text, found


@functools.lru_cache(maxsize=1024)  # a file names the same keys again and again
def _masked(key: str) -> str:
    return sanitize_shapes(key, "")[0]


# Files that are credentials by their name: copies of them are left out of a sanitized export
# (most are formats `sanitize_text` does not read, and none is of use on another machine).
_CREDENTIAL_NAMES = {
    ".netrc": "a .netrc file (machine passwords)",
    "_netrc": "a .netrc file (machine passwords)",
    ".npmrc": "an npm config (registry tokens)",
    ".pypirc": "a PyPI config (upload passwords and tokens)",
    ".pgpass": "a PostgreSQL password file",
    ".git-credentials": "a git credential store",
    ".htpasswd": "an htpasswd file (password hashes)",
    "credentials": "a credentials file (AWS or another tool's keys)",
    "application_default_credentials.json": "Google Cloud application default credentials",
    "id_rsa": "an SSH private key",
    "id_dsa": "an SSH private key",
    "id_ecdsa": "an SSH private key",
    "id_ecdsa_sk": "an SSH private key",
    "id_ed25519": "an SSH private key",
    "id_ed25519_sk": "an SSH private key",
    "kubeconfig": "a Kubernetes config (cluster credentials)",
    ".my.cnf": "a MySQL client config (its password)",
    ".s3cfg": "an s3cmd config (AWS keys)",
    ".boto": "a boto config (AWS keys)",
    ".passwd-s3fs": "an s3fs password file",
    ".dockercfg": "a Docker config (registry logins)",
    ".vault-token": "a HashiCorp Vault token",
}
_CREDENTIAL_SUFFIXES = {
    ".pem": "a PEM key or certificate file",
    ".key": "a private key file",
    ".p12": "a PKCS #12 key store",
    ".pfx": "a PKCS #12 key store",
    ".ppk": "a PuTTY private key",
    ".jks": "a Java key store",
    ".keystore": "a key store",
}
# (folder, name): a file whose name alone says nothing
_CREDENTIAL_PLACES = {
    (".aws", "config"): "an AWS config (it may hold keys)",
    (".kube", "config"): "a Kubernetes config (cluster credentials)",
    (".docker", "config.json"): "a Docker config (registry logins)",
}
_NPMRC_AUTH = re.compile(r"(?m)^[ \t]*(?:\S*:)?_(?:authToken|auth|password)[ \t]*=")
_AWS_SECRET_LINE = re.compile(r"(?im)^[ \t]*aws_secret_access_key[ \t]*[=:]")
_NETRC_ENTRY = re.compile(r"(?:^|\s)machine\s+\S+(?:\s+(?:login|account|port)\s+\S+)*\s+password\s+\S")
# host:port:database:user:password, the port a number or `*` (a .pgpass entry; Windows names the
# file pgpass.conf, which the config reader read as `host: …` and kept whole)
_PGPASS_ENTRY = re.compile(r"(?m)^[ \t]*[^\s:#]++:(?:\d{1,5}|\*):[^\s:]++:[^\s:]++:\S")
_PEM_KEY_FILE = re.compile(r"\s*-----BEGIN [A-Z ]*PRIVATE KEY(?: BLOCK)?-----")


def credential_file(path: str, text: str | None) -> str | None:
    """Why the file at `path` (its text, when it is UTF-8) is a credential file, or None: by its
    name (`.netrc`, `.npmrc`, `.pgpass`, `.git-credentials`, `credentials`, `id_rsa`, `*.pem`,
    `*.key`, `*.p12`, `.aws/config`, `.docker/config.json`, `.kube/config`, ...) or by what it
    holds: an npm registry login, a `.netrc` entry with a password or a `.pgpass` entry (formats `sanitize_text` does
    not read, whatever the file's name), and, unless it is a config or env file (which
    `sanitize_text` reads), a PEM private key first or an AWS secret access key."""
    parts = PurePosixPath(path).parts
    name = _file_name(path) if parts else ""
    folder = parts[-2].lower() if len(parts) > 1 else ""
    reason = _CREDENTIAL_NAMES.get(name) or _CREDENTIAL_PLACES.get((folder, name))
    reason = reason or next((r for suffix, r in _CREDENTIAL_SUFFIXES.items() if name.endswith(suffix)), None)
    if reason or text is None:
        return reason
    if _NPMRC_AUTH.search(text):
        return "registry logins (it holds an npm `_authToken`, `_auth` or `_password` line)"
    if _NETRC_ENTRY.search(text):
        return "machine passwords (it holds a .netrc entry with a password)"
    if _PGPASS_ENTRY.search(text):
        return "database passwords (it holds a PostgreSQL .pgpass entry)"
    if is_config_or_env(path):
        return None
    if _PEM_KEY_FILE.match(text):
        return "a private key (its text is a PEM private key)"
    if _AWS_SECRET_LINE.search(text):
        return "AWS credentials (it holds an aws_secret_access_key)"
    return None


def _json_key(literal: str) -> str:
    """The name a JSON key literal spells, escapes decoded (`"\\u0061piKey"` is `apiKey`)."""
    try:
        name = json.loads(literal)
    except ValueError:
        return literal[1:-1]
    return name if isinstance(name, str) else literal[1:-1]


def _json_pairs(text: str, file: str, found: list[Redaction]) -> str:
    lines = _Lines(text)

    def json_pair(m: re.Match[str]) -> str:
        if m.group(1) is None:  # not a key with a string value
            literal = m.group(0)
            return _escaped(literal, file, lines.of(m.start()), found) if "\\" in literal else literal
        key, sep, value = m.group(1), m.group(2) or m.group(3), m.group(4)
        name = _json_key(key)
        if not secret_key(name):
            if "\\" not in value:  # the line is looked up only for a string `_escaped` reads
                return m.group(0)
            return f"{key}{sep}{_escaped(value, file, lines.of(m.start(4)), found)}"
        if _REFERENCE.match(value[1:-1]):
            return m.group(0)
        found.append(Redaction(file, lines.of(m.start(4)), name, "secret named by its key"))
        return f'{key}{sep}"{REDACTED}"'

    return _JSON_PAIR.sub(json_pair, text)


def _flow_pairs(line: str, number: int, file: str, found: list[Redaction], inside: bool = False) -> tuple[str, str]:
    """One line's pairs in flow maps and lists under secret keys, redacted (see `_FLOW_PAIR`), and
    the quote of a redacted value its line does not close ("" when none: the lines below hold the rest)."""
    lower = file.lower()
    toml = lower.endswith(".toml")
    bare = f'"{REDACTED}"' if toml or lower.endswith(".json") else REDACTED
    # a plain value only inside a `{`: after a `,` in prose (`first, token: see the vault`) it is no
    # pair. How deep in `{` each match is, counted from the last one's start: each byte read once.
    depth = [int(inside), 0]  # the depth at position depth[1]; `inside`: the line goes on a flow map

    def pair(m: re.Match[str]) -> str:
        key, val = m.group("key"), m.group("val")
        name = _json_key(key) if key[:1] == '"' else key.strip("'")
        norm = re.sub(r"[^a-z0-9]", "", name.lower())
        listed = val[:1] == "["
        if not (secret_key(name) or (listed and _SECRET_LIST.search(norm))):
            return m.group(0)
        if listed:
            items: list[str] = []

            def item(i: re.Match[str]) -> str:
                inner = i.group(0)[1:-1] if i.group("q") else i.group(0)
                if _REFERENCE.match(inner):
                    return i.group(0)
                items.append(inner)
                return f"{i.group(0)[0]}{REDACTED}{i.group(0)[0]}" if i.group("q") else bare

            written = "[" + _FLOW_ITEM.sub(item, val[1:-1]) + "]"
            if items:
                found.append(Redaction(file, number, name, "secret named by its key"))
            return f"{m.group('pre')}{key}{m.group('sep')}{written}"
        seen = _QUOTED_ON_LINE.sub("", line[depth[1] : m.start() + 1])  # `{note: '}', …`: text
        depth[0] = max(0, depth[0] + seen.count("{") - seen.count("}"))
        depth[1] = m.start() + 1
        if depth[0] == 0:
            return m.group(0)  # a pair at a line's start (`_by_key` reads it) or in prose
        quoted = val[:1] in ('"', "'")
        core = val[1:-1] if quoted else val.rstrip()
        if quoted and (len(val) == 1 or val[-1:] != val[:1] or (val[-2:-1] == "\\" and val[:1] == '"')):
            opened.append(val[0])  # closed on a line below, if any: written closed here
            found.append(Redaction(file, number, name, "secret named by its key"))
            return f"{m.group('pre')}{key}{m.group('sep')}{val[0]}{REDACTED}{val[0]}"
        if _REFERENCE.match(core):
            return m.group(0)
        found.append(Redaction(file, number, name, "secret named by its key"))
        written = f"{val[0]}{REDACTED}{val[0]}" if quoted else bare + val[len(core) :]
        return f"{m.group('pre')}{key}{m.group('sep')}{written}"

    opened: list[str] = []
    return _FLOW_PAIR.sub(pair, line), "".join(opened[-1:])


def _escaped(literal: str, file: str, line: int, found: list[Redaction]) -> str:
    """A JSON string literal with escapes, its secrets read in what it spells: a token written with
    escapes (`sk-\\u0050…`) and, in a string that holds JSON, the secrets in that JSON. Written
    again only when something was redacted."""
    if "\\" not in literal or len(literal) < 2 or not literal.endswith('"'):
        return literal
    try:
        inner = json.loads(literal)
    except ValueError:
        return literal
    if not isinstance(inner, str):
        return literal
    mine: list[Redaction] = []
    if inner.lstrip()[:1] in ("{", "["):
        cleaned, mine = sanitize_text(inner, file)
    else:
        cleaned, mine = sanitize_shapes(inner, file)
    if not mine:
        return literal
    found.extend(Redaction(file, line, r.key, r.kind) for r in mine)
    written = json.dumps(cleaned, ensure_ascii=False)
    # what it held escaped stays escaped when written raw it cannot be: a lone surrogate (no UTF-8
    # for it: the export failed), or a character YAML refuses or reads as a line break
    return json.dumps(cleaned) if _WRITE_ESCAPED.search(written) else written


def _closing(body: str, quote: str, start: int, toml: bool) -> int:
    """Where the quote that closes a value is in `body`, from `start`, or -1 (`\\"` and `''` are escaped)."""
    i = start
    while (i := body.find(quote, i)) >= 0:
        if quote == "'" and body[i + 1 : i + 2] == "'" and not toml:
            i += 2  # YAML's `''` is one quote inside the value
            continue
        k = i
        while quote[0] == '"' and k > start and body[k - 1] == "\\":
            k -= 1
        if (i - k) % 2 == 0:
            return i
        i += 1
    return -1


def _by_key(lines: list[str], i: int, out: list[str], file: str, found: list[Redaction], inflow: list[bool]) -> int:
    """Line `i` onto `out`, its value redacted if its key names a secret; the index of the next line.

    A value may cover the lines below: a quoted value left open on its line (a dotenv PEM, a TOML
    `\"\"\"` string) up to the line that closes it, a YAML block scalar (`token: |`) the more
    indented lines below; they all become one `REDACTED`."""
    line = lines[i]
    keep = i + 1
    if line.lstrip("\ufeff \t").startswith(("{", "[", "#", ";")):
        out.append(line)
        return keep
    m = _LINE_PAIR.match(line)
    if not m:
        name = PurePosixPath(file).name.lower()
        if name.endswith(_SPACED) or (line.lstrip().startswith("setenv") and _env_name(name)):
            m = _SPACE_PAIR.match(line)
    if m and not secret_key(m.group("key")):
        # a list under a key that holds secrets (`tokens:` then `- a`) goes item by item
        listed = _SECRET_LIST.search(re.sub(r"[^a-z0-9]", "", m.group("key").lower()))
        if listed and not m.group("val").strip() and not _env_name(PurePosixPath(file).name.lower()):
            under = _value_below(lines, i, len(m.group("lead").lstrip("\ufeff")), lists_only=True)
            if under is not None:
                found.append(Redaction(file, i + 1, m.group("key").strip("\"'"), "secret named by its key"))
                out.append(line)
                out.extend(under[1])
                return under[0]
        m = None
    if not m:
        out.append(line)
        return keep
    key = m.group("key").strip("\"'")
    yaml = file.lower().endswith((".yaml", ".yml"))
    if key != m.group("key") and not yaml and not m.group("val").startswith(('"', "'", "|", ">")):
        out.append(line)  # `"token": 12,` is JSON (its strings were read above), a TOML non-string
        return keep
    body = m.group("val").rstrip()
    tail = m.group("val")[len(body) :]  # trailing blanks and a CRLF file's `\r` keep their bytes
    prefix = _ANCHOR_OR_TAG.match(body)
    anchor = prefix.group(0) if prefix else ""
    body = body[len(anchor) :]
    # a tag (`!!bool`, `!!int`) would not read `REDACTED`: the value goes with it, an anchor stays
    anchor = _TAG.sub("", anchor)
    head = f"{m.group('lead')}{m.group('key')}{m.group('sep')}{anchor}"
    # `'''` opens a TOML literal string; in YAML `''''` is one quote, quoted.
    toml = file.lower().endswith(".toml")
    triple = ('"""', "'''") if toml else ('"""',)
    bare = f'"{REDACTED}"' if toml else REDACTED  # TOML has no unquoted string: `token = 8` stays TOML
    quote = body[:3] if body[:3] in triple else body[:1] if body[:1] in ('"', "'") else ""
    if quote:
        close = _closing(body, quote, len(quote), toml)
        if close < 0:  # a quoted value over several lines: up to the line that closes it
            for j in range(i + 1, len(lines)):
                at = _closing(lines[j], quote, 0, toml)
                if at >= 0:
                    found.append(Redaction(file, i + 1, key, "secret named by its key"))
                    rest = lines[j][at:]
                    mapped = inflow[i] and rest[len(quote) :].lstrip(" \t")[:1] in (",", "}", "]")
                    if _goes_on(rest[len(quote) :].rstrip("\r")) and not mapped:
                        rest = "\r" if rest.endswith("\r") else ""
                        out.append(f"{head}{bare}{rest}")
                        return j + 1
                    out.append(f"{head}{quote}{REDACTED}{rest}")
                    return j + 1
            # never closed (a typo, a cut file): the rest of its line is the value (main exported it)
            found.append(Redaction(file, i + 1, key, "secret named by its key"))
            out.append(f"{head}{bare}{tail}")
            return keep
        core, after = body[len(quote) : close], body[close:]
        # `"abc"def` is `abcdef` to a shell, all of it to INI; after a quoted key the `}` or `]` that
        # closes a JSON or flow map on the same line is no part of the value (main dropped it: no JSON)
        closes = key != m.group("key") and _CLOSERS.fullmatch(after[len(quote) :]) is not None
        # in a flow map over several lines a `,`, `}` or `]` after the quote is the map's
        closes = closes or (inflow[i] and after[len(quote) :].lstrip(" \t")[:1] in ("", ",", "}", "]", "#"))
        if _goes_on(after[len(quote) :]) and not closes:
            quote, core, after = "", body, ""
    else:
        core = body.split(" #", 1)[0].rstrip()
        if inflow[i]:  # in a flow map over several lines a plain value ends at a `,`, `}` or `]`
            core = _FLOW_END.split(core, 1)[0].rstrip()
        after = body[len(core) :]
        # A YAML block scalar (`token: |`) or a plain value that goes on over the lines below
        # (YAML folds them, an INI file continues it): the lines indented more than the key. An env
        # file has neither: its next line is its own, however indented.
        env = _env_name(PurePosixPath(file).name.lower())
        # Only a value that then goes whole looks below: a key with nothing after it (`token:`
        # over a nested map) read the rest of its map again on every level (1,000 levels: 5 s)
        block = _BLOCK_HEADER.fullmatch(core) is not None
        plain = core[:1] not in ("", "{", "[", "*", "|", ">") and not _REFERENCE.match(core)
        column = len(m.group("lead").lstrip("\ufeff"))
        if not body and not env and not inflow[i]:
            under = _value_below(lines, i, column)
            if under is not None:
                end, items = under
                found.append(Redaction(file, i + 1, key, "secret named by its key"))
                out.append(line)
                out.extend(items)
                return end
        below = keep if env or inflow[i] or not (block or plain) else _below(lines, i, column)
        if block:
            if below == keep:
                out.append(line)  # an empty block
                return keep
            first = next(x for x in lines[keep:below] if x.strip())  # its indent: the block's
            cr = "\r" if lines[below - 1].endswith("\r") else ""
            found.append(Redaction(file, i + 1, key, "secret named by its key"))
            pad = first[: len(first) - len(first.lstrip(" \t"))]
            out.extend([f"{head}{body}{tail}", f"{pad}{REDACTED}{cr}"])
            return below
        if below > keep and plain:
            cr = "\r" if lines[below - 1].endswith("\r") else ""
            found.append(Redaction(file, i + 1, key, "secret named by its key"))
            out.append(f"{head}{bare}{cr}")
            return below
    if not core or _REFERENCE.match(core) or (not quote and core[:1] in ("{", "[", "*", "|", ">")):
        out.append(line)
        return keep
    found.append(Redaction(file, i + 1, key, "secret named by its key"))
    out.append(f"{head}{quote}{REDACTED if quote else bare}{after}{tail}")
    return keep


def _env_name(name: str) -> bool:
    """An env file by its name: `.env`, `.env.local`, `prod.env`."""
    return name.startswith(".env") or name.endswith(".env")


_ITEM = re.compile(r"(?P<lead>[ \t]*-[ \t]+)(?P<val>.*)")
_PLAIN_BELOW = re.compile(r"[^\s\-#{\[|>&!*?'\"%@`]")


def _value_below(lines: list[str], i: int, column: int, lists_only: bool = False) -> tuple[int, list[str]] | None:
    """A YAML value on the lines below a key with nothing after it (`password:` then an indented
    `hunter2`), or the items of a list there (`passwords:` then `- a`, `- b`): the index after it
    and its lines redacted; None when the lines below are a map, a nested list or nothing. Only the
    lines it takes are read, and they are not read again: linear time."""
    j = i + 1
    while j < len(lines) and not lines[j].strip():
        j += 1
    if j == len(lines):
        return None
    first = lines[j]
    indent = len(first) - len(first.lstrip(" \t"))
    body = first[indent:].rstrip("\r")
    cr = "\r" if first.endswith("\r") else ""
    if indent > column and not lists_only and _PLAIN_BELOW.match(body) and not _LINE_PAIR.match(first):
        end = _below(lines, i, column)  # a plain scalar over one line or more: no map can start in it
        return end, [f"{first[:indent]}{REDACTED}{cr}"]
    if not body.startswith("- ") or indent < column:
        return None
    items: list[str] = []
    while j < len(lines):
        m = _ITEM.fullmatch(lines[j].rstrip("\r"))
        here = len(lines[j]) - len(lines[j].lstrip(" \t"))
        if not m or here != indent or _LINE_PAIR.match(m.group("val")) or not _PLAIN_BELOW.match(m.group("val")):
            break
        value = m.group("val").split(" #", 1)[0].rstrip()
        if _REFERENCE.match(value):
            items.append(lines[j])
        else:
            cr = "\r" if lines[j].endswith("\r") else ""
            items.append(f"{m.group('lead')}{REDACTED}{m.group('val')[len(value) :]}{cr}")
        j += 1
    return (j, items) if items else None


def _goes_on(rest: str) -> bool:
    """Whether the value goes on after its closing quote: `rest` is more than blanks, a `,` and a
    comment (`#` or `;` after a blank)."""
    rest = rest.removeprefix(",")
    return bool(rest.strip()) and not (rest[:1] in (" ", "\t") and rest.lstrip(" \t")[:1] in ("#", ";"))


def _below(lines: list[str], i: int, column: int) -> int:
    """The end of the lines below line `i` indented more than `column` (blank ones inside them too)."""
    j = i + 1
    while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip(" \t")) > column):
        j += 1
    while j > i + 1 and not lines[j - 1].strip():
        j -= 1  # the blank lines after them are not theirs
    return j


def _by_shape(
    text: str,
    kind: str,
    rx: re.Pattern[str],
    group: int,
    file: str,
    found: list[Redaction],
    origin: list[int] | None = None,
) -> str:
    """`text` with the secrets of one shape redacted. `origin`, when given, holds the file's line
    number of each line of `text` and is kept so when a redaction (a PEM block) joins lines."""
    lines: list[_Lines] = []  # built at the first match: most texts have none of most shapes
    joined: list[tuple[int, int]] = []  # (index of a line, how many lines after it a redaction took)

    def replace(m: re.Match[str]) -> str:
        if m.group(group) == REDACTED:
            return m.group(0)
        if not lines:
            lines.append(_Lines(text))
        start, end = m.span(group)
        at = lines[0].of(m.start())
        found.append(Redaction(file, origin[at - 1] if origin else at, None, kind))
        if "\n" in m.group(group):
            joined.append((lines[0].of(start), m.group(group).count("\n")))
        if group == 0:
            return REDACTED
        return m.group(0)[: start - m.start()] + REDACTED + m.group(0)[end - m.start() :]

    sub: Callable[[re.Match[str]], str] = replace
    text = rx.sub(sub, text)
    if origin is not None:
        for line, taken in reversed(joined):
            del origin[line : line + taken]
    return text
