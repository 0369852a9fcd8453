"""Reads free-text complaints and triage notes into clinical concept mentions.

Nurses write "CP/SOB x2h, denies N/V, hx CVA". The analyzer tokenizes, expands
abbreviations, repairs spelling, finds concept terms (longest match first), and
marks each mention negated ("denies"), historical ("hx of") or chronic ("at
baseline") using NegEx-style scopes that end at clause boundaries. Every table
it uses is in data/lexicon.toml and data/concepts.toml; this module holds only
the mechanics.
"""

from __future__ import annotations

import bisect
import enum
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import TypeAlias

from server.esi.tables import Concept, Lexicon, NumericFinding

# A word may carry internal slashes or ampersands ("n/v/d", "s/p", "a&o") and a
# trailing slash ("w/"); numbers may have decimals. Punctuation that shapes
# scope is kept as its own token.
_TOKEN = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?(?:[/&][a-z0-9]+)*/?|[.,;:!?()+\n]|(?<=\s)-(?=\s)")
_PUNCTUATION = frozenset(".,;:!?()+\n-")
# A colon joins ("PMH: HTN, DM") rather than ends a clause.
_CLAUSE_END = frozenset(".;!\n")
# Scopes reach across a few words ("denies any recent chest pain") but no further.
_HYPHEN_IN_WORD = re.compile(r"(?<=[a-z0-9])-(?=[a-z0-9])")
_GAP_BEFORE_FIRST = 3
_GAP_BETWEEN = 2
_AFTER_WINDOW = 2
_FUZZY_MIN_LENGTH = 6
# Out of order, a term's words may have one other word between them ("Pain, abdominal, lower").
_UNORDERED_GAP = 1
# "left" and "right" become this word: no phrase sees it, but a focal deficit needs it.
_SIDE = "<side>"
# Chief complaints repeat ("chest pain", "abd pain", "SOB"): short texts are
# read once and remembered, within a bound. Long notes rarely repeat.
REMEMBERED_TEXT_CHARS = 256
_REMEMBERED_TEXTS = 4096


class Kind(enum.Enum):
    """What a matched phrase is."""

    CONCEPT = "concept"
    NEGATION_BEFORE = "negation_before"
    NEGATION_AFTER = "negation_after"
    HISTORICAL = "historical"
    CHRONIC_BEFORE = "chronic_before"
    CHRONIC_AFTER = "chronic_after"
    PSEUDO = "pseudo"
    TERMINATOR = "terminator"
    CONNECTOR = "connector"
    NUMERIC = "numeric"
    WORD = "word"
    # "left" or "right": invisible to phrases, but a focal deficit needs it.
    SIDE = "side"


# A normalized word and the span of source text it came from: (word, start, end).
# A plain tuple: the analyzer makes one per word of every note.
Token: TypeAlias = tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class Mention:
    """One mention of a concept in one input field."""

    concept: str
    input_field: str
    quote: str
    negated: bool = False
    historical: bool = False
    chronic: bool = False


@dataclass(slots=True)
class _Item:
    kind: Kind
    payload: str
    start: int
    end: int
    # The canonical words a one-word match was made of (what unordered terms may reuse).
    word: str = ""
    negated: bool = False
    historical: bool = False
    chronic: bool = False


def singular(word: str) -> str:
    """Folds simple English plurals so that "seizures" finds "seizure"."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("sses"):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _osa_distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance (edits with adjacent transpositions), capped."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return previous[-1]


def _deletes(word: str, depth: int) -> set[str]:
    found = {word}
    frontier = {word}
    for _ in range(depth):
        frontier = {w[:i] + w[i + 1 :] for w in frontier for i in range(len(w))}
        found |= frontier
    return found


class SpellingRepair:
    """Repairs misspelled clinical words against the lexicon's own vocabulary.

    Only words the analyzer does not know are touched, only at six letters or
    more, and only to a single nearest clinical word (one edit, two from ten
    letters); common English words are known, so "turning" never becomes
    "burning". Candidates come from a symmetric-delete index (SymSpell).
    """

    def __init__(self, vocabulary: Iterable[str], known: Iterable[str]) -> None:
        vocabulary = frozenset(vocabulary)
        self._known = frozenset(known) | vocabulary
        self._index: dict[str, set[str]] = {}
        for word in vocabulary:
            if len(word) >= _FUZZY_MIN_LENGTH - 1 and word.isalpha():
                # Two deletions are needed only to meet inputs of ten letters or more.
                for deleted in _deletes(word, 2 if len(word) >= 8 else 1):
                    self._index.setdefault(deleted, set()).add(word)
        self.repair = lru_cache(maxsize=65536)(self._repair)

    def _repair(self, word: str) -> str:
        if word in self._known or len(word) < _FUZZY_MIN_LENGTH or not word.isalpha():
            return word
        limit = 2 if len(word) >= 10 else 1
        candidates = set()
        for deleted in _deletes(word, limit):
            candidates |= self._index.get(deleted, set())
        scored = sorted((_osa_distance(word, c, limit), c) for c in candidates)
        best = [c for d, c in scored if d <= limit and d == scored[0][0]] if scored else []
        return best[0] if len(best) == 1 else word


class TextAnalyzer:
    """Finds concept mentions, with negation, history and chronicity, in free text."""

    def __init__(self, lexicon: Lexicon, concepts: Iterable[Concept]) -> None:
        self._abbreviations = {tuple(k.split()): tuple(v.split()) for k, v in lexicon.abbreviations.items()}
        self._abbreviation_width = max(len(k) for k in self._abbreviations)
        self._abbreviation_words = frozenset(k[0] for k in self._abbreviations if len(k) == 1)
        self._multiword_starts = frozenset(k[0] for k in self._abbreviations if len(k) > 1)
        # Free text has an open vocabulary: the caches are bounded.
        self._pieces = lru_cache(maxsize=65536)(self._split)
        self._canonical = lru_cache(maxsize=65536)(partial(self._canonicalize, repair=False))
        self._canonical_repaired = lru_cache(maxsize=65536)(partial(self._canonicalize, repair=True))
        self._remembered = lru_cache(maxsize=_REMEMBERED_TEXTS)(self._analyze)
        self._spelling = lexicon.spelling
        self._transparent = frozenset(lexicon.transparent_words)
        self._sides = frozenset(lexicon.side_words)
        self._fillers = frozenset(lexicon.filler_words)
        self._phrases: dict[str, list[tuple[tuple[str, ...], Kind, str]]] = {}
        groups: list[tuple[Kind, Iterable[tuple[str, str]]]] = [
            (Kind.NEGATION_BEFORE, ((p, "") for p in lexicon.negation_before)),
            (Kind.NEGATION_AFTER, ((p, "") for p in lexicon.negation_after)),
            (Kind.HISTORICAL, ((p, "") for p in lexicon.historical_before)),
            (Kind.CHRONIC_BEFORE, ((p, "") for p in lexicon.chronic_before)),
            (Kind.CHRONIC_AFTER, ((p, "") for p in lexicon.chronic_after)),
            (Kind.PSEUDO, ((p, "") for p in lexicon.pseudo_negation)),
            (Kind.TERMINATOR, ((p, "") for p in lexicon.scope_terminators)),
            (Kind.CONNECTOR, ((p, "") for p in lexicon.list_connectors)),
        ]
        # Numbers after a label ("sugar 28"): the label is a phrase, its findings a group.
        self._numeric: dict[str, list[NumericFinding]] = {}
        for finding in lexicon.numeric:
            for label in finding.labels:
                key = " ".join(word for word, _, _ in self._normalize(label, repair=False))
                self._numeric.setdefault(key, []).append(finding)
        groups.append((Kind.NUMERIC, ((key, key) for key in self._numeric)))
        vocabulary: set[str] = set()
        for kind, phrases in groups:
            for phrase, payload in phrases:
                self._add_phrase(phrase, kind, payload, vocabulary)
        unordered: list[_Unordered] = []
        for concept in concepts:
            for term in concept.terms:
                words = self._add_phrase(term, Kind.CONCEPT, concept.id, vocabulary)
                content = frozenset(words) - self._fillers
                if len(content) >= 2:
                    unordered.append(_Unordered(content, concept.id, len(content), _UNORDERED_GAP))
            for term in concept.lateral_terms:
                words = tuple(word for word, _, _ in self._normalize(term, repair=False) if word != _SIDE)
                vocabulary.update(words)
                content = frozenset(words) - self._fillers | {_SIDE}
                unordered.append(_Unordered(content, concept.id, len(content), 0))
        self._unordered = _index_by_rarest_word(unordered)
        for expansion in self._abbreviations.values():
            vocabulary.update(expansion)
        for phrases_at in self._phrases.values():
            phrases_at.sort(key=lambda p: -len(p[0]))
        known = {singular(w) for w in lexicon.common_words} | set(self._spelling.values())
        self._repair = SpellingRepair(vocabulary, known)

    def _add_phrase(self, phrase: str, kind: Kind, payload: str, vocabulary: set[str]) -> tuple[str, ...]:
        """Adds a phrase to the table and returns its canonical words."""
        # A side is invisible to phrases, in the tables as in the text.
        words = tuple(word for word, _, _ in self._normalize(phrase, repair=False) if word != _SIDE)
        if not words:
            raise ValueError(f"phrase {phrase!r} has no words")
        entries = self._phrases.setdefault(words[0], [])
        for existing, existing_kind, existing_payload in entries:
            if existing != words:
                continue
            if (existing_kind, existing_payload) == (kind, payload):
                return words
            # After normalization two entries can collide ("rules out" is "rule
            # out"); the tables must say which one they mean.
            first = existing_payload or existing_kind.value
            raise ValueError(f"{phrase!r} ({' '.join(words)}) is both {first} and {payload or kind.value}")
        entries.append((words, kind, payload))
        vocabulary.update(w for w in words if w not in _PUNCTUATION)
        return words

    def analyze(self, text: str, input_field: str) -> tuple[Mention, ...]:
        """Returns every concept mention in text, in order."""
        if not text:
            return ()
        if len(text) <= REMEMBERED_TEXT_CHARS:
            return self._remembered(text, input_field)
        return self._analyze(text, input_field)

    def _analyze(self, text: str, input_field: str) -> tuple[Mention, ...]:
        items = self._items(self._normalize(text, repair=True))
        _apply_scopes(items)
        return tuple(
            Mention(
                concept=item.payload,
                input_field=input_field,
                quote=text[item.start : item.end],
                negated=item.negated,
                historical=item.historical,
                chronic=item.chronic,
            )
            for item in items
            if item.kind is Kind.CONCEPT
        )

    # Normalization: source text -> tokens of canonical words.

    def _normalize(self, text: str, *, repair: bool) -> list[Token]:
        folded, origin = _fold(text)
        canonical = self._canonical_repaired if repair else self._canonical
        pieces: list[tuple[str, int, int]] = []
        for match in _TOKEN.finditer(folded):
            base = match.start()
            for piece, first, last in self._pieces(match.group()):
                pieces.append((piece, origin[base + first], origin[base + last - 1] + 1))
        out: list[Token] = []
        i = 0
        while i < len(pieces):
            word, start, end = pieces[i]
            if word in self._multiword_starts:
                width, expansion = self._multiword(pieces, i)
                end = pieces[i + width - 1][2]
                for part in expansion:
                    out.extend((w, start, end) for w in canonical(part))
                i += width
            else:
                out.extend((w, start, end) for w in canonical(word))
                i += 1
        return out

    def _multiword(self, pieces: list[tuple[str, int, int]], i: int) -> tuple[int, tuple[str, ...]]:
        """The longest multi-word abbreviation at i ("decreased loc"), or the word itself."""
        for width in range(min(self._abbreviation_width, len(pieces) - i), 1, -1):
            expansion = self._abbreviations.get(tuple(p[0] for p in pieces[i : i + width]))
            if expansion is not None:
                return width, expansion
        return 1, (pieces[i][0],)

    def _split(self, token: str) -> tuple[tuple[str, int, int], ...]:
        """Splits "cp/sob" into "cp", "/", "sob" (with offsets) but keeps "n/v/d" and "s/p" whole."""
        text = token if token in self._abbreviation_words else token.rstrip("/")
        if "/" not in text or text in self._abbreviation_words:
            return ((text, 0, len(text)),)
        parts = text.split("/")
        offsets = []
        position = 0
        for part in parts:
            offsets.append(position)
            position += len(part) + 1
        pieces: list[tuple[str, int, int]] = []
        i = 0
        while i < len(parts):
            j = len(parts)
            while j > i + 1 and "/".join(parts[i:j]) not in self._abbreviation_words:
                j -= 1
            joined = "/".join(parts[i:j])
            if joined:
                pieces.append((joined, offsets[i], offsets[i] + len(joined)))
            if j < len(parts):
                pieces.append(("/", offsets[j] - 1, offsets[j]))
            i = j
        return tuple(pieces)

    def _canonicalize(self, word: str, repair: bool) -> tuple[str, ...]:
        """A word's canonical words: abbreviation expanded, spelling and plural normalized.

        Transparent words ("left", "the") vanish here, so that terms and text agree.
        """
        out = []
        for part in self._abbreviations.get((word,), (word,)):
            part = singular(self._spelling.get(part, part))
            if repair:
                part = self._repair.repair(self._spelling.get(part, part))
            if part in self._sides:
                out.append(_SIDE)
            elif part not in self._transparent:
                out.append(part)
        return tuple(out)

    # Matching: tokens -> items (phrases, words, punctuation).

    def _read_number(self, label: str, words: list[str], after: int) -> tuple[str, int]:
        """The concept a number after a label means, and where the reading ends ("" if none)."""
        position = after
        while position < len(words) and position - after < 2 and words[position] in _NUMBER_JOINERS:
            position += 1
        if position >= len(words) or not _NUMBER.match(words[position]):
            return "", after
        value = float(words[position])
        if position + 1 < len(words) and words[position + 1].startswith("mmol"):
            value *= _MG_PER_DL_PER_MMOL_PER_L
        for finding in self._numeric[label]:
            if finding.holds(value):
                return finding.concept, position + 1
        return "", position + 1

    def _items(self, tokens: list[Token]) -> list[_Item]:
        sides = [_Item(Kind.SIDE, _SIDE, start, end) for word, start, end in tokens if word == _SIDE]
        if sides:
            tokens = [token for token in tokens if token[0] != _SIDE]
        items: list[_Item] = []
        words = [word for word, _, _ in tokens]
        i = 0
        while i < len(tokens):
            for phrase, kind, payload in self._phrases.get(words[i], ()):
                if tuple(words[i : i + len(phrase)]) == phrase:
                    end = i + len(phrase)
                    if kind is Kind.NUMERIC:
                        concept, end = self._read_number(payload, words, end)
                        items.append(
                            _Item(Kind.CONCEPT, concept, tokens[i][1], tokens[end - 1][2])
                            if concept
                            else _Item(Kind.WORD, payload, tokens[i][1], tokens[end - 1][2])
                        )
                    else:
                        word = phrase[0] if len(phrase) == 1 else ""
                        items.append(_Item(kind, payload, tokens[i][1], tokens[end - 1][2], word))
                    i = end
                    break
            else:
                word = words[i]
                if word in _CLAUSE_END:
                    kind = Kind.TERMINATOR
                elif word in _PUNCTUATION or word == "/":
                    kind = Kind.CONNECTOR
                else:
                    kind = Kind.WORD
                items.append(_Item(kind, word, tokens[i][1], tokens[i][2], word))
                i += 1
        if sides:
            items = sorted([*items, *sides], key=lambda item: item.start)
        return self._compose(items)

    def _compose(self, items: list[_Item]) -> list[_Item]:
        """Finds terms written out of order within a stretch of a clause ("Pain, chest", "weakness, left arm").

        A stretch ends at a clause's end or at any trigger, so that "denies pain,
        chest" stays negated. The words of a term may come in any order, with at
        most a word between them (none for a side and its deficit), and may be
        words that matched nothing or one-word concepts ("pain", "arm"); the
        longest term wins and takes their place.
        """
        replaced: dict[int, _Item] = {}
        dropped: set[int] = set()
        content: list[int] = []
        for k in range(len(items) + 1):
            item = items[k] if k < len(items) else None
            if item is None or item.kind in _STRETCH_ENDS:
                if len(content) >= 2:
                    self._compose_stretch(items, content, replaced, dropped)
                content = []
            elif item.kind is not Kind.CONNECTOR and item.payload not in self._fillers:
                content.append(k)
        if not replaced:
            return items
        return [replaced.get(k, item) for k, item in enumerate(items) if k not in dropped]

    def _compose_stretch(
        self, items: list[_Item], content: list[int], replaced: dict[int, _Item], dropped: set[int]
    ) -> None:
        positions: dict[str, list[int]] = {}
        for position, k in enumerate(content):
            word = items[k].word if items[k].kind is not Kind.SIDE else _SIDE
            if word == _SIDE and position + 1 < len(content) and _is_phrase(items[content[position + 1]]):
                continue  # "R knee pain": the side is the knee's
            if word and items[k].kind in _REUSABLE:
                positions.setdefault(word, []).append(position)
        if len(positions) < 2:
            return
        found: list[tuple[int, int, tuple[int, ...], str]] = []
        for word in positions:
            for term in self._unordered.get(word, ()):
                if not term.words <= positions.keys():
                    continue
                chosen = _closest([positions[w] for w in term.words])
                span = chosen[-1] - chosen[0] + 1
                if span - term.size <= term.max_gap:
                    found.append((-term.size, span, chosen, term.concept))
        used: set[int] = set()
        for _, _, chosen, concept in sorted(found):
            if used.intersection(chosen):
                continue
            used.update(chosen)
            ks = [content[p] for p in chosen]
            first = items[ks[0]]
            replaced[ks[0]] = _Item(Kind.CONCEPT, concept, first.start, max(items[k].end for k in ks))
            dropped.update(ks[1:])


def _is_phrase(item: _Item) -> bool:
    return item.kind is Kind.CONCEPT and not item.word


def _closest(choices: list[list[int]]) -> tuple[int, ...]:
    """One position per word (each list ascending, no position in two lists), as close together as possible.

    The tightest window starts at one of the positions; from each start, every
    other word takes its first position at or after it. Linear in the positions
    times the words, whatever the text repeats.
    """
    best: tuple[int, ...] = ()
    for start in sorted({p for positions in choices for p in positions}):
        chosen = []
        for positions in choices:
            at = bisect.bisect_left(positions, start)
            if at == len(positions):
                return best
            chosen.append(positions[at])
        ordered = tuple(sorted(chosen))
        if not best or ordered[-1] - ordered[0] < best[-1] - best[0]:
            best = ordered
    return best


@dataclass(frozen=True, slots=True)
class _Unordered:
    """A concept term matched as a set of words: its content words, at most max_gap words apart."""

    words: frozenset[str]
    concept: str
    size: int
    max_gap: int


def _index_by_rarest_word(terms: list[_Unordered]) -> dict[str, tuple[_Unordered, ...]]:
    """Each term under its least common word, so that a stretch checks few terms."""
    frequency: Counter[str] = Counter(word for term in terms for word in term.words)
    index: dict[str, list[_Unordered]] = {}
    seen: set[tuple[frozenset[str], str]] = set()
    for term in terms:
        if (term.words, term.concept) in seen:
            continue
        seen.add((term.words, term.concept))
        rarest = min(sorted(term.words), key=lambda w: frequency[w])
        index.setdefault(rarest, []).append(term)
    return {word: tuple(entries) for word, entries in index.items()}


_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")
_NUMBER_JOINERS = frozenset({"of", "is", "was", "at", "=", ":", "in", "around", "about"})
_MG_PER_DL_PER_MMOL_PER_L = 18.0


def _fold(text: str) -> tuple[str, list[int]]:
    """Lower-cases and simplifies text, keeping for each character its index in text.

    Apostrophes vanish ("can't" -> "cant"); a hyphen inside a word splits it
    ("x-ray" -> "x ray") while a free-standing dash stays punctuation.
    """
    if text.isascii() and not any(mark in text for mark in "'`"):
        # The common case needs no per-character work: folding keeps every offset.
        return _HYPHEN_IN_WORD.sub(" ", text.lower()), list(range(len(text) + 1))
    chars: list[str] = []
    origin: list[int] = []
    for index, char in enumerate(text):
        for folded in unicodedata.normalize("NFKC", char).lower():
            if folded in "'\u2019`":
                continue
            chars.append(folded)
            origin.append(index)
    for i in range(1, len(chars) - 1):
        if chars[i] == "-" and chars[i - 1].isalnum() and chars[i + 1].isalnum():
            chars[i] = " "
    origin.append(len(text))
    return "".join(chars), origin


def _apply_scopes(items: list[_Item]) -> None:
    """Marks concepts inside negation, history and chronicity scopes."""
    for k, item in enumerate(items):
        if item.kind is Kind.NEGATION_BEFORE:
            for concept in _scope_after(items, k):
                concept.negated = True
        elif item.kind is Kind.HISTORICAL:
            for concept in _scope_after(items, k):
                concept.historical = True
        elif item.kind is Kind.CHRONIC_BEFORE:
            for concept in _scope_after(items, k):
                concept.chronic = True
        elif item.kind in (Kind.NEGATION_AFTER, Kind.CHRONIC_AFTER):
            for concept in _scope_before(items, k):
                if item.kind is Kind.NEGATION_AFTER:
                    concept.negated = True
                else:
                    concept.chronic = True


_TRIGGERS = frozenset(
    {Kind.NEGATION_BEFORE, Kind.HISTORICAL, Kind.CHRONIC_BEFORE, Kind.NEGATION_AFTER, Kind.TERMINATOR}
)
# What ends a stretch in which words may be read out of order, and what may be reused there.
_STRETCH_ENDS = _TRIGGERS | {Kind.CHRONIC_AFTER, Kind.PSEUDO}
_REUSABLE = frozenset({Kind.WORD, Kind.CONCEPT, Kind.SIDE})
# Words that neither end a scope nor count as a gap in it.
_SCOPE_NEUTRAL = frozenset({Kind.CONNECTOR, Kind.SIDE})


def _scope_after(items: list[_Item], k: int) -> Iterator[_Item]:
    """The concepts a trigger at k governs: a list of them, up to the clause's end."""
    gap = 0
    seen = False
    for item in items[k + 1 :]:
        if item.kind in _TRIGGERS:
            return
        if item.kind is Kind.CONCEPT:
            seen = True
            gap = 0
            yield item
        elif item.kind not in _SCOPE_NEUTRAL:
            gap += 1
            if gap > (_GAP_BETWEEN if seen else _GAP_BEFORE_FIRST):
                return


def _scope_before(items: list[_Item], k: int) -> Iterator[_Item]:
    """The concept just before a trailing trigger ("pregnancy test negative", "confused at baseline")."""
    steps = 0
    for item in reversed(items[:k]):
        if item.kind is Kind.CONCEPT:
            yield item
            return
        if item.kind in _TRIGGERS:
            return
        if item.kind not in _SCOPE_NEUTRAL:
            steps += 1
            if steps > _AFTER_WINDOW:
                return
