"""Validators behind the PII and secret scrubber: card numbers (Luhn), identifying IP addresses, phone
numbers, and the entropy and shape tests that tell a random token or a secret value from ordinary text.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable

PLACEHOLDER_RE = re.compile(r"\[[A-Z][A-Z_]*\]")

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


def is_card(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456":
        return False
    separators = set(re.findall(r"[ -]", candidate))
    if len(separators) > 1:
        return False
    if separators and any(len(group) < 3 for group in re.split(r"[ -]", candidate)):
        return False
    return _luhn_ok(digits)


def is_identifying_ipv4(candidate: str) -> bool:
    address = ipaddress.IPv4Address(candidate)
    if address.is_loopback or address.is_unspecified or candidate == "255.255.255.255":
        return False
    # A netmask (255.x.x.x with contiguous one bits) is configuration, not an address of anyone.
    as_int = int(address)
    inverted = ~as_int & 0xFFFFFFFF
    return not (candidate.startswith("255.") and (inverted & (inverted + 1)) == 0)


def is_identifying_ipv6(candidate: str) -> bool:
    try:
        address = ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return not (address.is_loopback or address.is_unspecified)


def phone_digits_between(low: int, high: int) -> Callable[[str], bool]:
    def validate(candidate: str) -> bool:
        return low <= sum(char.isdigit() for char in candidate) <= high

    return validate


def is_international_phone(candidate: str) -> bool:
    # One dot makes a signed decimal (+35236450.6, +123456789.12); dotted phone numbers have several.
    return phone_digits_between(8, 15)(candidate) and candidate.count(".") != 1


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


def looks_random(token: str) -> bool:
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


def is_secret_value(key: str, separator: str, value: str, following: str, *, quoted: bool) -> bool:
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


def has_letter_and_digit(value: str) -> bool:
    return any(char.isdigit() for char in value) and any(char.isalpha() for char in value)


def is_url_password(value: str) -> bool:
    """Whether the password part of ``scheme://user:password@host`` is a real value, not a stand-in."""
    return value.lower() not in _NOT_SECRET_VALUES and not value.startswith(("$", "%", "{", "<"))
