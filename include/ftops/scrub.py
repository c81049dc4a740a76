"""PII and secret scrubbing with regular expressions (no model, no network).

:func:`scrub` replaces each personal datum or secret it recognises with a typed placeholder such as
``[EMAIL]`` or ``[OPENAI_KEY]`` and counts the replacements by type; :func:`find_leaks` reports which types
are present (an empty list for scrubbed text, which is how curation asserts that nothing remains).

Detectors run in a fixed order, most specific first, so an OpenAI key in ``api_key=sk-...`` is labelled
``OPENAI_KEY`` rather than the generic ``SECRET``. Placeholders match no detector, so scrubbing is
idempotent: ``scrub(scrub(x).text).text == scrub(x).text``.

What is recognised, and the choices made:

* ``PRIVATE_KEY``: ``-----BEGIN ... PRIVATE KEY-----`` blocks through their END line. A block with no END
  line (or an END line with no BEGIN) cannot be removed with certainty: the header and the key-looking lines
  next to it are replaced and the result is marked ``unsafe``, so the caller can drop the record.
* ``JWT``, ``OPENAI_KEY`` (``sk-``, ``sk-proj-``, ``sk-svcacct-``, ``sk-admin-``), ``AWS_KEY`` (access key ids
  ``AKIA``/``ASIA``/``ABIA``/``ACCA`` + 16), ``GITHUB_TOKEN`` (``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_``,
  ``github_pat_``), ``SLACK_TOKEN`` (``xox?-`` tokens, ``xapp-`` tokens, webhook URLs).
* ``SECRET``: other vendor keys with a known prefix (Anthropic, Stripe, Google, Hugging Face); the password
  in a URL (``scheme://user:password@host``); values of secret-named assignments (``api_key=...``,
  ``"password": "..."``, ``DB_PASSWORD=...``, ``--token ...``), skipping values that are clearly not secrets
  (code such as ``os.environ["KEY"]``, ``${VAR}``, type names, ``none``/``null``, masks like ``****``);
  ``Bearer``/``token``/``Basic`` credentials; and long random-looking tokens (see :func:`_looks_random`).
* ``EMAIL``; ``CARD`` (13-19 digits, optionally grouped with one kind of separator, a major-network first
  digit 2-6, and only when the Luhn check passes); ``IP`` (IPv4 with valid octets and IPv6; loopback,
  unspecified, broadcast and netmask addresses identify nobody and are kept); ``PHONE`` (``+CC``
  international numbers with 8-15 digits, US ``(555) 123-4567``/``555-123-4567`` with an area code
  2xx-9xx, European national numbers with a trunk ``0`` such as ``020 7946 0958``, ``06-12345678``,
  ``01 23 45 67 89``, and Spanish ``612 34 56 78``). A national number's digit groups must share one
  separator, so dates, ranges, decimals and plain integers are not phones.

Every pattern is written to run in linear time (bounded repetitions, lookbehinds that allow one start per
word), because the text is user-controlled; a cheap hint search skips patterns that cannot match.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

logger = logging.getLogger(__name__)

PLACEHOLDER_RE = re.compile(r"\[[A-Z][A-Z_]*\]")


@dataclass(frozen=True)
class ScrubResult:
    """Outcome of :func:`scrub`.

    Attributes:
        text: The text with every recognised item replaced by its typed placeholder (``[EMAIL]``, ...).
        counts: Replacements made, by type (the placeholder's name without brackets).
        unsafe: True when a secret-looking thing could not be removed with certainty (an unterminated private
            key block); the caller should not use the text.
    """

    text: str
    counts: dict[str, int] = field(default_factory=dict)
    unsafe: bool = False

    @property
    def replaced(self) -> int:
        """Total number of replacements."""
        return sum(self.counts.values())


# A replacement builder gets a detector's match and its type and returns the replacement text, or None to
# leave the match unchanged (a candidate that failed validation).
_Builder = Callable[[re.Match[str], str], str | None]


def _whole(match: re.Match[str], label: str) -> str | None:
    return f"[{label}]"


def _group(name: str, validate: Callable[[str], bool] | None = None) -> _Builder:
    """Builder that replaces only group ``name`` of the match, keeping the rest (a key name, quotes)."""

    def build(match: re.Match[str], label: str) -> str | None:
        value = match.group(name)
        if validate is not None and not validate(value):
            return None
        start, end = match.span(name)
        offset = match.start()
        whole = match.group(0)
        return whole[: start - offset] + f"[{label}]" + whole[end - offset :]

    return build


def _validated(validate: Callable[[str], bool]) -> _Builder:
    def build(match: re.Match[str], label: str) -> str | None:
        return f"[{label}]" if validate(match.group(0)) else None

    return build


# --- validators -----------------------------------------------------------------------------------------


def _luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _is_card(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456":
        return False
    separators = set(re.findall(r"[ -]", candidate))
    if len(separators) > 1:
        return False
    if separators and any(len(group) < 3 for group in re.split(r"[ -]", candidate)):
        return False
    return _luhn_ok(digits)


def _is_identifying_ipv4(candidate: str) -> bool:
    address = ipaddress.IPv4Address(candidate)
    if address.is_loopback or address.is_unspecified or candidate == "255.255.255.255":
        return False
    # A netmask (255.x.x.x with contiguous one bits) is configuration, not an address of anyone.
    as_int = int(address)
    inverted = ~as_int & 0xFFFFFFFF
    return not (candidate.startswith("255.") and (inverted & (inverted + 1)) == 0)


def _is_identifying_ipv6(candidate: str) -> bool:
    try:
        address = ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return not (address.is_loopback or address.is_unspecified)


def _phone_digits_between(low: int, high: int) -> Callable[[str], bool]:
    def validate(candidate: str) -> bool:
        return low <= sum(char.isdigit() for char in candidate) <= high

    return validate


def _is_international_phone(candidate: str) -> bool:
    # One dot makes a signed decimal (+35236450.6, +123456789.12); dotted phone numbers have several.
    return _phone_digits_between(8, 15)(candidate) and candidate.count(".") != 1


def shannon_entropy(text: str) -> float:
    """Shannon entropy of the characters of ``text``, in bits per character (0.0 for empty text)."""
    if not text:
        return 0.0
    size = len(text)
    return -sum(count / size * math.log2(count / size) for count in Counter(text).values())


def _char_class(char: str) -> int:
    return 0 if char.isdigit() else 1 if char.islower() else 2


_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_MIN_RANDOM_LENGTH = 20
_MIN_HEX_LENGTH = 32
_MIN_ENTROPY_BITS = 3.5
_MIN_CLASS_SWITCH_RATE = 0.3
_MAX_WORDLIKE_SHARE = 0.6
# The commonest English letter pairs. Identifiers built from words (Wav2Vec2ForPreTraining) are mostly made
# of them; random letters are not (185 of 676 pairs: about a quarter of random pairs hit the set).
_COMMON_BIGRAMS = frozenset(
    """th he in er an re on at en nd ti es or te of ed is it al ar st to nt ng se ha as ou io le ve co me de
    hi ri ro ic ne ea ra ce li ch ll be ma si om ur ca el ta la ns di fo ho pe ec pr no ct us ac ot il tr ly
    nc et ut ss so rs un lo wa ge ie wh ee wi em ad ol rt po we na ul ni ts mo ow pa im mi ai sh ir su id os
    iv ia am fi ci vi pl ig tu ev ld ry mp fe bl ab gh ty op wo sa ay ex ke fr oo av ag if ap gr od bo sp rd
    do uc bu ei ov by rm ep tt oc fa ef cu rn sc gi da yo cr cl du ga qu ue ff ba ey ls va um pp ua up lu go
    ht ru ug ds lt pi rc rr eg au ck""".split()
)
_WORD_RUN_RE = re.compile(r"[A-Z]?[a-z]+")  # all-caps runs (HTTP, EXAMPLEKEY) carry too few pairs to judge


def _wordlike_share(token: str) -> float:
    """Share of the letter pairs inside the token's lower-case words (``Tracker``, ``video``) common in English."""
    pairs = [run[i : i + 2].lower() for run in _WORD_RUN_RE.findall(token) for i in range(len(run) - 1)]
    return sum(pair in _COMMON_BIGRAMS for pair in pairs) / len(pairs) if pairs else 0.0


def _looks_random(token: str) -> bool:
    """Whether ``token`` looks like a random secret rather than a word, number, identifier or path.

    Separators (``_ - + / =``) removed, the token needs at least 20 characters. Hexadecimal tokens qualify
    from 32 digits with at least three letters and three digits (hex keys; this also catches SHA-1/MD5
    digests and UUIDs, which are harmless to replace). Other tokens need a digit, at least a quarter letters,
    and all three signs of randomness: Shannon entropy of at least 3.5 bits per character; at
    least 30% of neighbouring characters (inside separator-delimited segments) switching between lower case,
    upper case and digits (random base62 switches about 60% of the time, ``get_user_by_id_v2`` rarely); and
    under 60% of the letter pairs inside its words being common English pairs (``Sam3TrackerVideoEncoder``
    is mostly common pairs, random letters about a quarter). Measured here: it flags about 90% of random
    base62 tokens of 20 characters and 97% of 32, 80-89% of random lower-case+digit ones (they switch class
    less often), every random hex token of 32+, and about 1% of 3 900 non-hex letter-digit tokens found in
    installed packages' code (almost all base64 blobs and hashes in URLs; ``FbgemmFp8HfQuantizer`` was the
    one class name). AWS's documentation example secret (``wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY``) is
    flagged; real ones, being random, are too.
    """
    core = re.sub(r"[_\-+/=]", "", token)
    if len(core) < _MIN_RANDOM_LENGTH:
        return False
    digits = sum(char.isdigit() for char in core)
    letters = sum(char.isalpha() for char in core)
    if _HEX_RE.fullmatch(core):  # a lone "e" is a float's exponent (12345...e288), not a hex digest
        return len(core) >= _MIN_HEX_LENGTH and letters >= 3 and digits >= 3
    if digits == 0 or letters * 4 < len(core):
        return False
    if shannon_entropy(core) < _MIN_ENTROPY_BITS:
        return False
    switches = transitions = 0
    for segment in re.split(r"[_\-+/=]+", token):
        classes = [_char_class(char) for char in segment]
        transitions += max(len(classes) - 1, 0)
        switches += sum(a != b for a, b in zip(classes, classes[1:], strict=False))
    if transitions == 0 or switches / transitions < _MIN_CLASS_SWITCH_RATE:
        return False
    return _wordlike_share(token) < _MAX_WORDLIKE_SHARE


_NOT_SECRET_VALUES = frozenset(
    {
        "none", "null", "nil", "true", "false", "undefined", "empty", "required", "optional", "string", "str",
        "bytes", "int", "integer", "secretstr", "your_api_key", "your-api-key", "changeme", "redacted",
        "hidden", "secret", "password", "token", "example", "xxxxxx",
    }
)  # fmt: skip
_CODE_REFERENCE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")  # settings.API_KEY
_VARIABLE_NAME_RE = re.compile(r"(?:[a-z]+_)+[a-z]+|(?:[A-Z]+_)+[A-Z]+")  # user_password, OPENAI_API_KEY
_PASSWORD_KEY_RE = re.compile(r"passw|pwd|passphrase", re.IGNORECASE)


def _is_secret_value(key: str, separator: str, value: str, following: str, *, quoted: bool) -> bool:
    """Whether ``value`` assigned to secret-named ``key`` is a literal secret worth replacing.

    Args:
        key: The secret-looking name (``api_key``, ``DB_PASSWORD``).
        separator: What joins name and value (``=``, ``: ``, `` = ``).
        value: The value, without quotes.
        following: The character after the value (``(`` marks a call, ``[`` a subscript).
        quoted: Whether the value was quoted (a literal, in code).
    """
    stripped = value.strip()
    if PLACEHOLDER_RE.fullmatch(stripped) or len(stripped) < 4:
        return False
    if stripped.lower() in _NOT_SECRET_VALUES or re.fullmatch(r"[*xX.•#-]+", stripped):
        return False
    if stripped.startswith(("$", "%", "{{", "<")):  # ${VAR}, $VAR, %(name)s, {{ template }}, <your-key>
        return False
    if following[:1] in ("(", "["):  # a call or subscript: os.getenv(...), os.environ[...]
        return False
    if not quoted:
        if _CODE_REFERENCE_RE.fullmatch(stripped) or _VARIABLE_NAME_RE.fullmatch(stripped):
            return False
        # `self.token = nextchar`: code assigns a variable; in code a literal secret would be quoted.
        if re.search(r"\s=", separator) and re.fullmatch(r"[A-Za-z_]+", stripped):
            return False
    if _PASSWORD_KEY_RE.search(key):
        return True
    # API keys and tokens are long and almost always hold digits; "token: mechanic" is not one.
    has_digit = any(char.isdigit() for char in stripped)
    return not stripped.isdigit() and ((len(stripped) >= 8 and has_digit) or len(stripped) >= 16)


def _has_letter_and_digit(value: str) -> bool:
    return any(char.isdigit() for char in value) and any(char.isalpha() for char in value)


def _is_url_password(value: str) -> bool:
    """Whether the password part of ``scheme://user:password@host`` is a real value, not a stand-in."""
    return value.lower() not in _NOT_SECRET_VALUES and not value.startswith(("$", "%", "{", "<"))


# --- patterns -------------------------------------------------------------------------------------------

# Name parts are bounded ({0,8}): an unbounded (?:\w+_)* would backtrack quadratically on a long a_a_a_...
_SECRET_KEY_NAME = (
    r"(?:[A-Za-z0-9]+[_.-]){0,8}"
    r"(?:api[_-]?key|apikey|api[_-]?secret|secret(?:[_-]?key)?|client[_-]?secret|access[_-]?key|"
    r"access[_-]?token|auth[_-]?token|refresh[_-]?token|session[_-]?token|bearer[_-]?token|"
    r"passw(?:or)?d|passphrase|pwd|private[_-]?key|credentials?)"
    r"(?:[_-][A-Za-z0-9]+){0,8}"
    # A bare "token" takes no suffix: token_id, token_str, token_count are NLP, not credentials.
    r"|(?:[A-Za-z0-9]+[_.-]){0,8}token"
)
_ASSIGNMENT_RE = re.compile(
    rf"(?<![A-Za-z0-9_])(?P<key>{_SECRET_KEY_NAME})(?![A-Za-z0-9])"
    r"(?P<sep>[\"']?[ \t]*(?::=|=>|=|:)[ \t]*)"
    r"(?:\"(?P<dq>[^\"\n]{1,256})\"|'(?P<sq>[^'\n]{1,256})'|(?P<bare>[^\s\"'`,;&<>(){}\[\]]+))",
    re.IGNORECASE,
)
_CLI_FLAG_RE = re.compile(
    r"(?<![\w-])--?(?P<key>password|passwd|token|api[-_]key|secret|client[-_]secret)(?P<sep>[ \t]+)"
    r"(?P<bare>[^\s\"'`,;&<>(){}\[\]-][^\s\"'`,;&<>(){}\[\]]*)",
    re.IGNORECASE,
)
_AUTH_SCHEME_RE = re.compile(
    r"(?<![A-Za-z0-9])(?:[Bb]earer|[Tt]oken|[Bb]asic|BEARER|TOKEN)\s+(?P<value>[A-Za-z0-9._~+/-]{16,}=*)(?![\w.~+/-])"
)
_PRIVATE_KEY_BEGIN_RE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
_PRIVATE_KEY_END_RE = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
_KEY_MATERIAL_LINE_RE = re.compile(r"\s*(?:[A-Za-z0-9+/=]{4,}|[A-Za-z][A-Za-z0-9-]*: .*)\s*")
_KEY_MATERIAL_INLINE_RE = re.compile(r"(?:\\r|\\n|[A-Za-z0-9+/=])*")  # a key pasted with escaped newlines


def _build_assignment(match: re.Match[str], label: str) -> str | None:
    name = next(group for group in ("dq", "sq", "bare") if group in match.re.groupindex and match.group(group))
    value = match.group(name)
    if name == "bare":
        trimmed = value.rstrip(".!?:")  # sentence punctuation after a bare value is not part of it
        if not trimmed:
            return None
        value_end = match.start(name) + len(trimmed)
    else:
        trimmed = value
        value_end = match.end(name)
    following = match.string[value_end : value_end + 1]
    separator = match.group("sep")
    if not _is_secret_value(match.group("key"), separator, trimmed, following, quoted=name != "bare"):
        return None
    offset = match.start()
    whole = match.group(0)
    return whole[: match.start(name) - offset] + f"[{label}]" + whole[value_end - offset :]


def _build_random_token(match: re.Match[str], label: str) -> str | None:
    token = match.group(0)
    if "/" in token and _inside_url(match):
        # In a URL only the random-looking path segments go: https://gist.github.com/user/[SECRET]
        parts = token.split("/")
        replaced = [f"[{label}]" if _looks_random(part) else part for part in parts]
        return None if replaced == parts else "/".join(replaced)
    return f"[{label}]" if _looks_random(token) else None


def _inside_url(match: re.Match[str]) -> bool:
    """Whether the match lies in a URL (its whitespace-delimited word has a scheme or starts with www.)."""
    text = match.string
    window = max(0, match.start() - 2048)  # bounded, so many matches in text without spaces stay linear
    word_start = max(max(text.rfind(char, window, match.start()) for char in " \t\n\"'<(") + 1, window)
    word = text[word_start : match.start()]
    return "://" in word or word.startswith("www.")


_IPV4_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"

# Patterns that need no validation: every match is a leak. They also make up LEAK_PATTERN.
_JWT = r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"
_ANTHROPIC_KEY = r"(?<![\w-])sk-ant-[A-Za-z0-9_-]{20,}"
_OPENAI_KEY = r"(?<![\w-])sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"
_AWS_KEY = r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])"
_GITHUB_TOKEN = r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"
_SLACK_TOKEN = (
    r"(?<![A-Za-z0-9-])(?:xox[abeoprs]-[A-Za-z0-9-]{10,}|xapp-\d-[A-Za-z0-9-]{10,})"
    r"|https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_-]+"
)
_VENDOR_KEY = r"(?<![A-Za-z0-9_-])(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|AIza[A-Za-z0-9_-]{35}|hf_[A-Za-z]{30,})"
_EMAIL = (
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![\w-])"
)
_PRIVATE_KEY_MARKER = r"-----(?:BEGIN|END) [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"

LEAK_PATTERN = "|".join(
    f"(?:{pattern})"
    for pattern in (_PRIVATE_KEY_MARKER, _JWT, _OPENAI_KEY, _AWS_KEY, _GITHUB_TOKEN, _SLACK_TOKEN, _VENDOR_KEY, _EMAIL)
)
"""One regular expression (Python ``re`` syntax) for the leaks that need no validation: private key markers,
JWTs, OpenAI/AWS/GitHub/Slack/vendor keys and emails. It never matches :func:`scrub` output, so a data check
can assert that no value matches it. Leaks that need validation to tell from ordinary text (Luhn-valid card
numbers, phones, IPs, assigned or random-looking secrets) are only found by :func:`find_leaks`."""


class _Detector(NamedTuple):
    label: str
    pattern: re.Pattern[str]
    build: _Builder
    hint: re.Pattern[str] | None = None  # a cheap search that must succeed for the pattern to have a match


_DETECTORS: tuple[_Detector, ...] = (
    _Detector("JWT", re.compile(_JWT), _whole, re.compile("eyJ")),
    # Anthropic keys share OpenAI's "sk-" prefix: label them generically before the OpenAI pattern runs.
    _Detector("SECRET", re.compile(_ANTHROPIC_KEY), _whole, re.compile("sk-ant-")),
    _Detector("OPENAI_KEY", re.compile(_OPENAI_KEY), _whole, re.compile("sk-")),
    _Detector("AWS_KEY", re.compile(_AWS_KEY), _whole, re.compile("AKIA|ASIA|ABIA|ACCA")),
    _Detector("GITHUB_TOKEN", re.compile(_GITHUB_TOKEN), _whole, re.compile("gh[pousr]_|github_pat_")),
    _Detector("SLACK_TOKEN", re.compile(_SLACK_TOKEN), _whole, re.compile(r"xox|xapp-|hooks\.slack\.com")),
    _Detector("SECRET", re.compile(_VENDOR_KEY), _whole, re.compile("_live_|_test_|AIza|hf_")),
    _Detector(
        "SECRET",
        re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@\[\]]+:(?P<value>[^\s/@\[\]]+)@"),
        _group("value", _is_url_password),
        re.compile("://"),
    ),
    _Detector(
        "SECRET",
        _ASSIGNMENT_RE,
        _build_assignment,
        re.compile("key|secret|passw|pwd|token|credential|passphrase", re.IGNORECASE),
    ),
    _Detector(
        "SECRET", _CLI_FLAG_RE, _build_assignment, re.compile("-(?:passw|token|api|secret|client)", re.IGNORECASE)
    ),
    _Detector(
        "SECRET",
        _AUTH_SCHEME_RE,
        _group("value", _has_letter_and_digit),
        re.compile("bearer|token|basic", re.IGNORECASE),
    ),
    _Detector("EMAIL", re.compile(_EMAIL), _whole, re.compile("@")),
    _Detector(
        "CARD",
        re.compile(r"(?<![\w+-])(?<!\d )(?:\d[ -]?){12,18}\d(?![\w-]|[ -]\d)"),
        _validated(_is_card),
        re.compile(r"\d{3}"),
    ),
    _Detector(
        "IP",
        re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.\w)"),
        _validated(_is_identifying_ipv6),
        re.compile(r"[0-9A-Fa-f:]:[0-9A-Fa-f:]"),
    ),
    _Detector(
        "IP",
        re.compile(rf"(?<![\w.])(?:{_IPV4_OCTET}\.){{3}}{_IPV4_OCTET}(?![\w]|\.\d)"),
        _validated(_is_identifying_ipv4),
        re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d"),
    ),
    _Detector(
        "PHONE",
        # Digit groups after the first are separator-delimited: optional separators between bounded groups
        # would let the regex try every split of a long digit run.
        re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?[ .-]?\d+(?:[ .-]\d{2,}){0,5}(?![\w]|[.-]\d)"),
        _validated(_is_international_phone),
        re.compile(r"\+\d"),
    ),
    _Detector(
        "PHONE",
        re.compile(
            r"(?<![\w+.-])(?:1[ .-])?(?:\([2-9]\d{2}\) ?\d{3}[ .-]|[2-9]\d{2}(?P<us>[ .-])\d{3}(?P=us))\d{4}(?![\w]|[.-]\d)"
        ),
        _whole,
        re.compile(r"\d{3}[ .-]\d{4}"),
    ),
    _Detector(
        "PHONE",
        re.compile(r"(?<![\w+.-])0\d{1,4}(?P<eu>[ ./-])\d{2,8}(?:(?P=eu)\d{2,4}){0,4}(?![\w]|[./-]\d)"),
        _validated(_phone_digits_between(9, 15)),
        re.compile(r"0\d{1,4}[ ./-]\d\d"),
    ),
    _Detector(
        "PHONE",
        re.compile(r"(?<![\w+.-])[6-9]\d{2}(?P<es>[ .])\d{2}(?P=es)\d{2}(?P=es)\d{2}(?![\w]|[.-]\d)"),
        _whole,
        re.compile(r"\d{2}[ .]\d{2}[ .]\d{2}"),
    ),
    _Detector(
        "SECRET",
        re.compile(r"(?<![A-Za-z0-9_+/=-])[A-Za-z0-9_+/-]{20,}={0,2}(?![A-Za-z0-9_+/=-])"),
        _build_random_token,
        re.compile(r"[A-Za-z0-9_+/-]{20}"),
    ),
)


def _remove_private_keys(text: str, counts: Counter[str]) -> tuple[str, bool]:
    """Replace private key blocks; best-effort removal of unterminated ones, which make the text unsafe.

    A BEGIN marker pairs with the first END marker after it unless another BEGIN comes first. An unpaired
    BEGIN takes the key-looking lines after it, an unpaired END the key-looking lines before it. Markers are
    found in one pass each, so the work stays linear however many markers the text holds.
    """
    begins = list(_PRIVATE_KEY_BEGIN_RE.finditer(text))
    ends = list(_PRIVATE_KEY_END_RE.finditer(text))
    if not begins and not ends:
        return text, False
    regions: list[tuple[int, int]] = []
    unsafe = False
    end_index = 0
    for position, begin in enumerate(begins):
        if regions and begin.start() < regions[-1][1]:
            continue  # inside a region already removed
        while end_index < len(ends) and ends[end_index].start() < begin.end():
            orphan = ends[end_index]
            if not regions or orphan.start() >= regions[-1][1]:
                regions.append(
                    (_extend_over_key_lines(text, orphan.start(), forward=False, floor=_floor(regions)), orphan.end())
                )
                unsafe = True
            end_index += 1
        next_begin = begins[position + 1].start() if position + 1 < len(begins) else len(text)
        if end_index < len(ends) and ends[end_index].start() < next_begin:
            regions.append((begin.start(), ends[end_index].end()))
            end_index += 1
        else:
            inline = _KEY_MATERIAL_INLINE_RE.match(text, begin.end())
            stop = inline.end() if inline else begin.end()
            regions.append((begin.start(), _extend_over_key_lines(text, stop, forward=True)))
            unsafe = True
    for orphan in ends[end_index:]:
        if not regions or orphan.start() >= regions[-1][1]:
            regions.append(
                (_extend_over_key_lines(text, orphan.start(), forward=False, floor=_floor(regions)), orphan.end())
            )
            unsafe = True
    pieces: list[str] = []
    cursor = 0
    for start, stop in regions:
        pieces.append(text[cursor:start])
        pieces.append("[PRIVATE_KEY]")
        cursor = stop
    pieces.append(text[cursor:])
    counts["PRIVATE_KEY"] += len(regions)
    return "".join(pieces), unsafe


def _floor(regions: list[tuple[int, int]]) -> int:
    return regions[-1][1] if regions else 0


def _extend_over_key_lines(text: str, position: int, *, forward: bool, floor: int = 0) -> int:
    """Move ``position`` over whole neighbouring lines that look like key material (base64, PEM headers)."""
    if forward:
        while position < len(text) and text[position] == "\n":
            line_end = text.find("\n", position + 1)
            line_end = len(text) if line_end == -1 else line_end
            if not _KEY_MATERIAL_LINE_RE.fullmatch(text, position + 1, line_end):
                break
            position = line_end
        return position
    while position > floor and text[position - 1] == "\n":
        line_start = max(text.rfind("\n", 0, position - 1) + 1, floor)
        if not _KEY_MATERIAL_LINE_RE.fullmatch(text, line_start, position - 1):
            break
        position = line_start
    return position


def scrub(text: str) -> ScrubResult:
    """Replace PII and secrets in ``text`` with typed placeholders.

    Args:
        text: Any text (a prompt, a response).

    Returns:
        The scrubbed text, the replacements made by type, and whether a secret could not be removed safely.
    """
    counts: Counter[str] = Counter()
    text, unsafe = _remove_private_keys(text, counts)
    for detector in _DETECTORS:
        if detector.hint is not None and detector.hint.search(text) is None:
            continue

        def replace(match: re.Match[str], detector: _Detector = detector) -> str:
            replacement = detector.build(match, detector.label)
            if replacement is None:
                return match.group(0)
            counts[detector.label] += 1
            return replacement

        text = detector.pattern.sub(replace, text)
    if unsafe:
        logger.warning("Unpaired private key marker: removed the key-looking lines around it, text marked unsafe")
    return ScrubResult(text=text, counts={label: n for label, n in counts.items() if n}, unsafe=unsafe)


def find_leaks(text: str) -> list[str]:
    """List the types of PII or secret present in ``text`` (empty for text that :func:`scrub` produced).

    Args:
        text: Text to check, e.g. a curated example.

    Returns:
        Sorted placeholder names (``"EMAIL"``, ``"OPENAI_KEY"``, ...) of everything :func:`scrub` would replace.
    """
    result = scrub(text)
    leaks = set(result.counts)
    if result.unsafe:
        leaks.add("PRIVATE_KEY")
    return sorted(leaks)
