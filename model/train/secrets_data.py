"""Labelled documents for training and evaluating the hard-coded secrets and personal data tagger.

A sample is a whole document (a window of real Python with a snippet inserted, or a small config
file or script) with the character spans of every secret and personal datum in it, labelled with
the StarPII entity types. A private key is one span, from `-----BEGIN` through the END line's last
dash. USERNAME is only labelled where a password sits beside it (URL credentials, auth tuples,
`-u user -p...`, `sshpass ... user@host`); an e-mail address is personal data (role mailboxes such
as noreply@company.io included) unless its domain is example.*, test.com or localhost.
"""

from __future__ import annotations

import ast
import base64
import ipaddress
import json
import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from model.train.data import SourceFile

LABELS = ("KEY", "PASSWORD", "EMAIL", "IP_ADDRESS", "USERNAME")

# Key formats and one container that training never sees, to measure generalisation.
HELD_OUT_FORMATS = frozenset({
    "twilio_key", "sendgrid_key", "anthropic_key", "azure_storage_key", "npm_token", "toml_file",
})
HELD_OUT_SHARE = 0.4  # of eval positives built around a held-out format

ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"
PASSWORD_SYMBOLS = "!@^&*-_+=.?~"
URL_PASSWORD_SYMBOLS = "-_.~!*"
# All among model.tagging.WELL_KNOWN_RESOLVERS; kept as they are: the generated sets stay put.
WELL_KNOWN_DNS = ("8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "208.67.222.222")


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    label: str


@dataclass(frozen=True)
class Sample:
    text: str
    spans: tuple[Span, ...]
    language: str
    formats: tuple[str, ...]


@dataclass(frozen=True)
class Mark:
    """Text that is a secret or personal datum, with its label."""

    text: str
    label: str


Piece: TypeAlias = "str | Mark"
Line: TypeAlias = "list[Piece]"


@dataclass(frozen=True)
class Value:
    """A config value; kind is str, num, bool, env (pieces hold the variable name) or list."""

    kind: str
    pieces: tuple[Piece, ...] = ()
    items: tuple[Value, ...] = ()


@dataclass(frozen=True)
class Entry:
    name: tuple[str, ...]  # words, styled per language (API_KEY, apiKey, api-key)
    value: Value


@dataclass
class Draw:
    """The random source of one call, the key formats it may use, and the formats it used."""

    rng: random.Random
    key_formats: tuple[str, ...]
    used: list[str] = field(default_factory=list)
    focus: tuple[str, ...] = ()  # formats the next key must come from (held-out ones, in eval)

    def pick(self, options: Sequence[str]) -> str:
        return options[self.rng.randrange(len(options))]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p


def text_of(pieces: Sequence[Piece]) -> str:
    return "".join(p.text if isinstance(p, Mark) else p for p in pieces)


def string_value(*pieces: Piece) -> Value:
    return Value("str", tuple(pieces))


def chars(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choices(alphabet, k=n))


# ---- secret values --------------------------------------------------------------------------

def aws_access_key(rng: random.Random) -> str:
    return rng.choice(("AKIA", "AKIA", "AKIA", "ASIA")) + chars(rng, UPPER_DIGITS, 16)


def github_token(rng: random.Random) -> str:
    return rng.choice(("ghp_", "ghp_", "gho_", "ghs_", "ghu_")) + chars(rng, ALNUM, 36)


def github_pat(rng: random.Random) -> str:
    return "github_pat_" + chars(rng, ALNUM, 22) + "_" + chars(rng, ALNUM, 59)


def slack_token(rng: random.Random) -> str:
    team = chars(rng, string.digits, rng.randint(10, 13))
    if rng.random() < 0.5:
        return f"xoxb-{team}-{chars(rng, string.digits, 13)}-{chars(rng, ALNUM, 24)}"
    user = chars(rng, string.digits, 13)
    return f"xoxp-{team}-{user}-{chars(rng, string.digits, 13)}-{chars(rng, HEX, 32)}"


def openai_key(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return "sk-" + chars(rng, ALNUM, 48)
    return "sk-proj-" + chars(rng, B64URL, rng.randint(48, 74))


def jwt_token(rng: random.Random) -> str:
    alg = rng.choice(("HS256", "RS256", "ES256"))
    header: dict[str, object] = {"alg": alg, "typ": "JWT"}
    issued = rng.randint(1_600_000_000, 1_750_000_000)
    payload: dict[str, object] = {"sub": str(rng.randint(10**6, 10**9)), "iat": issued}
    if rng.random() < 0.6:
        payload["exp"] = issued + rng.choice((900, 3600, 86400))
    if rng.random() < 0.5:
        payload["role"] = rng.choice(["admin", "service", "reader", "deploy"])

    def part(obj: dict[str, object]) -> str:
        raw = json.dumps(obj, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signature = chars(rng, B64URL, 43 if alg == "HS256" else rng.choice((86, 342)))
    return f"{part(header)}.{part(payload)}.{signature}"


PEM_KINDS = (("RSA PRIVATE KEY", "MIIEpAIBAAKCAQEA"),
             ("PRIVATE KEY", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"),
             ("EC PRIVATE KEY", "MHcCAQEEI"), ("OPENSSH PRIVATE KEY", "b3BlbnNzaC1rZXktdjEAAAAA"))


def private_key(rng: random.Random) -> str:
    kind, opening = PEM_KINDS[rng.randrange(len(PEM_KINDS))]
    body = opening + chars(rng, B64, rng.randint(3, 9) * 64 - len(opening) + rng.randint(0, 40))
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "\n".join([f"-----BEGIN {kind}-----", *lines, f"-----END {kind}-----"])


def stripe_key(rng: random.Random) -> str:
    return rng.choice(("sk_live_", "rk_live_")) + chars(rng, ALNUM, rng.choice((24, 99)))


def generic_token(rng: random.Random) -> str:
    alphabet = rng.choice((ALNUM, B64, B64URL))
    return chars(rng, alphabet, rng.randint(20, 48))


GENERIC_NAMES = (
    ("api", "key"), ("secret", "key"), ("auth", "token"), ("client", "secret"), ("access", "token"),
    ("app", "secret"), ("api", "secret"), ("secret", "token"), ("private", "token"),
    ("signing", "secret"), ("webhook", "secret"), ("encryption", "key"), ("master", "key"),
    ("service", "token"), ("payments", "api", "key"), ("x", "api", "key"), ("api", "token"),
)

KeyMaker: TypeAlias = "Callable[[random.Random], tuple[Piece, ...]]"


def whole(make: Callable[[random.Random], str]) -> KeyMaker:
    return lambda rng: (Mark(make(rng), "KEY"),)


def slack_webhook(rng: random.Random) -> tuple[Piece, ...]:
    team, channel = chars(rng, UPPER_DIGITS, 8), chars(rng, UPPER_DIGITS, 10)
    path = f"https://hooks.slack.com/services/T{team}/B{channel}/"
    return (path, Mark(chars(rng, ALNUM, 24), "KEY"))


def azure_connection(rng: random.Random) -> tuple[Piece, ...]:
    account = rng.choice(("prod", "acme", "media", "logs", "backup")) + chars(rng, string.digits, 3)
    head = f"DefaultEndpointsProtocol=https;AccountName={account}store;AccountKey="
    return (head, Mark(chars(rng, B64, 86) + "==", "KEY"), ";EndpointSuffix=core.windows.net")


KEY_FORMATS: dict[str, tuple[KeyMaker, tuple[tuple[str, ...], ...]]] = {
    "aws_access_key": (whole(aws_access_key), (("aws", "access", "key", "id"),)),
    "aws_secret_key": (whole(lambda r: chars(r, B64, 40)),
                       (("aws", "secret", "access", "key"), ("aws", "secret", "key"))),
    "github_token": (whole(github_token),
                     (("github", "token"), ("gh", "token"), ("github", "access", "token"))),
    "github_pat": (whole(github_pat), (("github", "token"), ("github", "pat"))),
    "gitlab_token": (whole(lambda r: "glpat-" + chars(r, B64URL, 20)),
                     (("gitlab", "token"), ("gitlab", "private", "token"))),
    "slack_token": (whole(slack_token), (("slack", "bot", "token"), ("slack", "token"))),
    "slack_webhook": (slack_webhook, (("slack", "webhook", "url"), ("webhook", "url"))),
    "stripe_key": (whole(stripe_key), (("stripe", "secret", "key"), ("stripe", "api", "key"))),
    "google_api_key": (whole(lambda r: "AIza" + chars(r, B64URL, 35)),
                       (("google", "api", "key"), ("maps", "api", "key"), ("gcp", "api", "key"))),
    "openai_key": (whole(openai_key), (("openai", "api", "key"), ("openai", "key"))),
    "anthropic_key": (whole(lambda r: "sk-ant-api03-" + chars(r, B64URL, 93) + "AA"),
                      (("anthropic", "api", "key"), ("claude", "api", "key"))),
    "huggingface_token": (whole(lambda r: "hf_" + chars(r, string.ascii_letters, 34)),
                          (("hf", "token"), ("huggingface", "token"),
                           ("hugging", "face", "hub", "token"))),
    "twilio_key": (whole(lambda r: "SK" + chars(r, HEX, 32)), (("twilio", "api", "key"),)),
    "sendgrid_key": (whole(lambda r: f"SG.{chars(r, B64URL, 22)}.{chars(r, B64URL, 43)}"),
                     (("sendgrid", "api", "key"),)),
    "npm_token": (whole(lambda r: "npm_" + chars(r, ALNUM, 36)),
                  (("npm", "token"), ("npm", "auth", "token"))),
    "mailgun_key": (whole(lambda r: "key-" + chars(r, HEX, 32)), (("mailgun", "api", "key"),)),
    "jwt": (whole(jwt_token),
            (("jwt", "token"), ("access", "token"), ("bearer", "token"), ("id", "token"))),
    "azure_storage_key": (azure_connection, (("azure", "storage", "connection", "string"),
                                             ("storage", "connection", "string"))),
    "private_key": (whole(private_key),
                    (("private", "key"), ("ssh", "private", "key"), ("tls", "key"))),
    "generic_hex": (whole(lambda r: chars(r, HEX, r.choice((32, 40, 48, 64)))), GENERIC_NAMES),
    "generic_token": (whole(generic_token), GENERIC_NAMES),
}
# Key formats usable as a bearer token in an Authorization header.
BEARER_FORMATS = ("github_token", "github_pat", "gitlab_token", "openai_key", "anthropic_key",
                  "huggingface_token", "jwt", "generic_token", "generic_hex", "npm_token",
                  "slack_token", "sendgrid_key", "stripe_key")

WORDS = ("summer", "winter", "dragon", "monkey", "sunshine", "football", "shadow", "tiger",
         "purple",
         "falcon", "coffee", "rocket", "orange", "matrix", "thunder", "banana", "galaxy", "phoenix",
         "cookie", "pepper", "maple", "river", "silver", "marina", "berlin", "london", "hunter",
         "spring", "autumn", "ocean", "trouble", "horse", "battery", "staple")
LEET = str.maketrans({"a": "4", "e": "3", "o": "0", "i": "1", "s": "5"})


def human_password(rng: random.Random, symbols: str) -> str:
    word, other = rng.choice(WORDS), rng.choice(WORDS)
    shape = rng.randrange(4)
    if shape == 0:
        return f"{word.capitalize()}{rng.randint(1985, 2025)}{rng.choice(symbols)}"
    if shape == 1:
        return f"{word.translate(LEET)}{rng.choice(symbols)}{rng.randint(0, 99)}"
    if shape == 2:
        return f"{word.capitalize()}{other.capitalize()}{rng.randint(10, 999)}"
    first, last = rng.choice(symbols), rng.choice(symbols)
    return f"{word}{first}{other.capitalize()}{rng.randint(1, 9)}{last}"


def password(draw: Draw, symbols: str = PASSWORD_SYMBOLS) -> str:
    if draw.chance(0.55):
        draw.used.append("password_human")
        return human_password(draw.rng, symbols)
    draw.used.append("password_random")
    n = draw.rng.randint(12, 24)
    while True:
        value = chars(draw.rng, ALNUM + symbols, n)
        if any(c.isdigit() for c in value) and value[0] not in symbols:
            return value


FIRST_NAMES = ("james", "maria", "wei", "aisha", "lukas", "sofia", "raj", "yuki", "olga", "carlos",
               "fatima", "liam", "emma", "noah", "chloe", "mateo", "anna", "kenji", "priya", "tom",
               "lena", "omar", "ines", "david", "sara", "jonas", "mei", "ivan", "elena", "kwame")
LAST_NAMES = ("smith", "garcia", "chen", "khan", "muller", "rossi", "patel", "tanaka", "ivanova",
              "lopez", "haddad", "brown", "nguyen", "kowalski", "schmidt", "dubois", "silva", "kim",
              "jensen", "okafor", "novak", "fischer", "moreau", "yilmaz", "andersson", "oconnor",
              "martin", "weber", "sato", "singh")
FREE_MAIL = ("gmail.com", "outlook.com", "yahoo.com", "hotmail.com", "proton.me", "icloud.com",
             "gmx.de", "web.de", "yahoo.co.uk", "hotmail.fr")
COMPANIES = ("acme", "northwind", "brightlane", "quantix", "helio", "kontor", "bluepeak", "fernway",
             "oakridge", "tidalworks", "vireo", "lumenlabs", "stackforge", "parcelly", "datanest")
COMPANY_TLDS = (".io", ".com", ".de", ".co.uk", ".fr", ".nl", ".dev", ".ai")
ROLE_MAILBOXES = ("dev", "ops", "security", "billing", "support", "noreply", "alerts", "hr")


def person_name(rng: random.Random) -> tuple[str, str]:
    return rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)


def email_address(rng: random.Random, name: tuple[str, str] | None = None) -> str:
    first, last = name or person_name(rng)
    if rng.random() < 0.5:
        domain = rng.choice(FREE_MAIL)
    else:
        domain = rng.choice(COMPANIES) + rng.choice(COMPANY_TLDS)
        if rng.random() < 0.15:
            return f"{rng.choice(ROLE_MAILBOXES)}@{domain}"
    local = rng.choice((f"{first}.{last}", f"{first[0]}{last}", f"{first}_{last}",
                        f"{first}{last[0]}",
                        f"{first}{rng.randint(1, 99)}", f"{last}.{first}"))
    return f"{local}@{domain}"


def display_name(name: tuple[str, str]) -> str:
    return f"{name[0].capitalize()} {name[1].capitalize()}"


def public_ipv4(rng: random.Random) -> str:
    while True:
        ip = ipaddress.IPv4Address(rng.randint(1 << 24, (224 << 24) - 1))
        if ip.is_global and str(ip) not in WELL_KNOWN_DNS and not str(ip).endswith((".0", ".255")):
            return str(ip)


IPV6_PREFIXES = ("2a01:4f8", "2606:4700", "2600:1f18", "2a03:2880", "2604:a880", "2001:41d0",
                 "2a00:1450")


def public_ipv6(rng: random.Random) -> str:
    head = rng.choice(IPV6_PREFIXES)
    groups = [format(rng.randrange(1 << 16), "x") for _ in range(rng.choice((2, 6)))]
    if len(groups) == 2:
        return f"{head}:{groups[0]}::{groups[1]}"
    return ":".join([head, *groups])


def private_ip(rng: random.Random) -> str:
    r = rng.randint
    return rng.choice((
        f"10.{r(0, 255)}.{r(0, 255)}.{r(1, 254)}", f"172.{r(16, 31)}.{r(0, 255)}.{r(1, 254)}",
        f"192.168.{r(0, 255)}.{r(1, 254)}", "127.0.0.1", "0.0.0.0", f"192.0.2.{r(1, 254)}",
        f"198.51.100.{r(1, 254)}", f"203.0.113.{r(1, 254)}", f"169.254.{r(0, 255)}.{r(1, 254)}",
        rng.choice(WELL_KNOWN_DNS), "::1", f"fd{r(0, 255):02x}:{r(0, 65535):x}::{r(1, 255):x}"))


# ---- entries: positives, hard negatives and ordinary settings --------------------------------

USERNAMES = ("admin", "root", "app", "deploy", "postgres", "svc_backend", "jenkins", "analytics_ro",
             "etl", "webapp", "grafana", "backup", "ci-bot", "reporting", "api_user")
PG_HOSTS = ("db.internal", "prod-db-01.c9akciq32.eu-west-1.rds.amazonaws.com", "pg.brightlane.de",
            "postgres", "db")
MYSQL_HOSTS = ("mysql.acme.io", "db.internal", "mysql-primary.svc.cluster.local", "db")
SQL_NAMES = (("database", "url"), ("db", "url"), ("sqlalchemy", "database", "uri"), ("dsn",))
MONGO_NAMES = (("mongo", "uri"), ("mongodb", "url"), ("database", "url"), ("connection", "string"))


@dataclass(frozen=True)
class UrlScheme:
    scheme: str
    port: int  # 0: none written
    path: str
    hosts: tuple[str, ...]
    names: tuple[tuple[str, ...], ...]  # settings that usually hold such a URL


URL_SCHEMES = (
    UrlScheme("postgresql", 5432, "/app", PG_HOSTS, SQL_NAMES),
    UrlScheme("postgres", 5432, "/orders", PG_HOSTS, SQL_NAMES),
    UrlScheme("mysql", 3306, "/shop", MYSQL_HOSTS, SQL_NAMES),
    UrlScheme("mysql+pymysql", 3306, "/analytics", MYSQL_HOSTS, SQL_NAMES),
    UrlScheme("mongodb+srv", 0, "/prod?retryWrites=true",
              ("cluster0.x7fq2.mongodb.net", "prod.ab12c.mongodb.net"), MONGO_NAMES),
    UrlScheme("mongodb", 27017, "/events", ("mongo-0.mongo.svc.cluster.local", "mongo"),
              MONGO_NAMES),
    UrlScheme("redis", 6379, "/0", ("redis-prod.cache.windows.net", "redis", "cache.internal"),
              (("redis", "url"), ("cache", "url"))),
    UrlScheme("amqp", 5672, "/vhost",
              ("rabbitmq.svc.cluster.local", "rabbitmq", "mq.northwind.co.uk"),
              (("broker", "url"), ("celery", "broker", "url"), ("amqp", "url"))),
    UrlScheme("ftp", 21, "/uploads", ("ftp.northwind.co.uk", "files.acme.io"),
              (("ftp", "url"), ("upload", "target"))),
    UrlScheme("https", 0, "/acme/deploy.git", ("git.fernway.nl", "gitlab.kontor.de"),
              (("repo", "url"), ("git", "remote"))),
)
PASSWORD_NAMES = (("password",), ("db", "password"), ("passwd",), ("pwd",), ("admin", "password"),
                  ("smtp", "password"), ("mysql", "root", "password"), ("redis", "password"),
                  ("postgres", "password"), ("ldap", "bind", "password"),
                  ("email", "host", "password"), ("db", "pass"))
EMAIL_NAMES = (("author", "email"), ("contact",), ("admin", "email"), ("from", "email"),
               ("sender",),
               ("maintainer",), ("reply", "to"), ("support", "email"), ("owner",), ("notify",))
IP_NAMES = (("host",), ("db", "host"), ("server",), ("bind", "address"), ("upstream",),
            ("endpoint", "ip"),
            ("redis", "host"), ("smtp", "host"), ("public", "ip"), ("ssh", "host"))


def url_scheme(draw: Draw, schemes: Sequence[str] = ()) -> UrlScheme:
    fitting = [u for u in URL_SCHEMES if not schemes or u.scheme in schemes]
    return fitting[draw.rng.randrange(len(fitting))]


def credential_url(draw: Draw, url: UrlScheme) -> tuple[Piece, ...]:
    """scheme://USER:PASSWORD@host:port/path, the host a name or (labelled) a public IP."""
    draw.used.append("url_credentials")
    user = Mark(draw.pick(USERNAMES), "USERNAME")
    secret = Mark(password(draw, URL_PASSWORD_SYMBOLS), "PASSWORD")
    host: Piece = draw.pick(url.hosts)
    if not url.scheme.endswith("+srv") and draw.chance(0.3):
        draw.used.append("ipv4")
        host = Mark(public_ipv4(draw.rng), "IP_ADDRESS")
    tail = (f":{url.port}" if url.port else "") + url.path
    return (f"{url.scheme}://", user, ":", secret, "@", host, tail)


def key_entries(draw: Draw, fmt: str) -> list[Entry]:
    make, names = KEY_FORMATS[fmt]
    draw.used.append(fmt)
    entry = Entry(names[draw.rng.randrange(len(names))], Value("str", make(draw.rng)))
    if fmt == "aws_access_key" and draw.chance(0.7):
        draw.used.append("aws_secret_key")
        secret = KEY_FORMATS["aws_secret_key"][0](draw.rng)
        return [entry, Entry(("aws", "secret", "access", "key"), Value("str", secret))]
    return [entry]


def pick_key_format(draw: Draw, allowed: Sequence[str] | None = None) -> str:
    pool = draw.focus or draw.key_formats
    draw.focus = ()
    fitting = [f for f in pool if allowed is None or f in allowed]
    return draw.pick(fitting or pool)


def positive_entries(draw: Draw, family: str, multiline: bool = True) -> list[Entry]:
    """One family's entries: a key (two for AWS), a password, a credential URL, e-mail or IP."""
    if family == "key":
        fmt = pick_key_format(draw)
        while fmt == "private_key" and not multiline:
            fmt = pick_key_format(draw)
        return key_entries(draw, fmt)
    if family == "password":
        secret = Entry(PASSWORD_NAMES[draw.rng.randrange(len(PASSWORD_NAMES))],
                       string_value(Mark(password(draw), "PASSWORD")))
        if draw.chance(0.4):  # the user name in a plain setting is not labelled
            return [Entry(("user",) if draw.chance(0.5) else ("db", "user"),
                          string_value(draw.pick(USERNAMES))), secret]
        return [secret]
    if family == "url":
        url = url_scheme(draw)
        return [Entry(name_of(draw, url.names), Value("str", credential_url(draw, url)))]
    if family == "email":
        draw.used.append("email")
        if draw.chance(0.25):
            items = tuple(string_value(Mark(email_address(draw.rng), "EMAIL"))
                          for _ in range(draw.rng.randint(2, 3)))
            name = ("recipients",) if draw.chance(0.5) else ("admins",)
            return [Entry(name, Value("list", items=items))]
        return [Entry(EMAIL_NAMES[draw.rng.randrange(len(EMAIL_NAMES))],
                      string_value(Mark(email_address(draw.rng), "EMAIL")))]
    return ip_entries(draw)


def ip_entries(draw: Draw) -> list[Entry]:
    if draw.chance(0.3):
        draw.used.append("ipv4")
        items = [string_value(Mark(public_ipv4(draw.rng), "IP_ADDRESS"))
                 for _ in range(draw.rng.randint(1, 3))]
        if draw.chance(0.5):
            items.insert(draw.rng.randrange(len(items) + 1), string_value(private_ip(draw.rng)))
            draw.used.append("neg_private_ip")
        return [Entry(("allowed", "ips") if draw.chance(0.5) else ("ip", "allowlist"),
                      Value("list", items=tuple(items)))]
    v6 = draw.chance(0.2)
    draw.used.append("ipv6" if v6 else "ipv4")
    address = public_ipv6(draw.rng) if v6 else public_ipv4(draw.rng)
    return [Entry(name_of(draw, IP_NAMES), string_value(Mark(address, "IP_ADDRESS")))]


SECRET_NAMES = (*GENERIC_NAMES, *PASSWORD_NAMES, ("github", "token"),
                ("aws", "secret", "access", "key"), ("stripe", "secret", "key"),
                ("openai", "api", "key"), ("slack", "bot", "token"),
                ("database", "url"), ("jwt", "secret"), ("hf", "token"), ("npm", "token"))
PLACEHOLDERS = ("<your-api-key>", "YOUR_API_KEY", "changeme", "xxxxxxxxxxxxxxxx", "***",
                "REPLACE_ME", "TODO", "dummy", "secret", "password", "your-token-here",
                "<insert token>", "CHANGE_ME", "********", "sk_live_" + "x" * 24, "ghp_" + "x" * 36,
                "AKIAXXXXXXXXXXXXXXXX", "test", "example", "none", "<password>", "{{ api_key }}")
HASH_NAMES = {32: (("md5",), ("checksum",), ("etag",)), 40: (("sha1",), ("checksum",), ("digest",)),
              64: (("sha256",), ("checksum",), ("digest",), ("content", "hash"), ("file", "hash"))}
COMMIT_NAMES = (("commit",), ("rev",), ("revision",), ("git", "sha"), ("commit", "sha"),
                ("build", "sha"))
UUID_NAMES = (("request", "id"), ("tenant", "id"), ("client", "id"), ("project", "id"),
              ("installation", "id"), ("trace", "id"), ("correlation", "id"))
EXAMPLE_EMAILS = ("user@example.com", "admin@example.org", "you@example.com", "noreply@example.net",
                  "test@test.com", "root@localhost", "jane.doe@example.com", "dev@example.org")
SAFE_URLS = ("https://api.github.com/repos", "https://api.stripe.com/v1", "https://hooks.slack.com",
             "http://localhost:8000/callback", "https://pypi.org/simple",
             "https://registry.npmjs.org/",
             "https://oauth2.googleapis.com/token", "https://login.microsoftonline.com/common")
SECRET_PATHS = ("~/.ssh/id_rsa", "/etc/ssl/private/server.key", "/run/secrets/db_password",
                "./secrets/api_key.txt", "/var/run/secrets/kubernetes.io/serviceaccount/token",
                "~/.aws/credentials", "config/master.key", "/etc/app/token")


def uuid4(rng: random.Random) -> str:
    h = chars(rng, HEX, 32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{rng.choice('89ab')}{h[17:20]}-{h[20:]}"


def png_data_uri(rng: random.Random) -> str:
    raw = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + rng.randbytes(rng.randint(30, 80))
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def name_of(draw: Draw, names: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
    return names[draw.rng.randrange(len(names))]


def negative_entry(draw: Draw, kind: str) -> Entry:
    """A setting that looks like a secret or personal datum and is not one."""
    draw.used.append(kind)
    rng = draw.rng
    if kind == "neg_env_lookup":
        name = name_of(draw, SECRET_NAMES)
        return Entry(name, Value("env", ("_".join(name).upper(),)))
    if kind == "neg_placeholder":
        return Entry(name_of(draw, SECRET_NAMES), string_value(draw.pick(PLACEHOLDERS)))
    if kind == "neg_empty":
        return Entry(name_of(draw, SECRET_NAMES), string_value(""))
    if kind == "neg_hash":
        size = rng.choice((32, 40, 64))
        digest = chars(rng, HEX, size)
        if size == 64 and rng.random() < 0.3:
            digest = "sha256:" + digest
        return Entry(name_of(draw, HASH_NAMES[size]), string_value(digest))
    if kind == "neg_integrity":
        algo, n = rng.choice((("sha512", 86), ("sha384", 64)))
        return Entry(("integrity",),
                     string_value(f"{algo}-{chars(rng, B64, n)}{'==' if n == 86 else ''}"))
    if kind == "neg_uuid":
        return Entry(name_of(draw, UUID_NAMES), string_value(uuid4(rng)))
    if kind == "neg_commit":
        commit = chars(rng, HEX, rng.choice((40, 40, 7, 8, 12)))
        return Entry(name_of(draw, COMMIT_NAMES), string_value(commit))
    if kind == "neg_private_ip":
        return Entry(name_of(draw, IP_NAMES), string_value(private_ip(rng)))
    if kind == "neg_example_email":
        return Entry(name_of(draw, EMAIL_NAMES), string_value(draw.pick(EXAMPLE_EMAILS)))
    if kind == "neg_version":
        parts = [rng.randint(0, 12) for _ in range(rng.choice((3, 4, 4)))]
        return Entry(("version",) if rng.random() < 0.6 else ("app", "version"),
                     string_value(".".join(map(str, parts))))
    if kind == "neg_url":
        if rng.random() < 0.3:
            database = f"postgresql://{draw.pick(PG_HOSTS)}:5432/app"
            return Entry(("database", "url"), string_value(database))
        url_names = (("api", "url"), ("base", "url"), ("endpoint",), ("token", "url"),
                     ("auth", "url"))
        return Entry(name_of(draw, url_names), string_value(draw.pick(SAFE_URLS)))
    if kind == "neg_path":
        names = (("key", "file"), ("ssh", "key", "path"), ("credentials", "file"),
                 ("secret", "file"), ("token", "path"), ("cert", "path"))
        return Entry(name_of(draw, names), string_value(draw.pick(SECRET_PATHS)))
    if kind == "neg_data_uri":
        return Entry(name_of(draw, (("icon",), ("logo",), ("placeholder", "image"))),
                     string_value(png_data_uri(rng)))
    return Entry(name_of(draw, (("token", "ttl"), ("key", "size"), ("password", "min", "length"),
                                ("max", "retries"), ("session", "timeout"))),
                 Value("num", (str(rng.choice((8, 12, 30, 300, 2048, 3600, 86400))),)))


NEGATIVE_KINDS = ("neg_env_lookup", "neg_env_lookup", "neg_env_lookup", "neg_placeholder",
                  "neg_placeholder", "neg_empty", "neg_hash", "neg_integrity", "neg_uuid",
                  "neg_commit", "neg_commit", "neg_private_ip", "neg_private_ip",
                  "neg_example_email", "neg_version", "neg_url", "neg_path", "neg_data_uri",
                  "neg_number")

NEUTRAL: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("port",), "num", "8080"), (("port",), "num", "5432"), (("debug",), "bool", "false"),
    (("debug",), "bool", "true"), (("log", "level"), "str", "info"),
    (("name",), "str", "billing-service"), (("region",), "str", "eu-west-1"),
    (("workers",), "num", "4"), (("timeout",), "num", "30"),
    (("image",), "str", "nginx:1.25-alpine"), (("data", "dir"), "str", "/var/lib/app"),
    (("bucket",), "str", "assets-prod"), (("replicas",), "num", "3"),
    (("use", "tls"), "bool", "true"), (("environment",), "str", "production"),
    (("database",), "str", "orders"), (("user",), "str", "app"), (("cache", "ttl"), "num", "600"),
    (("service", "name"), "str", "api-gateway"), (("max", "connections"), "num", "100"),
    (("locale",), "str", "en_US"), (("verify", "ssl"), "bool", "true"),
)


def neutral_entry(draw: Draw) -> Entry:
    name, kind, text = NEUTRAL[draw.rng.randrange(len(NEUTRAL))]
    return Entry(name, Value(kind, (text,)))


# ---- rendering -------------------------------------------------------------------------------

def style_name(words: tuple[str, ...], style: str) -> str:
    if style == "upper":
        return "_".join(words).upper()
    if style == "camel":
        return words[0] + "".join(w.capitalize() for w in words[1:])
    return ("-" if style == "kebab" else "_").join(words)


def quoted(pieces: Sequence[Piece], quote: str) -> list[Piece]:
    return [quote, *pieces, quote]


def escaped_newlines(pieces: Sequence[Piece]) -> list[Piece]:
    """A JSON-style string body: line ends written as \\n."""
    return [Mark(p.text.replace("\n", "\\n"), p.label) if isinstance(p, Mark)
            else p.replace("\n", "\\n") for p in pieces]


ENV_FORMS: dict[str, tuple[str, ...]] = {
    "python": ('os.environ["{0}"]', 'os.getenv("{0}")', 'os.environ.get("{0}", "")',
               "os.environ.get('{0}')"),
    "javascript": ("process.env.{0}", 'process.env["{0}"]', 'process.env.{0} ?? ""',
                   "process.env.{0} || ''"),
    "yaml": ("${{{0}}}", '"${{{0}}}"', "${{{{ secrets.{0} }}}}", "{{{{ .Values.{1} }}}}"),
    "json": ('"${{{0}}}"', '"$env:{0}"'),
    "dotenv": ("${{{0}}}", '"${{{0}}}"'),
    "shellscript": ('"${0}"', '"${{{0}}}"', '"${{{0}:?missing {0}}}"', '"$(cat /run/secrets/{1})"'),
    "ini": ("${{{0}}}", "%(ENV_{0})s"),
    "toml": ('"${{{0}}}"', '"env:{0}"'),
    "dockerfile": ("${{{0}}}", "${0}"),
}


def env_reference(draw: Draw, language: str, var: str) -> str:
    forms = ENV_FORMS["javascript" if language == "typescript" else language]
    return draw.pick(forms).format(var, var.lower())


def number_text(value: Value, language: str) -> str:
    text = text_of(value.pieces)
    if value.kind == "bool" and language == "python":
        return text.capitalize()
    return text


SAFE_PLAIN = re.compile(r"[A-Za-z0-9_./:-]*[A-Za-z_/][A-Za-z0-9_./:-]*")
AMBIGUOUS_PLAIN = {"true", "false", "yes", "no", "on", "off", "null", "none"}


def quote_for(draw: Draw, language: str, pieces: Sequence[Piece]) -> list[Piece]:
    """A string literal in language; multi-line text in the form each language allows."""
    text = text_of(pieces)
    multiline = "\n" in text
    if language == "python":
        if multiline:
            return quoted(pieces, '"""')
        return quoted(pieces, draw.pick(('"', '"', "'")))
    if language in ("javascript", "typescript"):
        return quoted(pieces, "`" if multiline else draw.pick(('"', "'", "'")))
    if language in ("json", "toml"):
        return quoted(escaped_newlines(pieces), '"')
    if language in ("dotenv", "dockerfile", "ini", "yaml"):
        plain = (not multiline and SAFE_PLAIN.fullmatch(text) is not None
                 and text.lower() not in AMBIGUOUS_PLAIN and draw.chance(0.6))
        if plain:
            return list(pieces)
        return quoted(pieces, '"' if multiline else draw.pick(('"', "'")))
    if language == "shellscript":
        return quoted(pieces, '"' if multiline or not draw.chance(0.4) else "'")
    raise ValueError(f"no string syntax for language {language!r}")


def inline_value(draw: Draw, language: str, value: Value) -> list[Piece]:
    """A value written on one line (lists included), in language's syntax."""
    if value.kind == "env":
        return [env_reference(draw, language, text_of(value.pieces))]
    if value.kind in ("num", "bool"):
        return [number_text(value, language)]
    if value.kind == "list":
        separated: list[Piece] = []
        for i, item in enumerate(value.items):
            separated += ([", "] if i else []) + inline_value(draw, language, item)
        if language in ("dotenv", "dockerfile", "ini", "shellscript"):
            joined = [p.replace(", ", ",") if isinstance(p, str) else p for p in separated]
            return [p for p in joined if p not in ('"', "'")]
        return ["[", *separated, "]"]
    return quote_for(draw, language, value.pieces)


def assemble(lines: Sequence[Line]) -> tuple[str, tuple[Span, ...]]:
    parts: list[str] = []
    spans: list[Span] = []
    offset = 0
    for i, line in enumerate(lines):
        for piece in ([] if i == 0 else ["\n"]) + list(line):
            text = piece.text if isinstance(piece, Mark) else piece
            if isinstance(piece, Mark) and text:
                spans.append(Span(offset, offset + len(text), piece.label))
            parts.append(text)
            offset += len(text)
    return "".join(parts) + "\n", tuple(spans)


def indented(lines: Sequence[Line], indent: str) -> list[Line]:
    return [[indent, *line] if line else [] for line in lines]


# ---- Python snippets -------------------------------------------------------------------------

def py_assignments(draw: Draw, entries: Sequence[Entry]) -> list[Line]:
    style = draw.pick(("upper", "upper", "snake"))
    return [[style_name(e.name, style), " = ", *inline_value(draw, "python", e.value)]
            for e in entries]


def py_dict(draw: Draw, entries: Sequence[Entry]) -> list[Line]:
    var = draw.pick(("CONFIG", "settings", "DEFAULTS", "credentials", "options", "params"))
    body: list[Line] = [["    ", f'"{style_name(e.name, "snake")}": ',
                         *inline_value(draw, "python", e.value), ","] for e in entries]
    return [[f"{var} = {{"], *body, ["}"]]


CALL_TARGETS = (("client", "ApiClient"), ("conn", "connect"), ("settings", "Settings"),
                ("service", "build_service"), ("session", "Session.configure"))


def py_call(draw: Draw, entries: Sequence[Entry]) -> list[Line]:
    target, callee = draw.rng.choice(CALL_TARGETS)
    args: list[Line] = [["    ", style_name(e.name, "snake"), "=",
                         *inline_value(draw, "python", e.value), ","] for e in entries]
    return [[f"{target} = {callee}("], *args, [")"]]


def key_value(draw: Draw, allowed: Sequence[str]) -> tuple[Piece, ...]:
    fmt = pick_key_format(draw, allowed)
    draw.used.append(fmt)
    return KEY_FORMATS[fmt][0](draw.rng)


API_URLS = ("https://api.github.com/user", "https://api.openai.com/v1/models",
            "https://api.acme.io/v2/orders",
            "https://gitlab.com/api/v4/projects", "https://huggingface.co/api/whoami-v2")


def py_bearer(draw: Draw, positive: bool) -> list[Line]:
    scheme = draw.pick(("Bearer ", "Bearer ", "token "))
    if positive:
        header: list[Piece] = ['"', scheme, *key_value(draw, BEARER_FORMATS), '"']
    else:
        draw.used.append("neg_variable_ref")
        header = [draw.pick(('f"' + scheme + '{token}"',
                             '"' + scheme + '" + os.environ["API_TOKEN"]',
                             'f"' + scheme + '{settings.API_TOKEN}"'))]
    if draw.chance(0.5):
        return [["HEADERS = {", '"Authorization": ', *header, ', "Accept": "application/json"}']]
    return [["response = requests.", draw.pick(("get", "post")), "("],
            ["    ", f'"{draw.pick(API_URLS)}",'],
            ["    headers={\"Authorization\": ", *header, "},"], ["    timeout=10,"], [")"]]


CONNECT_CALLS = (("conn = psycopg2.connect(", ("postgresql", "postgres")),
                 ("engine = create_engine(", ("postgresql", "mysql+pymysql")),
                 ("client = MongoClient(", ("mongodb", "mongodb+srv")),
                 ("cache = redis.Redis.from_url(", ("redis",)))


def py_connect(draw: Draw, positive: bool) -> list[Line]:
    call, schemes = draw.rng.choice(CONNECT_CALLS)
    if positive:
        return [[call, '"', *credential_url(draw, url_scheme(draw, schemes)), '")']]
    kind = draw.pick(("neg_env_lookup", "neg_url"))
    draw.used.append(kind)
    if kind == "neg_env_lookup":
        return [[call, env_reference(draw, "python", "DATABASE_URL"), ")"]]
    url = url_scheme(draw, schemes)
    port = f":{url.port}" if url.port else ""
    return [[call, f'"{url.scheme}://{draw.pick(url.hosts)}{port}{url.path}")']]


def py_smtp(draw: Draw, positive: bool) -> list[Line]:
    host = draw.pick(('"smtp.gmail.com", 587', '"smtp.office365.com", 587',
                      '"smtp.mailgun.org", 465'))
    if positive:
        draw.used.append("email")
        login: list[Piece] = ['"', Mark(email_address(draw.rng), "EMAIL"), '", "',
                              Mark(password(draw), "PASSWORD"), '"']
    else:
        draw.used.append("neg_env_lookup")
        login = [env_reference(draw, "python", "SMTP_USER"), ", ",
                 env_reference(draw, "python", "SMTP_PASSWORD")]
    return [[f"server = smtplib.SMTP({host})"], ["server.starttls()"],
            ["server.login(", *login, ")"]]


def py_boto3(draw: Draw, positive: bool) -> list[Line]:
    region = draw.pick(("us-east-1", "eu-west-1", "eu-central-1", "ap-southeast-2"))
    if positive:
        draw.used += ["aws_access_key", "aws_secret_key"]
        key_id = Mark(aws_access_key(draw.rng), "KEY")
        secret = Mark(chars(draw.rng, B64, 40), "KEY")
        keys: list[Line] = [['    aws_access_key_id="', key_id, '",'],
                            ['    aws_secret_access_key="', secret, '",']]
    else:
        draw.used.append("neg_env_lookup")
        key_id_ref = env_reference(draw, "python", "AWS_ACCESS_KEY_ID")
        secret_ref = env_reference(draw, "python", "AWS_SECRET_ACCESS_KEY")
        keys = [[f"    aws_access_key_id={key_id_ref},"],
                [f"    aws_secret_access_key={secret_ref},"]]
    service = draw.pick(('"s3"', '"sqs"', '"dynamodb"', '"ses"'))
    return [["client = boto3.client("], [f"    {service},"], *keys,
            [f'    region_name="{region}",'], [")"]]


def py_author(draw: Draw, positive: bool) -> list[Line]:
    name = person_name(draw.rng)
    address: Piece = Mark(email_address(draw.rng, name),
                          "EMAIL") if positive else draw.pick(EXAMPLE_EMAILS)
    draw.used.append("email" if positive else "neg_example_email")
    if draw.chance(0.5):
        return [["__author__ = \"", display_name(name), " <", address, '>"'],
                ['__license__ = "MIT"']]
    return [[f'__author__ = "{display_name(name)}"'], ["__email__ = \"", address, '"']]


def py_auth_tuple(draw: Draw, positive: bool) -> list[Line]:
    url = draw.pick(API_URLS)
    if positive:
        draw.used.append("auth_tuple")
        pair: list[Piece] = ['"', Mark(draw.pick(USERNAMES), "USERNAME"), '", "',
                             Mark(password(draw), "PASSWORD"), '"']
    else:
        draw.used.append("neg_env_lookup")
        pair = [f'"{draw.pick(USERNAMES)}", ', env_reference(draw, "python", "API_PASSWORD")]
    if draw.chance(0.5):
        return [[f'response = requests.get("{url}", auth=(', *pair, "), timeout=5)"]]
    return [["auth = HTTPBasicAuth(", *pair, ")"], [f'response = session.get("{url}", auth=auth)']]


def py_comment(draw: Draw, positive: bool) -> list[Line]:
    label = draw.pick(("# Contact: ", "# Maintainer: ", "# Questions? Ask ", "# Reported by "))
    address: Piece = Mark(email_address(draw.rng),
                          "EMAIL") if positive else draw.pick(EXAMPLE_EMAILS)
    draw.used.append("email" if positive else "neg_example_email")
    return [[label, address]]


def py_ssh(draw: Draw, positive: bool) -> list[Line]:
    draw.used.append("ipv4" if positive else "neg_private_ip")
    host: Piece = Mark(public_ipv4(draw.rng), "IP_ADDRESS") if positive else private_ip(draw.rng)
    return [["client = paramiko.SSHClient()"],
            ["client.connect(\"", host, f'", username="{draw.pick(USERNAMES)}", '
             'key_filename=os.path.expanduser("~/.ssh/id_ed25519"))']]


PY_STATEMENTS: tuple[Callable[[Draw, bool], list[Line]], ...] = (
    py_bearer, py_connect, py_smtp, py_boto3, py_author, py_auth_tuple, py_comment, py_ssh)


def py_entries_block(draw: Draw, entries: Sequence[Entry]) -> list[Line]:
    style = draw.rng.choice((py_assignments, py_assignments, py_dict, py_call))
    return style(draw, entries)


# ---- config documents ------------------------------------------------------------------------

SECTION_NAMES = ("database", "auth", "api", "mail", "server", "storage", "integrations", "aws",
                 "monitoring", "app", "payments", "cache")
Groups: TypeAlias = "list[list[Entry]]"


def sectioned(draw: Draw, groups: Groups) -> list[tuple[str, list[Entry]]]:
    """Groups (kept whole) spread over one to three named sections, in random order."""
    order = list(groups)
    draw.rng.shuffle(order)
    names = draw.rng.sample(SECTION_NAMES, draw.rng.randint(1, min(3, max(1, len(order)))))
    sections: list[tuple[str, list[Entry]]] = [(n, []) for n in names]
    for i, group in enumerate(order):
        sections[i % len(sections)][1].extend(group)
    return [s for s in sections if s[1]]


def yaml_entry(draw: Draw, entry: Entry, indent: str, style: str) -> list[Line]:
    key = style_name(entry.name, style)
    value = entry.value
    if value.kind == "list" and draw.chance(0.6):
        items = [[indent, "  - ", *inline_value(draw, "yaml", item)] for item in value.items]
        return [[indent, key, ":"], *items]
    if value.kind == "str" and "\n" in text_of(value.pieces):
        inner = indent + "  "
        body = [Mark(p.text.replace("\n", "\n" + inner), p.label) if isinstance(p, Mark)
                else p.replace("\n", "\n" + inner) for p in value.pieces]
        return [[indent, key, ": |"], [inner, *body]]
    return [[indent, key, ": ", *inline_value(draw, "yaml", value)]]


def yaml_sections(draw: Draw, groups: Groups, indent: str = "") -> list[Line]:
    style = draw.pick(("snake", "snake", "camel", "kebab"))
    lines: list[Line] = []
    for name, entries in sectioned(draw, groups):
        lines.append([indent, name, ":"])
        for entry in entries:
            lines += yaml_entry(draw, entry, indent + "  ", style)
    return lines


def compose_environment(draw: Draw, entries: Sequence[Entry]) -> list[Line]:
    lines: list[Line] = [["    environment:"]]
    as_list = draw.chance(0.5)
    for e in entries:
        name = style_name(e.name, "upper")
        if e.value.kind == "str" and "\n" in text_of(e.value.pieces):
            lines += yaml_entry(draw, Entry((name.lower(),), e.value), "      ", "upper")
        elif as_list:  # compose keeps quotes in "- NAME=value" items, so none are written
            raw = e.value.kind == "str"
            value = list(e.value.pieces) if raw else inline_value(draw, "dotenv", e.value)
            lines.append(["      - ", name, "=", *value])
        else:
            lines.append(["      ", name, ": ", *inline_value(draw, "yaml", e.value)])
    return lines


def yaml_compose(draw: Draw, groups: Groups) -> list[Line]:
    entries = [e for g in groups for e in g]
    image = draw.pick(("python:3.12-slim", "node:20-alpine", "ghcr.io/acme/api:1.4.2",
                       "postgres:16"))
    return [['version: "3.9"'], ["services:"], ["  app:"], [f"    image: {image}"], ["    ports:"],
            ['      - "8080:8080"'], *compose_environment(draw, entries),
            ["    depends_on:"], ["      - db"], ["  db:"], ["    image: postgres:16-alpine"],
            ["    volumes:"], ["      - pgdata:/var/lib/postgresql/data"], ["volumes:"],
            ["  pgdata: {}"]]


def yaml_k8s(draw: Draw, groups: Groups) -> list[Line]:
    kind = draw.pick(("Secret", "ConfigMap"))
    name = draw.pick(("api-credentials", "app-config", "backend-env", "worker-settings"))
    head: list[Line] = [["apiVersion: v1"], [f"kind: {kind}"], ["metadata:"], [f"  name: {name}"],
                        [f"  namespace: {draw.pick(('default', 'prod', 'payments'))}"]]
    head += [["type: Opaque"], ["stringData:"]] if kind == "Secret" else [["data:"]]
    style = draw.pick(("snake", "kebab", "upper"))
    body = [line for g in groups for e in g for line in yaml_entry(draw, e, "  ", style)]
    return [*head, *body]


def yaml_ci(draw: Draw, groups: Groups) -> list[Line]:
    entries = [e for g in groups for e in g]
    checkout = "actions/checkout@v4"
    if draw.chance(0.3):
        draw.used.append("neg_commit")
        checkout = "actions/checkout@" + chars(draw.rng, HEX, 40)
    env = [line for e in entries for line in yaml_entry(draw, e, "      ", "upper")]
    return [["name: deploy"], ["on:"], ["  push:"], ["    branches: [main]"], ["jobs:"],
            ["  deploy:"],
            ["    runs-on: ubuntu-latest"], ["    env:"], *env, ["    steps:"],
            [f"      - uses: {checkout}"], ["      - run: make deploy"]]


def yaml_document(draw: Draw, groups: Groups) -> tuple[str, str, list[Line]]:
    template = draw.pick(("yaml_compose", "yaml_k8s", "yaml_ci", "yaml_config", "yaml_config"))
    if template == "yaml_config":
        return template, "yaml", yaml_sections(draw, groups)
    build = {"yaml_compose": yaml_compose, "yaml_k8s": yaml_k8s, "yaml_ci": yaml_ci}[template]
    return template, "yaml", build(draw, groups)


def json_object(members: Sequence[tuple[str, list[Line]]], step: str) -> list[Line]:
    """An object whose member values are lines (one for a scalar, several for a nested object)."""
    lines: list[Line] = [["{"]]
    for i, (key, value) in enumerate(members):
        comma = "," if i < len(members) - 1 else ""
        value = [[f'"{key}": ', *value[0]], *value[1:]]
        value[-1] = [*value[-1], comma]
        lines += [[step, *line] for line in value]
    return [*lines, ["}"]]


def json_entries(draw: Draw, entries: Sequence[Entry], style: str, step: str) -> list[Line]:
    return json_object([(style_name(e.name, style), [inline_value(draw, "json", e.value)])
                        for e in entries], step)


def json_document(draw: Draw, groups: Groups, positive: bool) -> tuple[str, str, list[Line]]:
    step = draw.pick(("  ", "    "))
    style = draw.pick(("camel", "snake"))
    sections = [(name, json_entries(draw, entries, style, step)) for name,
                entries in sectioned(draw, groups)]
    if draw.chance(0.7):
        return "json_settings", "json", json_object(sections, step)
    name = person_name(draw.rng)
    author: Line = ['"', display_name(name), '"']
    if draw.chance(0.6):
        author = [*author[:2], " <", author_address(draw, name, positive), '>"']
    scripts = json_object([("build", [['"tsc -p ."']]), ("start", [['"node dist/index.js"']])],
                          step)
    members: list[tuple[str, list[Line]]] = [
        ("name", [['"@acme/web-app"']]), ("version", [['"1.4.0"']]), ("private", [["true"]]),
        ("author", [author]), ("scripts", scripts), *sections]
    return "json_package", "json", json_object(members, step)


def service_account(draw: Draw, positive: bool) -> tuple[str, str, list[Line]]:
    project = draw.pick(("acme-prod", "analytics-42817", "billing-svc", "ml-pipeline-3"))
    account = f"{draw.pick(('deployer', 'ci-runner', 'etl'))}@{project}.iam.gserviceaccount.com"
    if positive:
        draw.used += ["private_key", "email"]
        key: Line = ['"', *escaped_newlines([Mark(private_key(draw.rng), "KEY")]), '\\n"']
        mail: Line = ['"', Mark(account, "EMAIL"), '"']
    else:
        draw.used += ["neg_placeholder", "neg_example_email"]
        key, mail = ['"<paste private key here>"'], ['"deployer@example.iam.gserviceaccount.com"']
    members: list[tuple[str, list[Line]]] = [
        ("type", [['"service_account"']]), ("project_id", [[f'"{project}"']]),
        ("private_key", [key]),
        ("client_email", [mail]), ("client_id", [[f'"{chars(draw.rng, string.digits, 21)}"']]),
        ("auth_uri", [['"https://accounts.google.com/o/oauth2/auth"']]),
        ("token_uri", [['"https://oauth2.googleapis.com/token"']])]
    return "json_service_account", "json", json_object(members, "  ")


def flat_document(draw: Draw, groups: Groups, language: str) -> list[Line]:
    """dotenv, INI and TOML: comment or [section] headings over name = value lines."""
    lines: list[Line] = []
    for name, entries in sectioned(draw, groups):
        if lines:
            lines.append([])
        if language == "dotenv":
            lines.append([f"# {name.capitalize()}"])
        else:
            lines.append([f"[{name}]"])
        for e in entries:
            key = style_name(e.name, "upper" if language == "dotenv" else "snake")
            sep = "=" if language == "dotenv" else draw.pick((" = ", " = ", "="))
            lines.append([key, sep, *inline_value(draw, language, e.value)])
    return lines


def author_address(draw: Draw, name: tuple[str, str], positive: bool) -> Piece:
    """A maintainer's address: personal data in positive samples, an example one otherwise."""
    if positive:
        draw.used.append("email")
        return Mark(email_address(draw.rng, name), "EMAIL")
    draw.used.append("neg_example_email")
    return draw.pick(EXAMPLE_EMAILS)


def dockerfile_document(draw: Draw, groups: Groups, positive: bool) -> list[Line]:
    base = draw.pick(("python:3.12-slim", "node:20-alpine", "ubuntu:22.04"))
    lines: list[Line] = [[f"FROM {base}"]]
    entries = [e for g in groups for e in g]
    if draw.chance(0.4):
        name = person_name(draw.rng)
        lines.append(['LABEL maintainer="', display_name(name), " <",
                      author_address(draw, name, positive), '>"'])
    lines += [["WORKDIR /app"], ["COPY . ."]]
    for e in entries:
        key = style_name(e.name, "upper")
        if e.value.kind == "env":
            draw.used.append("neg_env_lookup")
            lines += [[f"ARG {key}"], [f"ENV {key}=${{{key}}}"]]
        else:
            value = inline_value(draw, "dockerfile", e.value)
            lines.append([f"ENV {key}", draw.pick(("=", " ")), *value])
    lines += [["RUN pip install --no-cache-dir -r requirements.txt"],
              ['CMD ["python", "-m", "app"]']]
    return lines


def js_document(draw: Draw, groups: Groups, language: str) -> list[Line]:
    lines: list[Line] = []
    for name, entries in sectioned(draw, groups):
        lines.append([f"  {name}: {{"])
        lines += [["    ", style_name(e.name, "camel"), ": ",
                   *inline_value(draw, language, e.value), ","] for e in entries]
        lines.append(["  },"])
    typed = ": AppConfig" if language == "typescript" else ""
    if language == "typescript" or draw.chance(0.4):
        return [[f"export const config{typed} = {{"], *lines, ["};"]]
    return [['const path = require("path");'], [], ["const config = {"], *lines, ["};"], [],
            ["module.exports = config;"]]


def js_fetch(draw: Draw, positive: bool, language: str) -> list[Line]:
    if positive:
        header = quote_for(draw, language, ("Bearer ", *key_value(draw, BEARER_FORMATS)))
    else:
        draw.used.append("neg_variable_ref")
        header = ["`Bearer ${process.env.API_TOKEN}`"]
    return [[], [f'const res = await fetch("{draw.pick(API_URLS)}", {{'],
            ["  headers: { Authorization: ", *header,
             ', "Content-Type": "application/json" },'], ["});"]]


def shell_exports(draw: Draw, groups: Groups) -> list[Line]:
    lines: list[Line] = []
    for e in (e for g in groups for e in g):
        value = inline_value(draw, "shellscript", e.value)
        lines.append(["export ", style_name(e.name, "upper"), "=", *value])
    return lines


def shell_command(draw: Draw, positive: bool) -> list[Line]:
    kind = draw.pick(("curl_bearer", "curl_basic", "mysql", "sshpass", "ssh", "git_email",
                      "docker_login"))
    if not positive:
        return shell_negative(draw, kind)
    if kind == "curl_bearer":
        header = ["Authorization: Bearer ", *key_value(draw, BEARER_FORMATS)]
        return [['curl -sS -H "', *header, f'" {draw.pick(API_URLS)}']]
    if kind == "git_email":
        draw.used.append("email")
        return [['git config --global user.email "', Mark(email_address(draw.rng), "EMAIL"), '"']]
    if kind == "ssh":
        draw.used.append("ipv4")
        host = Mark(public_ipv4(draw.rng), "IP_ADDRESS")
        return [[f"ssh -i ~/.ssh/deploy_key {draw.pick(USERNAMES)}@", host,
                 " 'systemctl restart app'"]]
    draw.used.append("cli_credentials")
    user, secret = Mark(draw.pick(USERNAMES), "USERNAME"), Mark(password(draw), "PASSWORD")
    if kind == "curl_basic":
        return [["curl -u '", user, ":", secret, f"' {draw.pick(API_URLS)}"]]
    if kind == "mysql":
        server = draw.pick(MYSQL_HOSTS)
        return [["mysql -u ", user, " -p'", secret, f"' -h {server} app < dump.sql"]]
    if kind == "docker_login":
        return [["docker login -u ", user, " -p '", secret, "' registry.acme.io"]]
    draw.used.append("ipv4")
    return [["sshpass -p '", secret, "' ssh -o StrictHostKeyChecking=no ", user, "@",
             Mark(public_ipv4(draw.rng), "IP_ADDRESS")]]


def shell_negative(draw: Draw, kind: str) -> list[Line]:
    if kind in ("ssh", "sshpass"):
        draw.used.append("neg_private_ip")
        return [[f"ssh {draw.pick(USERNAMES)}@{private_ip(draw.rng)} 'uptime'"]]
    if kind == "git_email":
        draw.used.append("neg_example_email")
        return [[f'git config user.email "{draw.pick(EXAMPLE_EMAILS)}"']]
    draw.used.append("neg_env_lookup")
    if kind == "mysql":
        return [['mysql -u root -p"$MYSQL_PASSWORD" -h 127.0.0.1 app < dump.sql']]
    if kind == "docker_login":
        return [['echo "$REGISTRY_TOKEN" | docker login -u "$REGISTRY_USER" --password-stdin ',
                 "ghcr.io"]]
    return [[f'curl -sS -H "Authorization: Bearer ${{API_TOKEN}}" {draw.pick(API_URLS)}']]


# ---- host windows ----------------------------------------------------------------------------

# Host lines that already hold an address, an IP-like number, a long token or a key: dropped from
# windows, so unlabelled host text never contradicts the labels.
ENTITY_LIKE = re.compile(r"[\w.+-]+@[\w-]+\.[A-Za-z]{2,}|\b\d{1,3}(?:\.\d{1,3}){3}\b"
                         r"|[\"'][A-Za-z0-9+/=_-]{32,}[\"']|PRIVATE KEY"
                         r"|(?i:passw(?:or)?d\s*[=:]\s*[\"']\w)")
CONTINUATION_KEYWORDS = ("elif", "else", "except", "finally", "case")


def insertion_points(text: str) -> list[tuple[int, str]]:
    """(0-based line, indentation) before which a statement may be inserted."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    lines = text.split("\n")
    points = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt):
            continue
        decorators = getattr(node, "decorator_list", [])
        line = min([node.lineno, *(d.lineno - 1 for d in decorators)]) - 1
        indent = lines[line][:node.col_offset]
        if indent.strip() == "" and not lines[line].lstrip().startswith(CONTINUATION_KEYWORDS):
            points.add((line, indent))
    return sorted(points)


@dataclass
class HostPool:
    """Host files and their insertion points, computed once per file."""

    files: Sequence[SourceFile]
    points: dict[int, list[tuple[int, str]]] = field(default_factory=dict)

    def points_of(self, index: int) -> list[tuple[int, str]]:
        if index not in self.points:
            self.points[index] = insertion_points(self.files[index].text)
        return self.points[index]


def clean_host_lines(lines: Sequence[str]) -> list[str]:
    return [line for line in lines if not ENTITY_LIKE.search(line)]


def plain_window(draw: Draw, pool: HostPool) -> list[str]:
    lines = pool.files[draw.rng.randrange(len(pool.files))].text.rstrip("\n").split("\n")
    size = draw.rng.randint(10, 60)
    start = draw.rng.randrange(max(1, len(lines) - size + 1))
    return clean_host_lines(lines[start:start + size])


def host_site(draw: Draw, pool: HostPool) -> int | None:
    """The index of a host file that has insertion points, or None after a few tries."""
    for _ in range(8):
        index = draw.rng.randrange(len(pool.files))
        if pool.points_of(index):
            return index
    return None


def host_document(draw: Draw, pool: HostPool, index: int,
                  blocks: Sequence[list[Line]]) -> list[Line]:
    """A window of a host file with each block inserted at a statement boundary, indented to fit."""
    points = pool.points_of(index)
    lines = pool.files[index].text.split("\n")
    anchor = draw.rng.randrange(len(points))
    line = points[anchor][0]
    start = max(0, line - draw.rng.randint(3, 30))
    end = min(len(lines), max(line + draw.rng.randint(5, 30), start + 10))
    inside = [p for p in points if start <= p[0] < end and p != points[anchor]]
    chosen = [points[anchor], *draw.rng.sample(inside, min(len(inside), len(blocks) - 1))]
    inserts: dict[int, list[Line]] = {}
    for (at, indent), block in zip(chosen, blocks, strict=False):
        inserts.setdefault(at, []).extend(indented(block, indent))
    out: list[Line] = []
    for i in range(start, end):
        out += inserts.get(i, [])
        if not ENTITY_LIKE.search(lines[i]):
            out.append([lines[i]])
    return out


# ---- samples ---------------------------------------------------------------------------------

FAMILIES = ("key", "key", "key", "key", "password", "url", "email", "ip")
CONTAINERS = ("python_host", "python_host", "python_host", "python_host", "python_host", "yaml",
              "yaml",
              "json", "json", "dotenv", "shell_script", "shell_script", "js_config", "ts_config",
              "ini_file", "toml_file", "dockerfile")
FLAT_LANGUAGES = {"dotenv": "dotenv", "ini_file": "ini", "toml_file": "toml"}


def entry_groups(draw: Draw, families: Sequence[str], negatives: int, neutrals: int,
                 multiline: bool) -> Groups:
    groups = [positive_entries(draw, f, multiline) for f in families]
    groups += [[negative_entry(draw, draw.pick(NEGATIVE_KINDS))] for _ in range(negatives)]
    groups += [[neutral_entry(draw)] for _ in range(neutrals)]
    return distinct_names(groups)


NAME_QUALIFIERS = ("prod", "staging", "legacy", "backup", "internal", "primary", "secondary")


def distinct_names(groups: Groups) -> Groups:
    """The groups with repeated setting names qualified (prod_api_key, staging_api_key, ...): a
    repeated keyword argument would not compile, and repeated keys read as a mistake."""
    seen: set[tuple[str, ...]] = set()
    renamed: Groups = []
    for group in groups:
        renamed.append([])
        for entry in group:
            name, tries = entry.name, 0
            while name in seen:
                qualifier = NAME_QUALIFIERS[tries % len(NAME_QUALIFIERS)]
                name = (qualifier + str(tries // len(NAME_QUALIFIERS) or ""), *entry.name)
                tries += 1
            seen.add(name)
            renamed[-1].append(Entry(name, entry.value))
    return renamed


def shell_document(draw: Draw, groups: Groups, commands: int, positive: bool) -> list[Line]:
    exports = shell_exports(draw, groups)
    lines: list[Line] = [["#!/usr/bin/env bash"], ["set -euo pipefail"], [], *exports, []]
    ordinary: list[Line] = [["cd /srv/app"], ["python manage.py migrate --noinput"],
                            ['echo "deployed"']]
    for i in range(commands):
        lines += shell_command(draw, positive and i == 0)
    return lines + ordinary[:draw.rng.randint(1, 3)]


def config_sample(draw: Draw, container: str, families: Sequence[str],
                  positive: bool) -> tuple[str, list[Line]]:
    """language and lines of a config file or script in container's format."""
    rng = draw.rng
    negatives = rng.randint(0, 3) if positive else rng.randint(1, 4)
    multiline = container in ("yaml", "json", "dotenv", "shell_script", "js_config", "ts_config")
    if container == "json" and not draw.focus and draw.chance(0.1):
        template, language, lines = service_account(draw, positive)
        draw.used.append(template)
        return language, lines
    use_command = (container == "shell_script" and positive and bool(families)
                   and not draw.focus and draw.chance(0.5))
    groups = entry_groups(draw, families[1:] if use_command else families, negatives,
                          rng.randint(1, 4), multiline)
    if container in FLAT_LANGUAGES:
        draw.used.append(container if container != "dotenv" else "dotenv_file")
        return FLAT_LANGUAGES[container], flat_document(draw, groups, FLAT_LANGUAGES[container])
    if container == "yaml":
        template, language, lines = yaml_document(draw, groups)
    elif container == "json":
        template, language, lines = json_document(draw, groups, positive)
    elif container == "shell_script":
        template, language = container, "shellscript"
        lines = shell_document(draw, groups, int(use_command) + rng.randint(0, 2), use_command)
    elif container == "dockerfile":
        template, language = container, "dockerfile"
        lines = dockerfile_document(draw, groups, positive)
    else:
        language = "typescript" if container == "ts_config" else "javascript"
        template, lines = container, js_document(draw, groups, language)
        if draw.chance(0.4):
            lines += js_fetch(draw, positive and draw.chance(0.5), language)
    draw.used.append(template)
    return language, lines


def python_blocks(draw: Draw, families: Sequence[str], positive: bool) -> list[list[Line]]:
    rng = draw.rng
    if positive and not draw.focus and draw.chance(0.45):
        blocks = [draw.rng.choice(PY_STATEMENTS)(draw, True)]
        families = families[1:]
    elif not positive and draw.chance(0.4):
        blocks = [draw.rng.choice(PY_STATEMENTS)(draw, False)]
    else:
        blocks = []
    if families or not blocks or draw.chance(0.5):
        groups = entry_groups(draw, families, rng.randint(0, 2) if positive else rng.randint(1, 3),
                              rng.randint(0, 2), True)
        rng.shuffle(groups)
        blocks.append(py_entries_block(draw, [e for g in groups for e in g]))
    rng.shuffle(blocks)
    return blocks


def positive_families(draw: Draw) -> list[str]:
    families = [draw.pick(FAMILIES) for _ in range(draw.rng.choice((1, 1, 2, 2, 2, 3, 4)))]
    if draw.focus:
        families[0] = "key"
    return families


def make_sample(draw: Draw, pool: HostPool, split: str) -> Sample:
    roll = draw.rng.random()
    if roll >= 0.85 and pool.files:
        draw.used.append("host_plain")
        return finish(draw, "python", [[line] for line in plain_window(draw, pool)])
    positive = roll < 0.45
    containers = [c for c in CONTAINERS if (split == "eval" or c not in HELD_OUT_FORMATS)
                  and (pool.files or c != "python_host")]
    container = draw.pick(containers)
    if positive and split == "eval" and draw.chance(HELD_OUT_SHARE):
        if draw.chance(0.2):
            container = "toml_file"
        else:
            draw.focus = tuple(f for f in KEY_FORMATS if f in HELD_OUT_FORMATS)
    families = positive_families(draw) if positive else []
    site = host_site(draw, pool) if container == "python_host" else None
    if site is not None:
        draw.used.append("python_host")
        blocks = python_blocks(draw, families, positive)
        return finish(draw, "python", host_document(draw, pool, site, blocks))
    if container == "python_host":
        container = "dotenv"
    language, lines = config_sample(draw, container, families, positive)
    return finish(draw, language, lines)


def finish(draw: Draw, language: str, lines: list[Line]) -> Sample:
    text, spans = assemble(lines)
    return Sample(text, spans, language, tuple(sorted(set(draw.used))))


def generate(seed: int, count: int, hosts: Sequence[SourceFile],
             split: str = "train") -> list[Sample]:
    """count samples drawn from seed; split="train" never uses a format in HELD_OUT_FORMATS."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    rng = random.Random(seed)
    key_formats = tuple(f for f in KEY_FORMATS if split == "eval" or f not in HELD_OUT_FORMATS)
    pool = HostPool(hosts)
    return [make_sample(Draw(rng, key_formats), pool, split) for _ in range(count)]
