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
  ``Bearer``/``token``/``Basic`` credentials; and long random-looking tokens (see :func:`looks_random`).
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

import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from ftops.curation.detectors import (
    has_letter_and_digit,
    is_card,
    is_identifying_ipv4,
    is_identifying_ipv6,
    is_international_phone,
    is_secret_value,
    is_url_password,
    looks_random,
    phone_digits_between,
)
from ftops.curation.private_keys import remove_private_keys

logger = logging.getLogger(__name__)


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
    if not is_secret_value(match.group("key"), separator, trimmed, following, quoted=name != "bare"):
        return None
    offset = match.start()
    whole = match.group(0)
    return whole[: match.start(name) - offset] + f"[{label}]" + whole[value_end - offset :]


def _build_random_token(match: re.Match[str], label: str) -> str | None:
    token = match.group(0)
    if "/" in token and _inside_url(match):
        # In a URL only the random-looking path segments go: https://gist.github.com/user/[SECRET]
        parts = token.split("/")
        replaced = [f"[{label}]" if looks_random(part) else part for part in parts]
        return None if replaced == parts else "/".join(replaced)
    return f"[{label}]" if looks_random(token) else None


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
        _group("value", is_url_password),
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
        _group("value", has_letter_and_digit),
        re.compile("bearer|token|basic", re.IGNORECASE),
    ),
    _Detector("EMAIL", re.compile(_EMAIL), _whole, re.compile("@")),
    _Detector(
        "CARD",
        re.compile(r"(?<![\w+-])(?<!\d )(?:\d[ -]?){12,18}\d(?![\w-]|[ -]\d)"),
        _validated(is_card),
        re.compile(r"\d{3}"),
    ),
    _Detector(
        "IP",
        re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.\w)"),
        _validated(is_identifying_ipv6),
        re.compile(r"[0-9A-Fa-f:]:[0-9A-Fa-f:]"),
    ),
    _Detector(
        "IP",
        re.compile(rf"(?<![\w.])(?:{_IPV4_OCTET}\.){{3}}{_IPV4_OCTET}(?![\w]|\.\d)"),
        _validated(is_identifying_ipv4),
        re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d"),
    ),
    _Detector(
        "PHONE",
        # Digit groups after the first are separator-delimited: optional separators between bounded groups
        # would let the regex try every split of a long digit run.
        re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?[ .-]?\d+(?:[ .-]\d{2,}){0,5}(?![\w]|[.-]\d)"),
        _validated(is_international_phone),
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
        _validated(phone_digits_between(9, 15)),
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


def scrub(text: str) -> ScrubResult:
    """Replace PII and secrets in ``text`` with typed placeholders.

    Args:
        text: Any text (a prompt, a response).

    Returns:
        The scrubbed text, the replacements made by type, and whether a secret could not be removed safely.
    """
    counts: Counter[str] = Counter()
    text, unsafe = remove_private_keys(text, counts)
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
