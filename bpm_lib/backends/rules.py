"""Offline, deterministic, rule-based instruction parser (registry name ``rules``).

The default parser when no LLM is configured. Pure Python regular expressions: no model,
no network, no randomness; the same text always gives the same :class:`ParsedInstruction`
(BPM_SPEC §2). An instruction no rule reads raises :class:`~bpm_lib.errors.ParseError`
quoting the instruction and saying why; it never falls back to a silent default.

How an instruction is read
--------------------------
1. *Normalise*: Unicode NFKC, typographic quotes/dashes to ASCII, lower case, single
   spaces; drop leading politeness ("please", "can you", "could you", "let's", …),
   trailing "please"/"thanks" and trailing punctuation. Several sentences (". " inside)
   are refused: one instruction is one edit. More than
   :data:`MAX_INSTRUCTION_CHARS` characters is refused as too long (so every regular
   expression runs on bounded input; no pattern repeats a group that could match the
   same text in two ways, so none backtracks catastrophically).
2. *Global edits* are tried first on the text as written, then families of local edits
   on the text with a trailing "in/from/to the image|photo|picture" removed, in this
   order: removal, explicit replacement ("replace/swap/substitute …", "… instead of …"),
   "attribute of X" frames ("change the colour of X to Y"), colour/texture verbs ("paint
   X red", "give X a brick texture"), size verbs ("enlarge X", "shrink X"), additions,
   moves ("move X to the left"), then the generic transformation frames ("make X Y",
   "turn X into Y", "change X from A to B", "X should be Y", "let X be Y") whose
   predicate is classified as removal, size, colour, material, other attribute or a new
   noun. In "make X Y" the split between X and Y is searched: the shortest X that leaves
   an attribute, else the longest X that leaves a noun with an article ("make the cat a
   dog"); searches are bounded (an attribute ≤ 8 words, a noun phrase ≤ 12 words).

Output conventions
------------------
- Phrases are lower-cased noun phrases without leading articles/determiners/possessive
  pronouns ("the bike" → "bike", "his hat" → "hat") and without trailing punctuation.
  A phrase that is only a pronoun ("it", "them", "her") is refused: it names no object,
  and so is "it" as the subject of a local change ("make it bigger", "make it a dog").
- Global edits (a whole-scene subject: "it"/"this" with a style, weather, season,
  time-of-day, lighting or colour predicate; "the image/photo/picture/scene/whole image"
  with any predicate; a bare style request such as "in the style of van gogh"; "change
  the season/weather/style to …"; "add snow"): source = target = ``all``, ``global``.
- Removals: target ``none``, ``remove``.
- Replacements: ``replace``, ``position_relation`` ``unchanged`` (the new object takes
  the old one's place, BPM_SPEC §2 "replace the cat with a dog" → unchanged);
  ``size_relation`` ``unchanged`` when the text asks for "the same size", else ``none``.
- Edits of an object in place (colour, texture, size, other attributes) have
  ``position_relation`` ``unchanged``, like replacements; removals and global edits
  ``none``.
- Colour changes: ``change color``, source X, target "<colour> X" (colour words already
  leading X are dropped from the target: "make the red car blue" → "blue car"; after a
  possessive the colour goes before the head: "woman's dress" → "woman's red dress").
  "Turn the car into a red car" is a colour change too (the same noun, a new colour),
  and likewise for materials.
- Material/texture/pattern changes: ``change texture``, target "<material> X".
- Size changes: ``change size``, source = target = X; bigger/larger/taller/enlarge/…
  → bigger, smaller/shrink/tinier/thinner/… → smaller, "the same size" → unchanged;
  "give the bear bigger claws" → X = "claws", bigger.
- Other attribute or action changes ("make the man happy", "make the dog sit"):
  ``other``, target "<attribute> X" ("happy man", "sitting dog"). Moves within the
  frame ("move the cat to the left/right/top/bottom"): ``other``, source = target = X,
  position left/right/above/below (relative to X's own source region); any other move
  is refused. An instruction asking for no change ("make the red car red", "turn the cat
  into the cat") is refused.
- Additions: source ``none``, target = added object = the new object, anchor = the
  object after the spatial phrase (``none`` when there is none, or when it is only a
  place such as "the left", "the background", "the corner"). Where several spatial
  phrases could split the text, the first whose anchor starts with a definite
  determiner wins ("add a man in a red shirt next to the car" → added "man in a red
  shirt", anchor "car"). A posture verb after the new object is dropped ("add a bird
  flying in the sky" → "bird"). "Have/let X wear/hold/have Y", "give X (a) Y", "what
  if X had Y" add Y with anchor X, position ``none``.

Position of an addition relative to its anchor (``none`` whenever there is no anchor,
since BPM_SPEC §4 judges position only against an anchor box):

- ``above``: on top of, on the top of, at the top of, atop, above, over
- ``below``: under, underneath, beneath, below, at the bottom of
- ``left`` / ``right``: (to|on|at) the left/right [side|hand side] of, left/right of
- ``inside``: in, inside (of), into, within; and "on/onto/to the <surface> [of X]" when
  the anchor is a flat surface things are drawn within (screen, display, wall, sign,
  poster, page, cover, shirt, …): "put a car on the screen of the laptop" → anchor
  "screen of the laptop", inside (BPM_SPEC §2)
- ``none``: on, onto, upon, to, at, next to, beside, near, behind, in front of, around,
  between, among, along, against, across: "Let a horse stand on the grass" → none
  (BPM_SPEC §2); "Add a toy on the table" → anchor table, none.

Bump :data:`RULES_VERSION` whenever a rule changes what any instruction parses to:
caches key on it.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any

from bpm_lib.backends.base import PARSERS
from bpm_lib.errors import ParseError
from bpm_lib.types import GLOBAL, SOURCE_NONE, ParsedInstruction

logger = logging.getLogger(__name__)

RULES_VERSION = "rules-1"
MAX_INSTRUCTION_CHARS = 2000

__all__ = ["MAX_INSTRUCTION_CHARS", "RULES_VERSION", "RulesParser"]


class _Unreadable(Exception):
    """A rule recognised the shape of the instruction but cannot use it (message: why)."""


# ---------------------------------------------------------------------------------------
# Vocabulary (data; the rules below only combine it)
# ---------------------------------------------------------------------------------------

COLOURS = frozenset(
    """red orange yellow green blue purple violet pink brown black white gray grey silver
    gold golden beige cyan magenta turquoise teal navy maroon crimson scarlet lavender lilac
    indigo olive tan cream ivory khaki coral lime mint peach burgundy amber emerald azure
    aqua fuchsia mauve ochre rust salmon sapphire ruby plum mustard blonde blond auburn
    ginger rainbow multicolored multicoloured reddish bluish greenish yellowish pinkish
    purplish brownish greyish grayish orangish whitish blackish""".split()
)
COLOUR_MODIFIERS = frozenset(
    """light dark bright pale deep pastel neon hot sky navy baby royal forest midnight
    blood cherry jet pure vivid dull pitch snow off dusty rose sea electric powder""".split()
)
MATERIALS = frozenset(
    """wooden wood metal metallic steel iron glass glassy stone marble brick concrete plastic
    rubber leather fur furry fluffy woolen woollen wool knitted knit velvet silk silky satin
    denim paper cardboard ice icy crystal ceramic porcelain clay bronze copper chrome
    aluminum aluminium tin rusty shiny matte glossy sparkly glittery scaly feathery feathered
    hairy fuzzy woven straw bamboo cotton lace jelly chocolate candy lego sandy granite jade
    pearl diamond fabric cloth stainless striped checkered checked plaid tartan spotted
    dotted polka-dot polka-dotted floral camouflage leopard-print zebra-striped""".split()
) | frozenset({"stainless steel", "polka dot", "polka dotted", "leopard print", "zebra print"})
BIGGER = frozenset(
    """bigger larger taller wider longer huger giant huge enormous gigantic massive higher
    thicker big large tall wide long""".split()
)
SMALLER = frozenset(
    """smaller tinier tiny shorter narrower thinner little littler miniature mini small
    short narrow slimmer""".split()
)
SIZE_INTENSIFIERS = (
    "a bit",
    "a little",
    "a little bit",
    "a lot",
    "much",
    "slightly",
    "far",
    "way",
    "even",
    "somewhat",
    "significantly",
    "considerably",
    "very",
    "really",
    "more",
    "extra",
    "super",
)
# Attributes that are neither colour, material nor size ("make the man happy").
OTHER_ADJECTIVES = frozenset(
    """happy sad angry smiling laughing crying old older young younger bald bearded wet dry
    broken open closed empty full clean dirty burnt burning melting frozen glowing
    transparent sleeping asleep awake surprised scared tired sick muscular fat skinny
    cute ugly beautiful scary funny serious dead alive ripe rotten fresh cooked raw
    blurry blurred sharp dark darker bright brighter lighter shiny dull dusty messy tidy
    rusty new modern ancient futuristic colorful colourful vibrant pale""".split()
)
# Base verb → the participle used in the target phrase ("make the dog sit" → "sitting dog").
ACTION_VERBS = {
    "smile": "smiling",
    "laugh": "laughing",
    "cry": "crying",
    "sit": "sitting",
    "sit down": "sitting",
    "stand": "standing",
    "stand up": "standing",
    "jump": "jumping",
    "run": "running",
    "fly": "flying",
    "sleep": "sleeping",
    "dance": "dancing",
    "swim": "swimming",
    "walk": "walking",
    "sing": "singing",
    "eat": "eating",
    "wave": "waving",
    "yawn": "yawning",
    "frown": "frowning",
    "lie down": "lying",
    "glow": "glowing",
    "melt": "melting",
    "burn": "burning",
    "shine": "shining",
    "bark": "barking",
    "roar": "roaring",
    "wink": "winking",
    "kneel": "kneeling",
    "look up": "looking up",
    "look down": "looking down",
}
# Verbs (bare and participle) that may follow a new object in an addition:
# "let a horse stand on the grass", "add a bird flying in the sky".
POSTURE_VERBS = frozenset(
    """stand sit lie lay fly swim walk run sleep perch hang float rest play eat hide jump
    climb appear be lean wait graze crawl pose dance peek park land hover stay hop roll
    standing sitting lying laying flying swimming walking running sleeping perched perching
    hanging floating resting playing eating hiding jumping climbing appearing leaning
    waiting grazing crawling posing dancing peeking parked placed landing hovering staying
    hopping rolling seated sat positioned located mounted""".split()
)

STYLE_TERMS = frozenset(
    """style styled painting painted sketch sketched drawing drawn illustration artwork art
    watercolor watercolour cartoon cartoonish cartoony anime manga comic comics pixel
    pixelated impressionist impressionism expressionist expressionism cubist cubism surreal
    surrealist surrealism monet picasso rembrandt dali ghibli pixar disney ukiyo-e pencil
    charcoal crayon pastel mosaic render rendering claymation vintage retro sepia monochrome
    grayscale greyscale cyberpunk steampunk noir photorealistic realistic hyperrealistic
    engraving woodcut graffiti vaporwave filter polaroid renaissance baroque minimalist
    abstract gothic psychedelic synthwave origami embroidery tapestry ink etching fresco
    doodle lineart silhouette hdr cinematic vector pointillism fauvism aesthetic photograph
    photo""".split()
) | frozenset(
    {
        "van gogh",
        "da vinci",
        "studio ghibli",
        "pop art",
        "pixel art",
        "oil painting",
        "stained glass",
        "low poly",
        "low-poly",
        "3d render",
        "black and white",
        "black-and-white",
        "film noir",
        "art deco",
        "art nouveau",
        "line art",
        "comic book",
        "8-bit",
        "16-bit",
    }
)
WEATHER_TERMS = frozenset(
    """winter summer spring autumn fall night nighttime night-time midnight daytime day noon
    dawn dusk sunset sunrise twilight evening morning afternoon snow snowy snowing snowfall
    rain rainy raining storm stormy thunderstorm lightning fog foggy mist misty haze hazy
    cloudy overcast sunny windy christmas halloween underwater apocalyptic""".split()
) | frozenset({"golden hour", "blue hour", "winter wonderland", "night time", "day time"})
LIGHT_TERMS = frozenset(
    """bright brighter brighten brightness dark darker darken light lighter dim dimmer warm
    warmer cool cooler cold colder vivid vibrant saturated desaturated saturation colorful
    colourful contrast exposure sharp sharper sharpen blurry blur blurred cinematic dramatic
    moody gloomy cheerful old older aged faded modern futuristic ancient medieval spooky
    creepy dreamy magical fantasy lighting tone tint hue grainy clearer sunlit""".split()
)
# Heads of a bare style / scene request ("an oil painting", "a snowy night scene").
STYLE_HEADS = frozenset(
    """style painting sketch drawing illustration artwork art cartoon anime manga comic
    watercolor watercolour render rendering filter effect look mosaic engraving woodcut
    etching fresco doodle graffiti aesthetic version""".split()
)
SCENE_HEADS = frozenset("scene time day season weather setting atmosphere".split())
# Bare additions that change the whole scene ("add snow", "add a vintage filter").
GLOBAL_ADDITION_HEADS = frozenset(
    """snow snowfall rain fog mist haze storm thunderstorm lightning sunset sunrise filter
    effect tint tone vignette grain lighting atmosphere mood""".split()
)
# Words that cannot sit inside a bare style phrase: their presence means an object.
FUNCTION_WORDS = frozenset(
    """the of with on in into to from for at by over under above below beside next behind
    it this that these those his her its their my your our is are be was were should must
    instead without but replace remove add put place delete make turn change""".split()
)
# Flat things an added object is drawn *within* ("on the screen of the laptop" → inside).
SURFACES = frozenset(
    """screen display monitor surface cover page sign signboard billboard poster wall door
    canvas board blackboard whiteboard chalkboard label face shirt t-shirt tshirt flag
    banner card envelope book notebook paper""".split()
)
# Places that name no detectable object ("on the left", "in the background").
NON_ANCHORS = frozenset(
    """left right top bottom middle center centre corner background foreground distance
    side front back edge sky-line image photo picture scene frame""".split()
) | frozenset(
    {
        "left side",
        "right side",
        "top left",
        "top right",
        "bottom left",
        "bottom right",
        "left corner",
        "right corner",
        "top left corner",
        "top right corner",
        "bottom left corner",
        "bottom right corner",
        "upper left",
        "upper right",
        "lower left",
        "lower right",
        "left-hand side",
        "right-hand side",
        "middle of the image",
        "center of the image",
    }
)
PRONOUNS = frozenset(
    """it its them they this that these those him her he she me us we you something
    anything someone somebody anyone one ones stuff everything nothing all none""".split()
)
DETERMINERS = (
    "the",
    "a",
    "an",
    "this",
    "that",
    "these",
    "those",
    "his",
    "her",
    "its",
    "their",
    "my",
    "your",
    "our",
    "some",
    "any",
    "another",
    "each",
    "every",
    "all",
    "all of",
    "both",
)
# (spatial phrase, position relation); longest alternatives are tried first.
SPATIAL = (
    ("on top of", "above"),
    ("on the top of", "above"),
    ("at the top of", "above"),
    ("atop", "above"),
    ("above", "above"),
    ("over", "above"),
    ("underneath", "below"),
    ("beneath", "below"),
    ("below", "below"),
    ("under", "below"),
    ("at the bottom of", "below"),
    ("to the left of", "left"),
    ("on the left of", "left"),
    ("at the left of", "left"),
    ("to the left side of", "left"),
    ("on the left side of", "left"),
    ("on the left-hand side of", "left"),
    ("to the left-hand side of", "left"),
    ("on the left hand side of", "left"),
    ("left of", "left"),
    ("to the right of", "right"),
    ("on the right of", "right"),
    ("at the right of", "right"),
    ("to the right side of", "right"),
    ("on the right side of", "right"),
    ("on the right-hand side of", "right"),
    ("to the right-hand side of", "right"),
    ("on the right hand side of", "right"),
    ("right of", "right"),
    ("inside of", "inside"),
    ("inside", "inside"),
    ("within", "inside"),
    ("into", "inside"),
    ("in front of", "none"),
    ("in", "inside"),
    ("next to", "none"),
    ("close to", "none"),
    ("beside", "none"),
    ("besides", "none"),
    ("alongside", "none"),
    ("near", "none"),
    ("behind", "none"),
    ("around", "none"),
    ("between", "none"),
    ("among", "none"),
    ("along", "none"),
    ("against", "none"),
    ("across", "none"),
    ("onto", "none"),
    ("upon", "none"),
    ("on", "none"),
    ("at", "none"),
    ("to", "none"),
)
_SURFACE_PREPOSITIONS = frozenset({"on", "onto", "upon", "to"})
_DEFINITE_START = re.compile(r"(?:the|his|her|its|their|my|your|our|this|that|these|those) ")


def _alt(words: Iterable[str]) -> str:
    """A regex alternation of literal phrases, longest first ("on top of" before "on")."""
    ordered = sorted(set(words), key=lambda w: (-len(w), w))
    return "(?:" + "|".join(re.escape(w) for w in ordered) + ")"


_COLOUR_WORD = rf"(?:(?:{_alt(COLOUR_MODIFIERS)})[ -])?{_alt(COLOURS)}"
_COLOUR = rf"{_COLOUR_WORD}(?:(?: and |-|/| ){_COLOUR_WORD})?"
_MATERIAL = rf"{_alt(MATERIALS)}(?: {_alt(MATERIALS)})?"
_INTENSIFIER = rf"(?:{_alt(SIZE_INTENSIFIERS)} )?"
_DET = _alt(DETERMINERS)
_SCENE_STRONG = (
    r"(?:(?:the|this|that|our|my|your) )?(?:(?:whole|entire|full|complete|overall|original|"
    r"given|current) )?(?:image|photo|photograph|picture|pic|img|scene|frame|shot|view|world|"
    r"setting|environment|landscape)|everything|all of it|the (?:whole|entire) thing"
)
_SCENE_WEAK = r"it|this|that"
_SCENE = rf"(?:{_SCENE_STRONG}|{_SCENE_WEAK})"
_GLOBAL_VERBS = (
    r"(?:make|turn|change|convert|transform|render|redo|recreate|reimagine|restyle|stylize|"
    r"stylise|switch|show|depict|set|edit|modify|paint|draw|redraw|repaint|give|let|have|"
    r"apply|put|shift)"
)

_SLOTS = {
    "<X>": r"(?P<x>.+?)",
    "<Y>": r"(?P<y>.+)",
    "<Z>": r"(?P<z>.+?)",
    "<C>": rf"(?P<c>{_COLOUR})",
    "<M>": rf"(?P<m>{_MATERIAL})",
    "<SCENE>": rf"(?P<scene>{_SCENE})",
}


def _rx(pattern: str) -> re.Pattern[str]:
    """Compile a whole-instruction pattern; ``<X>``, ``<Y>``, ``<C>`` … are named slots."""
    for slot, regex in _SLOTS.items():
        pattern = pattern.replace(slot, regex)
    return re.compile("^(?:" + pattern + ")$")


# ---------------------------------------------------------------------------------------
# Normalisation and phrases
# ---------------------------------------------------------------------------------------

_TRANSLATE = str.maketrans(
    {
        "\u2019": "'",
        "\u2018": "'",
        "`": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2212": "-",
        "&": " and ",
        "\u2192": " -> ",
    }
)
_LEADING = re.compile(
    r"^(?:please|pls|plz|kindly|just|now|ok|okay|hey|hi|so|then|also|and|"
    r"(?:can|could|would|will) (?:you|we|u)(?: please)?|"
    r"i (?:want|need|would like|'d like|wish) (?:you )?to|i'd like you to|"
    r"you (?:should|can|could|must)|try to|go ahead and|let's|let us)(?:\s*[,:]\s*|\s+)"
)
_TRAILING_WORDS = ("please", "pls", "plz", "thanks", "thank you", "for me", "now")
_EDGE_PUNCT = " .!?,;:-\"'()[]{}…"
_SCENE_TAIL = re.compile(
    r" (?:in|from|on|to|into|inside|within) (?:the|this|that|my|our|your) "
    r"(?:(?:whole|entire|full|original|given|current) )?"
    r"(?:image|photo|photograph|picture|pic|img|scene|frame|shot)$"
)


def _strip_trailing_words(text: str) -> str:
    """Drop a trailing ", please" / "thanks" (plain string checks: no regex backtracking)."""
    for word in _TRAILING_WORDS:
        if text.endswith(word) and len(text) > len(word) and text[-len(word) - 1] in " ,":
            return text[: -len(word)].rstrip(" ,")
    return text


def _normalise(instruction: str) -> str:
    text = unicodedata.normalize("NFKC", instruction).translate(_TRANSLATE).lower()
    text = " ".join(text.split())
    text = re.sub(r"\bit's\b", "it is", text)
    previous = None
    while text != previous:
        previous = text
        text = _strip_trailing_words(text.strip(_EDGE_PUNCT))
        text = _LEADING.sub("", text, count=1)
    if not text:
        raise _Unreadable("it has no words to read")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise _Unreadable(f"it is too long after normalisation ({len(text)} characters)")
    if re.search(r"[.!?;] \w", text):
        raise _Unreadable(
            "it holds several sentences; one instruction must describe one edit"
        )
    return text


_LEADING_DET = re.compile(rf"^(?:{_DET} )+")
# Words of letters/digits/'&/.+- separated by single spaces (a comma may end a word).
# Each repetition must consume a space, so matching is linear.
_PHRASE_OK = re.compile(r"^\w[\w'&/.+-]*(?:,? [\w'&/.+-]+)*$")
_HAS_LETTER = re.compile(r"[^\W\d_]")


def _phrase(raw: str, role: str) -> str:
    """Clean one noun phrase: no leading determiners, no trailing punctuation."""
    text = _SCENE_TAIL.sub("", raw.strip(_EDGE_PUNCT)).strip(_EDGE_PUNCT)
    if text not in PRONOUNS:  # keep "her" alone so that it is refused as a pronoun
        text = _LEADING_DET.sub("", text).strip(_EDGE_PUNCT)
    if not text or text in DETERMINERS:
        raise _Unreadable(f"the {role} is empty")
    if text in PRONOUNS:
        raise _Unreadable(f"the {role} {text!r} is a pronoun that names no object")
    if not _HAS_LETTER.search(text) or not _PHRASE_OK.match(text):
        raise _Unreadable(f"the {role} {text!r} is not a noun phrase")
    return text


def _strip_leading_words(phrase: str, words: frozenset[str], modifiers: frozenset[str]) -> str:
    """Drop leading attribute words ("dark red car" → "car") but never the whole phrase.

    A modifier goes only together with the attribute word it modifies ("light blue"), so
    "light on the table" keeps its "light".
    """
    tokens = phrase.split()
    while len(tokens) > 1:
        if tokens[0] in words or (tokens[0] == "and" and tokens[1] in words):
            tokens = tokens[1:]
        elif tokens[0] in modifiers and len(tokens) > 2 and tokens[1] in words:
            tokens = tokens[2:]
        else:
            break
    return " ".join(tokens)


# ---------------------------------------------------------------------------------------
# Building results
# ---------------------------------------------------------------------------------------


def _result(**fields: str) -> ParsedInstruction:
    try:
        return ParsedInstruction(**fields)
    except ValueError as e:
        raise _Unreadable(f"it reads as an invalid combination ({e})") from e


def _global() -> ParsedInstruction:
    return _result(source_object=GLOBAL, target_object=GLOBAL, edit_type="global")


def _removal(source: str) -> ParsedInstruction:
    return _result(
        source_object=_phrase(source, "object to remove"),
        target_object=SOURCE_NONE,
        edit_type="remove",
    )


def _replacement(source: str, target: str, size: str = "none") -> ParsedInstruction:
    src = _phrase(source, "object to replace")
    tgt, same_size = _split_same_size(target)
    tgt = _phrase(tgt, "replacement object")
    if src == tgt:
        raise _Unreadable(f"it replaces {src!r} with itself")
    return _result(
        source_object=src,
        target_object=tgt,
        edit_type="replace",
        size_relation="unchanged" if same_size else size,
        position_relation="unchanged",
    )


def _attribute_change(
    edit_type: str, source: str, attribute: str, strip: frozenset[str]
) -> ParsedInstruction:
    src = _phrase(source, "object to change")
    attr = _LEADING_DET.sub("", attribute.strip()).strip()
    if not attr:
        raise _Unreadable("it names no new attribute")
    base = _strip_leading_words(src, strip, COLOUR_MODIFIERS if strip is COLOURS else frozenset())
    owner, possessive, head = base.rpartition("'s ")
    changed = f"{owner}{possessive}{attr} {head}" if possessive else f"{attr} {base}"
    target = _phrase(changed, "changed object")  # "woman's dress" → "woman's red dress"
    if target == src:
        raise _Unreadable(f"{src!r} already is {attr!r}: the instruction asks for no change")
    return _result(
        source_object=src, target_object=target, edit_type=edit_type, position_relation="unchanged"
    )


def _size_change(source: str, relation: str) -> ParsedInstruction:
    src = _phrase(source, "object to resize")
    return _result(
        source_object=src,
        target_object=src,
        edit_type="change size",
        size_relation=relation,
        position_relation="unchanged",
    )


_PRONOUN_PLACE = re.compile(
    r" (?:on|in|to|onto|inside|into|at|near|next to|beside|around|under|above) "
    r"(?:it|them|him|her|there|top)$"
)


def _addition(obj: str, anchor: str | None, relation: str) -> ParsedInstruction:
    # "the plate should have cookies on it": "on it" only repeats the anchor
    added = _phrase(_PRONOUN_PLACE.sub("", obj.strip()), "added object")
    anchor_phrase = SOURCE_NONE
    if anchor is not None:
        cleaned = _phrase(anchor, "anchor object")
        if _is_place(cleaned):
            relation = "none"
        else:
            anchor_phrase = cleaned
    if anchor_phrase == SOURCE_NONE:
        relation = "none"
    return _result(
        source_object=SOURCE_NONE,
        target_object=added,
        edit_type="add",
        anchor_object=anchor_phrase,
        added_object=added,
        position_relation=relation,
    )


def _is_place(anchor: str) -> bool:
    """True for a place that names no detectable object ("left", "background")."""
    if anchor in NON_ANCHORS:
        return True
    head, sep, rest = anchor.partition(" of ")
    return bool(sep) and head in NON_ANCHORS and re.fullmatch(_SCENE_STRONG, rest) is not None


# ---------------------------------------------------------------------------------------
# Predicate classification ("make X <predicate>", "X should be <predicate>")
# ---------------------------------------------------------------------------------------

_PRED_REMOVAL = re.compile(
    r"^(?:be )?(?:removed|deleted|erased|gone|eliminated|disappear|disappeared|vanish|"
    r"vanished|go away|went away|invisible|taken away|taken out|cut out)$"
)
_PRED_REPLACED = re.compile(
    r"^(?:be )?(?:replaced|swapped|substituted|exchanged) (?:with|by|for) (?P<y>.+)$"
)
_SIZE_BIG = _alt(BIGGER)
_SIZE_SMALL = _alt(SMALLER)
_PRED_BIGGER = re.compile(
    rf"^{_INTENSIFIER}(?:{_SIZE_BIG})(?: in size| than (?:before|now|it is|.+))?$"
    r"|^(?:twice|three times|four times|\d+ times|\d+x) (?:as (?:big|large|tall)|"
    r"(?:bigger|larger|taller)|the size|its size|the original size)(?: .+)?$"
    r"|^(?:double|triple) (?:the|its|their|his|her) size$"
)
_PRED_SMALLER = re.compile(
    rf"^{_INTENSIFIER}(?:{_SIZE_SMALL})(?: in size| than (?:before|now|it is|.+))?$"
    r"|^half (?:as (?:big|large|tall)|the size|its size|their size|his size|her size)(?: .+)?$"
)
_PRED_SAME_SIZE = re.compile(
    r"^(?:(?:at|of|in|keep|keeping|stay|remain) )?(?:the |its |their |a )?(?:same|similar|equal|"
    r"original) size(?: as (?:before|now|the original|.+))?$"
)
_PRED_COLOUR = re.compile(
    rf"^(?:(?:painted|colou?red|dyed|tinted|recolou?red|turned) )?(?:(?:in|into|to|with) )?"
    rf"(?:(?:an?|the) (?P<c1>{_COLOUR}) (?:colou?r|shade|hue|tint|tone|one|paint|paint job|"
    rf"finish|coat)|(?:the colou?r )?(?P<c2>{_COLOUR})"
    r"(?: colou?r(?:ed)?| in colou?r| paint| one)?)$"
)
_PRED_MATERIAL = re.compile(
    rf"^(?:(?:an?|the) (?P<m1>{_MATERIAL}) (?:texture|material|finish|surface|look|fabric|one|"
    rf"pattern|print)|(?P<m2>{_MATERIAL})(?: texture| material| finish| surface| fabric)?)$"
)
_PRED_MADE_OF = re.compile(r"^(?:(?:be )?made (?:out )?of|out of|made from) (?P<m>.+)$")
_PRED_OTHER = re.compile(
    rf"^(?:more |very |really |extremely |slightly |a (?:little |lot )?(?:bit )?|much |less )?"
    rf"(?P<a>{_alt(OTHER_ADJECTIVES)})$"
)
_PRED_ACTION = re.compile(rf"^(?P<v>{_alt(ACTION_VERBS)})$")
_ADJECTIVE_SHAPE = re.compile(
    r"^(?:more |very |really |extremely |slightly )?"
    r"(?P<a>[a-z]{3,}(?:y|ful|ous|ic|ive|less|ish|ent|ant|able|ible))$"
)
_PRED_LEAD = re.compile(
    r"^(?:look|looks|appear|appears|seem|seems|be|become|becomes|get|gets|turn|grow)\s+(?!like )"
)
_PRED_AS_IF = re.compile(
    r"^(?:look|looks|appear|appears|seem|seems) (?:like|as if|as though) "
    r"(?:it|they|he|she) (?:is|was|were|are) "
)
_PRED_LIKE = re.compile(r"^(?:look |looks |appear |seem )?(?:like|into|as) ")
_SPATIAL_START = re.compile(
    r"^(?:on|onto|in|into|at|next to|near|beside|behind|above|below|under|over|to the left|"
    r"to the right|left of|right of|inside|outside|away from|closer to|further from|farther from)\b"
)
_SAME_SIZE_TAIL = re.compile(
    r",? (?:of|with|in|at|keeping|and keep(?: it)?|but keep(?: it)?|but|while keeping) "
    r"(?:the |its |their |a |an )?(?:same|similar|equal) size(?: as (?:before|the original|"
    r"it|the \w+))?$"
)


def _split_same_size(target: str) -> tuple[str, bool]:
    match = _SAME_SIZE_TAIL.search(target)
    if match:
        return target[: match.start()], True
    return target, False


def _classify(
    subject: str, predicate: str, *, frame: str, allow_noun: bool = True
) -> ParsedInstruction | None:
    """Read ``predicate`` as the change asked of ``subject``; ``None`` when it is no predicate.

    ``frame`` says how the predicate was introduced: ``bare`` ("make X red": a noun needs
    an article), ``be`` ("X should be red": a noun needs an article) or ``into`` ("turn X
    into Y"/"change X to Y": any noun, and only listed adjectives). ``allow_noun=False``
    reads attributes only (no replacement by a new noun).
    """
    pred = predicate.strip()
    pred = _PRED_AS_IF.sub("", pred, count=1)
    pred = _PRED_LEAD.sub("", pred, count=1)
    if _PRED_REMOVAL.match(pred):
        return _removal(subject)
    replaced = _PRED_REPLACED.match(pred)
    if replaced:
        return _replacement(subject, replaced.group("y"))
    if _PRED_SAME_SIZE.match(pred):
        return _size_change(subject, "unchanged")
    if _PRED_BIGGER.match(pred):
        return _size_change(subject, "bigger")
    if _PRED_SMALLER.match(pred):
        return _size_change(subject, "smaller")
    colour = _PRED_COLOUR.match(pred)
    if colour:
        value = colour.group("c1") or colour.group("c2")
        return _attribute_change("change color", subject, value, COLOURS)
    material = _PRED_MATERIAL.match(pred)
    if material:
        value = material.group("m1") or material.group("m2")
        return _attribute_change("change texture", subject, value, MATERIALS)
    made_of = _PRED_MADE_OF.match(pred)
    if made_of:
        return _attribute_change("change texture", subject, made_of.group("m"), MATERIALS)
    other = _PRED_OTHER.match(pred)
    if other:
        return _attribute_change("other", subject, other.group("a"), OTHER_ADJECTIVES)
    action = _PRED_ACTION.match(pred)
    if action and frame != "into":
        return _attribute_change("other", subject, ACTION_VERBS[action.group("v")], frozenset())
    if frame != "into":
        shaped = _ADJECTIVE_SHAPE.match(pred)
        if shaped:
            return _attribute_change("other", subject, shaped.group("a"), frozenset())
    if not allow_noun:
        return None
    like = _PRED_LIKE.match(pred)
    noun = pred[like.end():] if like else pred
    if _SPATIAL_START.match(noun):
        return None
    if frame != "into" and not like and not re.match(rf"(?:{_DET}|two|three|four|five|\d+) ", noun):
        return None
    return _noun_replacement(subject, noun)


def _noun_replacement(subject: str, noun: str) -> ParsedInstruction:
    """A new noun for ``subject``; a noun that only adds colour/material to it is that change."""
    src = _phrase(subject, "object to replace")
    body, _ = _split_same_size(noun)
    tgt = _phrase(body, "replacement object")
    for words, modifiers, edit_type in (
        (COLOURS, COLOUR_MODIFIERS, "change color"),
        (MATERIALS, frozenset(), "change texture"),
    ):
        src_base = _strip_leading_words(src, words, modifiers)
        tgt_base = _strip_leading_words(tgt, words, modifiers)
        if src_base == tgt_base and tgt != tgt_base:
            # "turn the white cat into a black cat": the same object in another colour
            return _attribute_change(edit_type, src, tgt[: -len(tgt_base)].strip(), words)
    return _replacement(subject, noun)


# ---------------------------------------------------------------------------------------
# Global edits
# ---------------------------------------------------------------------------------------

_MULTIWORD_TERMS = sorted(
    (t for t in STYLE_TERMS | WEATHER_TERMS | LIGHT_TERMS if " " in t), key=len, reverse=True
)
_GLOBAL_SINGLE = (STYLE_TERMS | WEATHER_TERMS | LIGHT_TERMS | COLOURS) - {"day", "light"}


def _mentions_global_term(text: str) -> bool:
    padded = f" {text} "
    if any(f" {term} " in padded for term in _MULTIWORD_TERMS):
        return True
    words = re.findall(r"[a-z0-9][a-z0-9'-]*", text)
    return any(w in _GLOBAL_SINGLE or w.rstrip("s") in STYLE_TERMS for w in words)


_STYLE_OF = re.compile(
    r"^(?:the |a |an )?style of .+$"
    r"|^(?:an? )?(?:[\w'-]+ ){0,3}(?:painting|drawing|sketch|artwork|illustration|photo|picture)s?"
    r" by .+$"
)


def _is_style_phrase(rest: str, *, style_of: bool) -> bool:
    """A bare style/scene request: "an oil painting", "van gogh style", "a snowy night".

    ``style_of`` allows "the style of …" / "a painting by …", which read as a style only
    after a connector or alone ("in the style of monet"), not as the object of a verb
    ("change the style of the sofa to modern").
    """
    if style_of and _STYLE_OF.match(rest):
        return True
    text = re.sub(r"^(?:an?|some) ", "", rest)
    if text in STYLE_TERMS or text in WEATHER_TERMS:
        return True
    tokens = text.split()
    if not tokens or len(tokens) > 6 or any(t in FUNCTION_WORDS for t in tokens):
        return False
    last = tokens[-1]
    if last.endswith("-style") or last in STYLE_HEADS or last.rstrip("s") in STYLE_HEADS:
        return True
    if last in SCENE_HEADS or last in WEATHER_TERMS:
        scene_words = WEATHER_TERMS | LIGHT_TERMS | SCENE_HEADS | STYLE_TERMS
        return all(t in scene_words for t in tokens)
    return False


_G_SCENE_SUBJECT = _rx(rf"{_GLOBAL_VERBS} <SCENE>(?: (?P<rest>.+))")
_G_SCENE_SHOULD = _rx(
    r"<SCENE>(?: should| must| needs to| has to| will| could| would|'s| is| was| becomes)"
    r" (?P<rest>.+)"
)
_G_ASPECT = _rx(
    r"(?:change|set|switch|convert|make|turn|alter|shift|transform) (?:the )?(?:art |painting |"
    r"image |photo |visual |overall )?(?:style|season|weather|time|time of day|lighting|"
    r"mood|atmosphere|era|time period|period|colou?r scheme|colou?r palette|colou?r grading|"
    r"tone|ambience|ambiance|filter)(?: of <SCENE>)?(?: (?:from (?P<from>.+?) )?(?:(?:in)?to|as|"
    r"into) (?P<rest>.+)| (?!(?:of|on|in|at|next|near|behind|above|below|under|beside|with|"
    r"from|for)\b)(?P<bare>.+))"
)
_G_SCENE_TO_SCENE = _rx(
    r"(?:turn|change|convert|transform|switch|make|go) (?:(?:the )?(?:scene |image |photo |"
    r"picture )?from )?(?P<a>[\w ]+?) (?:(?:in)?to|->) (?P<b>[\w ]+)"
)
_G_BARE = _rx(
    r"(?:(?:make|turn|change|convert|transform|render|redo|recreate|reimagine|restyle|stylize|"
    r"stylise|switch|show|depict|set|edit|modify|do|redraw|repaint)(?: (?:it|this|everything))?"
    r"(?: (?:look|appear))? )?(?P<connector>(?:like|into|to|as|in|as if (?:it was|it were|"
    r"painted by|drawn by|made by|done by)|in the style of) )?(?P<rest>.+)"
)
_G_ADD_EFFECT = _rx(
    r"(?:add|apply|use|put|overlay|give it|create|include)(?: an?| some| the)? (?P<rest>.+?)"
    r"(?: (?:to|on|over|onto|for|in) <SCENE>)?"
)
_WEAK_SCENE_REST = re.compile(
    r"^(?:into|to|in|look|looks|like|as|a|an|be|appear|seem|more|less|black|sepia|"
    r"grayscale|greyscale)\b"
)
_G_REST_BLOCKER = re.compile(
    r"^(?:on|at|next to|near|behind|above|below|under|beside|of|hanging|in the|inside|with|"
    r"from|off|out)\b"
)


def _rule_global(text: str) -> ParsedInstruction | None:
    for pattern in (_G_SCENE_SUBJECT, _G_SCENE_SHOULD):
        match = pattern.match(text)
        if match:
            rest = match.group("rest")
            scene = match.group("scene")
            if _G_REST_BLOCKER.match(rest):
                continue  # "turn the picture on the wall into a mirror": a picture object
            if scene in ("this", "that") and not _WEAK_SCENE_REST.match(rest):
                continue  # "make this cat bigger": a determiner, not the whole image
            if re.fullmatch(_SCENE_STRONG, scene):
                return _global()
            if _mentions_global_term(rest):
                return _global()
            raise _Unreadable(
                f"{scene!r} does not say which object to change, and {rest!r} is not a "
                "style, weather, season, time-of-day, lighting or colour change of the "
                "whole image"
            )
    aspect = _G_ASPECT.match(text)
    if aspect:
        return _global()
    pair = _G_SCENE_TO_SCENE.match(text)
    if pair and pair.group("a") in WEATHER_TERMS and pair.group("b") in WEATHER_TERMS:
        return _global()
    bare = _G_BARE.match(text)
    if bare:
        rest = bare.group("rest")
        if _is_style_phrase(rest, style_of=bool(bare.group("connector")) or rest == text):
            return _global()
    effect = _G_ADD_EFFECT.match(text)
    if effect:
        rest = effect.group("rest")
        tokens = rest.split()
        plain = bool(tokens) and not FUNCTION_WORDS.intersection(tokens)
        if _STYLE_OF.match(rest) or (plain and tokens[-1] in GLOBAL_ADDITION_HEADS):
            return _global()
    return None


# ---------------------------------------------------------------------------------------
# Removal
# ---------------------------------------------------------------------------------------

_REMOVE_VERBS = (
    r"(?:remove|delete|erase|eliminate|get rid of|take away|take out|take off|cut out|crop out|"
    r"clear away|wipe out|wipe away|wipe off|rub out|edit out|paint out|photoshop out|"
    r"ditch|discard|exclude|pull out|throw away|omit|hide|remove away)"
)
_REMOVE = (
    _rx(rf"{_REMOVE_VERBS} <X>(?: (?:from|off|off of|out of|away from) (?P<from>.+))?"),
    _rx(r"(?:take|get|cut|crop|wipe|edit|paint|rub|clear|pull|throw|photoshop) <X> "
        r"(?:away|out|off)(?: (?:of |from )?(?P<from>.+))?"),
    _rx(r"(?:make|let|have) <X> (?:disappear|vanish|go away|be gone|be removed|leave)"),
    _rx(r"(?:there should be|let there be|i want|show) no (?:more )?<Y>"),
    _rx(r"(?:(?:show|keep|leave|have|render|display|make) (?P<keep>.+?) )?without <Y>"),
    _rx(r"<X> (?:should|must|needs to|has to|will|shall) (?:be )?(?:removed|deleted|erased|gone|"
        r"disappear|vanish|go away|go|be taken away|be taken out|be eliminated)"),
    _rx(r"<X> (?:is|are) (?:gone|removed|deleted|erased)"),
)


_REMOVE_ALONE = re.compile(rf"^{_REMOVE_VERBS}$")


def _rule_remove(text: str) -> ParsedInstruction | None:
    if _REMOVE_ALONE.match(text):
        raise _Unreadable("it names a removal but not the object to remove")
    for pattern in _REMOVE:
        match = pattern.match(text)
        if match:
            groups = match.groupdict()
            source = groups.get("x") or groups.get("y") or ""
            return _removal(source)
    return None


# ---------------------------------------------------------------------------------------
# Explicit replacement verbs
# ---------------------------------------------------------------------------------------

_REPLACE_X_WITH_Y = (
    _rx(r"(?:replace|swap(?: out)?|switch(?: out)?|exchange|trade|substitute|change out) <X> "
        r"(?:with|by|for|to|into) <Y>"),
    _rx(r"<X> (?:should|must|needs to|has to|will|shall)? ?(?:be )?(?:replaced|swapped|substituted|"
        r"exchanged) (?:with|by|for|to|into) <Y>"),
    _rx(r"<X> (?:is|are) (?:replaced|swapped|substituted) (?:with|by|for) <Y>"),
    _rx(r"<X> ?(?:->|=>) ?<Y>"),
)
_SUBSTITUTE_Y_FOR_X = _rx(r"substitute <Z> for <Y>")
_INSTEAD_OF = (
    _rx(r"(?:(?:put|place|add|draw|insert|have|show|make|use|paint) )?<Y> "
        r"(?:instead of|in place of|in the place of|rather than) <Z>"),
    _rx(r"(?:instead of|in place of|rather than) (?P<z>[^,]+), (?:(?:put|place|add|draw|insert|"
        r"have|show|make it|use|paint|there should be) )?<Y>"),
    _rx(r"(?:instead of|in place of|rather than) <Z> (?:put|place|add|draw|insert|have|show|"
        r"make it|use|paint|there should be) <Y>"),
    _rx(r"(?:put|place|add|draw|insert) <Y> where <Z> (?:is|was|are|were|used to be|stands|sits)"),
)
_REPLACE_ALONE = re.compile(r"^(?:replace|swap|substitute|exchange|switch) .+$")


def _rule_replace(text: str) -> ParsedInstruction | None:
    match = _SUBSTITUTE_Y_FOR_X.match(text)
    if match:
        return _replacement(match.group("y"), match.group("z"))
    for pattern in _INSTEAD_OF:
        match = pattern.match(text)
        if match:
            return _replacement(match.group("z"), match.group("y"))
    for pattern in _REPLACE_X_WITH_Y:
        match = pattern.match(text)
        if match:
            return _noun_replacement(match.group("x"), match.group("y"))
    if _REPLACE_ALONE.match(text):
        raise _Unreadable("it says what to replace but not what to put in its place")
    return None


# ---------------------------------------------------------------------------------------
# "change the <attribute> of X to Y", colour verbs, size verbs
# ---------------------------------------------------------------------------------------

ATTRIBUTE_KINDS = {
    "color": "change color",
    "colour": "change color",
    "paint": "change color",
    "paint color": "change color",
    "paint colour": "change color",
    "texture": "change texture",
    "material": "change texture",
    "fabric": "change texture",
    "finish": "change texture",
    "surface": "change texture",
    "pattern": "change texture",
    "print": "change texture",
    "size": "change size",
    "expression": "other",
    "facial expression": "other",
    "pose": "other",
    "shape": "other",
    "mood": "other",
    "emotion": "other",
    "style": "other",
    "design": "other",
    "age": "other",
}
_ATTR = rf"(?P<attr>{_alt(ATTRIBUTE_KINDS)})"
_ATTRIBUTE_FRAMES = (
    _rx(rf"(?:change|set|make|turn|switch|alter|adjust|modify) (?:the )?{_ATTR} of <X>"
        r"(?: from (?P<from>.+?))? (?:(?:in)?to|into|as) <Y>"),
    _rx(rf"(?:change|set|make|turn|switch|alter|adjust|modify) <X>'s? {_ATTR}"
        r"(?: from (?P<from>.+?))? (?:(?:in)?to|into|as) <Y>"),
    _rx(rf"(?:the )?{_ATTR} of <X> (?:should|must|needs to|has to|will) (?:be|become) <Y>"),
    _rx(rf"<X>'s? {_ATTR} (?:should|must|needs to|has to|will) (?:be|become) <Y>"),
    _rx(rf"make (?:the )?{_ATTR} of <X> <Y>"),
)
_ATTR_SUFFIX = re.compile(r" (?:colou?r|texture|material|pattern|finish|one)$")


def _rule_attribute_of(text: str) -> ParsedInstruction | None:
    for pattern in _ATTRIBUTE_FRAMES:
        match = pattern.match(text)
        if not match:
            continue
        kind = ATTRIBUTE_KINDS[match.group("attr")]
        value = _ATTR_SUFFIX.sub("", match.group("y").strip(_EDGE_PUNCT))
        value = _LEADING_DET.sub("", value)
        if kind == "change size":
            reading = _classify(match.group("x"), value, frame="bare")
            if reading is None or reading.edit_type != "change size":
                raise _Unreadable(f"{value!r} is not a size (bigger, smaller, the same size)")
            return reading
        strip = {"change color": COLOURS, "change texture": MATERIALS}.get(kind, frozenset())
        return _attribute_change(kind, match.group("x"), value, strip)
    return None


_COLOUR_VERBS = r"(?:paint|repaint|colou?r|recolou?r|dye|tint|spray(?: paint)?|spray-paint|shade)"
_COLOUR_TAIL = r"(?:colou?r|paint|paint job|shade|hue|tint|tone|coat|finish)"
_TEXTURE_TAIL = r"(?:texture|material|finish|surface|look|pattern|print|coat)"
# Verb first: the subject is found by trying splits ("colour the sky pink": "sky pink" is
# itself a colour, so the split must not stop at "the").
_COLOUR_VERB_FRAMES = (
    _rx(rf"{_COLOUR_VERBS} <X>(?: (?:in|with|to|into|using|as))? (?:an? )?<C>(?: .+)?"),
    _rx(rf"(?:give|paint) <X> (?:an?|the) <C> {_COLOUR_TAIL}"),
    _rx(rf"(?:give|cover) <X> (?:in |with )?(?:an?|the) <M> {_TEXTURE_TAIL}"),
)
_HAVE = r"(?:should|must|needs to|has to) have"
_HAVE_ATTRIBUTE_FRAMES = (
    _rx(rf"<X> {_HAVE} (?P<y>(?:an?|the) <C> {_COLOUR_TAIL})"),
    _rx(rf"<X> {_HAVE} (?P<y>(?:an?|the) <M> {_TEXTURE_TAIL})"),
    _rx(rf"(?:make|let|have) <X> have (?P<y>(?:an?|the) <C> {_COLOUR_TAIL})"),
    _rx(rf"(?:make|let|have) <X> have (?P<y>(?:an?|the) <M> {_TEXTURE_TAIL})"),
)
_COLOUR_TEXTURE = ("change color", "change texture")


def _rule_colour_texture_verbs(text: str) -> ParsedInstruction | None:
    for pattern in _COLOUR_VERB_FRAMES:
        if pattern.match(text):
            rest = text.split(" ", 1)[1]
            return _split_subject_predicate(rest, kinds=_COLOUR_TEXTURE)
    for pattern in _HAVE_ATTRIBUTE_FRAMES:
        match = pattern.match(text)
        if match:
            reading = _classify(match.group("x"), match.group("y"), frame="be", allow_noun=False)
            if reading is not None and reading.edit_type in _COLOUR_TEXTURE:
                return reading
    return None


_GROW_VERBS = (
    r"(?:enlarge|magnify|expand|upscale|scale up|blow up|supersize|maximi[sz]e|"
    r"increase (?:the )?size of|double (?:the )?size of|triple (?:the )?size of)"
)
_SHRINK_VERBS = (
    r"(?:shrink|downsize|miniaturi[sz]e|minimi[sz]e|scale down|reduce (?:the )?size of|"
    r"decrease (?:the )?size of|halve (?:the )?size of|lessen (?:the )?size of)"
)
_SIZE_TAIL = r"(?: (?:by .+|a bit|a little|a little bit|slightly|greatly|significantly|a lot|"
_SIZE_TAIL += r"considerably|twice|two times|\d+ times|\d+x|\d+%|\d+ percent))?"
_SIZE_FRAMES = (
    (_rx(rf"{_GROW_VERBS} <X>{_SIZE_TAIL}"), "bigger"),
    (_rx(rf"(?:scale|blow|size) <X> up{_SIZE_TAIL}"), "bigger"),
    (_rx(rf"increase <X>'s? size{_SIZE_TAIL}"), "bigger"),
    (_rx(rf"{_SHRINK_VERBS} <X>{_SIZE_TAIL}"), "smaller"),
    (_rx(rf"(?:scale|size) <X> down{_SIZE_TAIL}"), "smaller"),
    (_rx(rf"(?:reduce|decrease) <X>'s? size{_SIZE_TAIL}"), "smaller"),
    (_rx(r"(?:keep|leave) (?:the )?size of <X> (?:the )?(?:same|unchanged)"), "unchanged"),
    (_rx(r"(?:keep|leave) <X> (?:at |in )?(?:the )?same size"), "unchanged"),
    (_rx(r"<X> (?:should|must|needs to|has to|will) (?:stay|remain|keep|be) (?:at |in )?(?:the )?"
         r"same size"), "unchanged"),
)


_COMPARATIVE_BIGGER = frozenset("bigger larger taller longer wider thicker huger".split())
_COMPARATIVE_SMALLER = frozenset("smaller shorter tinier thinner narrower slimmer".split())
# "give the bear bigger claws" (a reference example): the claws change size.
_GIVE_COMPARATIVE = _rx(
    rf"give <X> (?P<cmp>{_alt(_COMPARATIVE_BIGGER | _COMPARATIVE_SMALLER)}) <Y>"
)


def _rule_size_verbs(text: str) -> ParsedInstruction | None:
    for pattern, relation in _SIZE_FRAMES:
        match = pattern.match(text)
        if match:
            return _size_change(match.group("x"), relation)
    match = _GIVE_COMPARATIVE.match(text)
    if match:
        bigger = match.group("cmp") in _COMPARATIVE_BIGGER
        return _size_change(match.group("y"), "bigger" if bigger else "smaller")
    return None


# ---------------------------------------------------------------------------------------
# Additions
# ---------------------------------------------------------------------------------------

_SPATIAL_RELATION = dict(SPATIAL)
# One pass over the text: a spatial phrase starting a word, longest alternative first.
_SPATIAL_RE = re.compile(rf"(?<= )(?P<phrase>{_alt(_SPATIAL_RELATION)}) ")
_TRAILING_POSTURE = re.compile(
    rf"^(?P<obj>.+?)(?: (?:that|which|who) (?:is|are))? {_alt(POSTURE_VERBS)}(?: (?:down|up))?$"
)


def _split_spatial(text: str) -> tuple[str, str | None, str]:
    """Split "<object> <spatial phrase> <anchor>" → (object, anchor or None, relation).

    The first split whose anchor starts with a definite determiner wins ("a man in a red
    shirt next to the car" → anchor "the car"); else the first split at all.
    """
    first: tuple[str, str, str] | None = None
    for match in _SPATIAL_RE.finditer(text):
        phrase = match.group("phrase")
        obj = text[: match.start()].strip()
        anchor = text[match.end():].strip()
        if not obj or not anchor:
            continue
        relation = _SPATIAL_RELATION[phrase]
        if phrase in _SURFACE_PREPOSITIONS:
            head = _LEADING_DET.sub("", anchor).partition(" of ")[0]
            if head in SURFACES:
                relation = "inside"
        candidate = (obj, anchor, relation)
        if _DEFINITE_START.match(anchor):
            return candidate
        if first is None:
            first = candidate
    if first is not None:
        return first
    return text, None, "none"


def _strip_posture(obj: str) -> str:
    match = _TRAILING_POSTURE.match(obj)
    return match.group("obj") if match else obj


def _spatial_addition(text: str) -> ParsedInstruction:
    obj, anchor, relation = _split_spatial(text)
    return _addition(_strip_posture(obj), anchor, relation)


_ADD_VERBS = (
    r"(?:add|put|place|insert|draw|paint|include|introduce|attach|stick|hang|position|drop|show|"
    r"plant|spawn|create|generate|display|depict|bring in|bring|make there be|sketch|pop|"
    r"superimpose|overlay|throw in|toss in|stick in)"
)
_QUANTITY = (
    r"(?:an?|some|another|one|two|three|four|five|six|several|many|a few|a couple of|"
    r"a pair of|lots of|\d+)"
)
_ADD_FRAMES = (
    _rx(rf"{_ADD_VERBS}(?: (?:on|in|up|down|out))? (?P<y>{_QUANTITY} .+)"),
    _rx(rf"{_ADD_VERBS} <Y>"),
    _rx(r"(?:let there be|there should be|there must be|there needs to be|there is|there are|"
        r"there's|have there be|make there be|what if there (?:was|were|is|are)) <Y>"),
    _rx(rf"(?:i want|i'd like|i would like|we need|we want) (?P<y>{_QUANTITY} .+)"),
)
# "on the table, add a toy": the place comes first.
_ADD_PLACE_FIRST = _rx(
    r"(?P<place>(?:on|in|at|next to|beside|under|above|on top of|to the left of|"
    r"to the right of|inside|behind|near) .+?),? (?:add|put|place|insert|draw|"
    r"there should be|let there be|there is|there are) <Z>"
)
_WEAR_FRAMES = (
    _rx(r"(?:have|make|let|get) <X> (?:be )?(?:wear|wearing|hold|holding|carry|carrying|put on|"
        r"have|has|own|eat|eating|ride|riding) <Y>"),
    _rx(r"<X> (?:should|must|needs to|has to|will|could) (?:wear|hold|carry|have|put on|"
        r"be wearing|be holding|be carrying) <Y>"),
    _rx(r"what if <X> (?:had|has|have|wore|wears|was wearing|were wearing|was holding|were "
        r"holding|held|carried) <Y>"),
    _rx(r"dress <X> (?:in|with) <Y>"),
    _rx(rf"give <X> (?P<y>{_QUANTITY} .+)"),
    _rx(rf"give (?P<x>(?:{_DET} )?[\w'-]+(?:'s? [\w'-]+)?) <Y>"),
    _rx(r"(?P<x>(?:the|his|her|its|their|my|your|our|this|that) .+?) "
        r"(?:wearing|holding|carrying) <Y>"),
)
_LET_INDEFINITE = _rx(rf"(?:let|have|make|watch|see) (?P<y>{_QUANTITY} .+)")
_ADD_ALONE = re.compile(rf"^{_ADD_VERBS}$")


def _rule_add(text: str) -> ParsedInstruction | None:
    for pattern in _WEAR_FRAMES:
        match = pattern.match(text)
        if match:
            return _addition(match.group("y"), match.group("x"), "none")
    match = _ADD_PLACE_FIRST.match(text)
    if match:
        place = match.group("place")
        _, anchor, relation = _split_spatial("x " + place)
        return _addition(_strip_posture(match.group("z")), anchor, relation)
    for pattern in _ADD_FRAMES:
        match = pattern.match(text)
        if match:
            return _spatial_addition(match.group("y"))
    match = _LET_INDEFINITE.match(text)
    if match:
        obj, anchor, relation = _split_spatial(match.group("y"))
        stripped = _strip_posture(obj)
        # "let a horse stand on the grass", "have a fire in the fireplace": a new object
        # with a posture verb or a place.
        if stripped != obj or anchor is not None:
            return _addition(stripped, anchor, relation)
    if _ADD_ALONE.match(text):
        raise _Unreadable("it names an addition but not the object to add")
    return None


# ---------------------------------------------------------------------------------------
# Generic transformation frames
# ---------------------------------------------------------------------------------------

_INTO_FRAMES = (
    _rx(r"(?:turn|transform|convert|change|morph|alter|switch|make|evolve|modify) <X> "
        r"(?:into|to|for) (?:an? |the |some )?<Y>"),
    _rx(r"<X> (?:should|must|needs to|has to|will|shall)? ?(?:be )?(?:changed|turned|transformed|"
        r"converted|switched|morphed) (?:into|to) (?:an? |the |some )?<Y>"),
)
_BE_FRAMES = (
    _rx(r"(?:let|have|make|get) <X> (?:be|become|turn into|look like|appear as) <Y>"),
    _rx(r"<X> (?:should|must|needs to|has to|will|shall|could|would|is going to|ought to) "
        r"(?:be|become|turn into|change into|look like|look|appear|seem|get|turn) <Y>"),
    _rx(r"<X> (?:becomes|turns into|is now|looks like) <Y>"),
    _rx(r"what if <X> (?:was|were|is|became|turned into|looked like) <Y>"),
    _rx(r"i want <X> to (?:be|become|look like|look) <Y>"),
)
_BARE_FRAME = re.compile(r"^(?:make|turn|render|get|paint|let|have) (?P<rest>.+)$")
_SHOULD_ACTION = _rx(r"<X> (?:should|must|needs to|has to|will) <Y>")
# Bounds on the split search: an attribute is a few words, a new noun phrase a dozen.
_MAX_PREDICATE_WORDS = 8
_MAX_NOUN_WORDS = 12
_NOUN_START = re.compile(rf"(?:{_DET}|like|into|as|look like|appear as) ")


_FROM_TO = _rx(
    r"(?:change|turn|transform|convert|switch|alter|make) <X> from (?:an? |the |some )?<Z> "
    r"(?:(?:in)?to|into) (?:an? |the |some )?<Y>"
)
_MOVE = _rx(
    r"(?:move|shift|relocate|reposition|drag|push|slide) <X> (?:to|towards|toward|over to)"
    r"(?: the)? (?P<dir>left|right|top|up|upwards|bottom|down|downwards)(?: side| edge)?"
    r"(?: of the (?:image|photo|picture|frame|scene))?"
)
_MOVE_ANY = re.compile(r"^(?:move|shift|relocate|reposition|drag|push|slide) .+$")
_DIRECTIONS = {
    "left": "left",
    "right": "right",
    "top": "above",
    "up": "above",
    "upwards": "above",
    "bottom": "below",
    "down": "below",
    "downwards": "below",
}


def _rule_move(text: str) -> ParsedInstruction | None:
    match = _MOVE.match(text)
    if match:
        src = _phrase(match.group("x"), "object to move")
        return _result(
            source_object=src,
            target_object=src,
            edit_type="other",
            position_relation=_DIRECTIONS[match.group("dir")],
        )
    if _MOVE_ANY.match(text):
        raise _Unreadable(
            "it moves an object somewhere other than left/right/up/down in the image, "
            "which the rules parser does not read"
        )
    return None


def _rule_transform(text: str) -> ParsedInstruction | None:
    match = _FROM_TO.match(text)
    if match:
        reading = _classify(match.group("x"), match.group("y"), frame="into", allow_noun=False)
        if reading is not None:
            return reading  # "change the cat from black to white": an attribute of the cat
        return _replacement(match.group("z"), match.group("y"))
    for pattern in _INTO_FRAMES:
        match = pattern.match(text)
        if match:
            reading = _classify(match.group("x"), match.group("y"), frame="into")
            if reading is not None:
                return reading
    for pattern in _BE_FRAMES:
        match = pattern.match(text)
        if match:
            reading = _classify(match.group("x"), match.group("y"), frame="be")
            if reading is not None:
                return reading
    match = _SHOULD_ACTION.match(text)
    if match and _PRED_ACTION.match(match.group("y")):
        return _classify(match.group("x"), match.group("y"), frame="be")
    bare = _BARE_FRAME.match(text)
    if bare:
        return _split_subject_predicate(bare.group("rest"))
    return None


def _split_subject_predicate(
    rest: str, kinds: tuple[str, ...] | None = None
) -> ParsedInstruction | None:
    """"make <X> <Y>": the shortest subject that leaves an attribute predicate, else the
    longest subject that leaves a noun with an article ("make the cat a dog").

    ``kinds`` limits the edit types accepted (``None``: any). A split whose subject is
    no phrase ("the" in "make the sky pink", where "sky pink" is a colour) is skipped.
    """
    words = rest.split(" ")
    first_error: _Unreadable | None = None
    attribute_splits = range(max(1, len(words) - _MAX_PREDICATE_WORDS), len(words))
    noun_splits = range(len(words) - 1, max(0, len(words) - 1 - _MAX_NOUN_WORDS), -1)
    if kinds is not None:
        noun_splits = range(0)
    for splits, nouns in ((attribute_splits, False), (noun_splits, True)):
        for k in splits:
            subject, predicate = " ".join(words[:k]), " ".join(words[k:])
            if words[k - 1] in FUNCTION_WORDS or words[k - 1] in DETERMINERS:
                continue  # "a fire in" is no subject
            if nouns and _NOUN_START.match(predicate) is None:
                continue
            try:
                reading = _classify(subject, predicate, frame="bare", allow_noun=nouns)
            except _Unreadable as e:
                first_error = first_error or e
                continue
            if reading is not None and (kinds is None or reading.edit_type in kinds):
                return reading
    if first_error is not None:
        raise first_error
    return None


# ---------------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------------

_Rule = Callable[[str], "ParsedInstruction | None"]
_LOCAL_RULES: tuple[_Rule, ...] = (
    _rule_remove,
    _rule_replace,
    _rule_attribute_of,
    _rule_colour_texture_verbs,
    _rule_size_verbs,
    _rule_add,
    _rule_move,
    _rule_transform,
)


def _quote(instruction: str, limit: int = 120) -> str:
    if len(instruction) <= limit:
        return repr(instruction)
    return repr(instruction[:limit]) + f"… ({len(instruction)} characters)"


class RulesParser:
    """Offline deterministic rule-based parser (see the module docstring for the rules)."""

    name = "rules"
    prompt_version = RULES_VERSION

    def identity(self) -> dict[str, Any]:
        return {"parser": self.name, "version": self.prompt_version}

    def parse(self, instruction: str) -> ParsedInstruction:
        if not isinstance(instruction, str):
            raise TypeError(f"instruction must be a string, got {type(instruction).__name__}")
        if len(instruction) > MAX_INSTRUCTION_CHARS:
            raise ParseError(
                f"cannot parse instruction {_quote(instruction)}: too long "
                f"({len(instruction)} characters, at most {MAX_INSTRUCTION_CHARS})"
            )
        try:
            return self._parse(instruction)
        except _Unreadable as e:
            raise ParseError(f"cannot parse instruction {_quote(instruction)}: {e}") from e

    def _parse(self, instruction: str) -> ParsedInstruction:
        text = _normalise(instruction)
        reading = _rule_global(text)
        local_text = _SCENE_TAIL.sub("", text)
        if reading is None and local_text != text:
            reading = _rule_global(local_text)
        for rule in _LOCAL_RULES:
            if reading is not None:
                break
            reading = rule(local_text)
        if reading is None:
            raise _Unreadable(
                "no rule reads it (the rules parser knows add, remove, replace, colour, "
                "texture, size, simple attribute and whole-image style edits; configure an "
                "LLM parser for free-form instructions)"
            )
        logger.debug("rules parser read %r as %s", text, reading.to_dict())
        return reading


PARSERS.add("rules", RulesParser, "offline deterministic rule-based parser")
