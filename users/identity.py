"""One identity for usernames and emails: the key every claim, lookup, login, placement and admin
search compares, computed here in Python and stored, never recomputed differently in SQL.

`identity_key(value)` is Unicode's NFKC_Casefold (NFKC, full case folding, NFKC again): "ＡＤＭＩＮ",
"Admin" and "admin" are one identity, and so are "STRASSE" and "straße". PostgreSQL's lower() is not the
same function (it leaves "ß" alone and depends on the database's locale), which is why no query
compares lower(column) any more: lookups compare the stored key.

`username_problem(raw)` says why a username cannot be registered: a key longer than the stored column
(case folding can lengthen a name: "ß" becomes "ss"), or letters from scripts that do not belong
together. Mixing scripts is refused, Unicode TR39's "highly restrictive" level: one script, or Latin
with the scripts Japanese, Chinese and Korean are written in. So "аdmin" with a Cyrillic "а" cannot sit
beside "admin". Whole-script look-alikes (an all-Cyrillic name that reads like a Latin one) are not
caught; docs/security.md says so.
"""

import re
import unicodedata

from django.contrib.auth.hashers import check_password

USERNAME_MAX = 150  # the stored username and its key (users_user.username, .username_key)
EMAIL_MAX = 254  # the stored email and its uniqueness claim (users_uniqueclaim.value)

# TR39 "highly restrictive": these sets may be mixed with each other, nothing else.
_ALLOWED_MIXES = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
_SCRIPT_ALIASES = {"CJK": "HAN", "IDEOGRAPHIC": "HAN"}
USERNAME_PATTERN = re.compile(r"^[\w.@+-]+\Z")  # checked on the stored form: NFKC can add spaces


def display_form(value: str) -> str:
    """The form a username or email is stored and shown in: trimmed, compatibility characters folded
    (full-width letters become ASCII), letter case kept."""
    return unicodedata.normalize("NFKC", value).strip()  # after NFKC: it can turn a character into spaces


# Turkish dotted capital I and dotless small i: full case folding keeps them apart from "i" ("İ" folds
# to "i" + a combining dot), so "ALİCE" and "alıce" would sit beside "alice". They are one identity.
_TURKISH_I = str.maketrans({"\u0130": "i", "\u0131": "i"})


def identity_key(value: str) -> str:
    """The case-insensitive identity of a username or email: NFKC_Casefold of the trimmed value, with
    the Turkish dotted and dotless i folded to "i"."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value.translate(_TURKISH_I)).casefold()).strip()


def _script(char: str) -> str | None:
    """The script of a letter (the first word of its Unicode name), None for what belongs to every
    script: digits, punctuation, combining marks."""
    if not unicodedata.category(char).startswith("L"):
        return None
    first = unicodedata.name(char, "UNKNOWN").split(" ", 1)[0]
    return _SCRIPT_ALIASES.get(first, first)


def scripts_of(value: str) -> set[str]:
    return {script for char in value if (script := _script(char)) is not None}


def mixes_scripts(value: str) -> bool:
    """True when `value` mixes scripts (or numbering systems) that TR39 "highly restrictive" refuses."""
    scripts = scripts_of(value)
    if len(scripts) > 1 and not any(scripts <= allowed for allowed in _ALLOWED_MIXES):
        return True
    # "1" and "١" look different but both are digits: one numbering system per name.
    zeros = {ord(char) - unicodedata.digit(char) for char in value if unicodedata.category(char) == "Nd"}
    return len(zeros) > 1


def username_problem(raw: str) -> str | None:
    """Why `raw` cannot be a username (a message for the client), or None when it can."""
    if any(0xD800 <= ord(char) <= 0xDFFF for char in raw):
        return "Enter a valid username."
    if not USERNAME_PATTERN.match(display_form(raw)):
        return "Enter a valid username: letters, digits and @ . + - _ only."
    if len(display_form(raw)) > USERNAME_MAX or len(identity_key(raw)) > USERNAME_MAX:
        return f"Ensure this field has no more than {USERNAME_MAX} characters once normalised."
    if mixes_scripts(display_form(raw)):
        return "A username must not mix letters of different scripts (for example Latin and Cyrillic)."
    return None


# Characters that reorder how text around them is shown (Unicode's bidi controls): in a display name they
# make "\u202egnp.exe" read "exe.png" beside the username they decorate.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
MAX_COMBINING_RUN = 4  # marks on one base character: enough for any script's real text, not for "Zalgo"


def display_name_problem(raw: str) -> str | None:
    """Why `raw` cannot be a display name (a message for the client), or None when it can: no bidi
    control, and no more than MAX_COMBINING_RUN combining marks on one character (stacked marks draw
    over the text around them)."""
    if any(char in _BIDI_CONTROLS for char in raw):
        return "A display name must not contain bidirectional control characters."
    run = 0
    for char in unicodedata.normalize("NFC", raw):
        run = run + 1 if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me") else 0
        if run > MAX_COMBINING_RUN:
            return f"A display name must not stack more than {MAX_COMBINING_RUN} combining marks on one character."
    return None


def email_problem(raw: str) -> str | None:
    """Why `raw` (already a syntactically valid email) cannot be stored, or None when it can."""
    if len(display_form(raw)) > EMAIL_MAX or len(identity_key(raw)) > EMAIL_MAX:
        return f"Ensure this field has no more than {EMAIL_MAX} characters once normalised."
    return None


def password_form(raw: str) -> str:
    """A password as it is hashed: NFKC, as NIST SP 800-63B advises, so that the same password typed on
    two keyboards (a precomposed "é" on one, "e" + U+0301 on another, as macOS input can send) is one
    password. Nothing is trimmed or case-folded: every other character counts."""
    return unicodedata.normalize("NFKC", raw)


def password_matches(raw: str, password_hash: str) -> bool:
    """Whether `raw` is the password of `password_hash`: its NFKC form, or, for a password set before
    passwords were normalised (hashed as typed), the text as typed."""
    form = password_form(raw)
    return check_password(form, password_hash) or (form != raw and check_password(raw, password_hash))
