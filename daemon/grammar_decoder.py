"""Whisper's decoder decoded under a grammar: encoder states -> the likeliest grammar sentence -> intent and slots.

A "whisper-grammar" model folder (made by `intentd-train grammar-model`) holds a Hugging Face
WhisperForConditionalGeneration, its tokenizer.json and, in intentd.json, the grammar (daemon/grammar.py) and
the decoder's settings. Beam search runs over the clips of a batch together; at each step a beam may only take a
token that keeps its text a prefix of some grammar sentence (`TokenConstraint`), and end-of-text only where a
sentence may end, so every answer is a sentence of the grammar, which `Automaton.parse` reads back into the
intent and each slot's canonical value. The score is the sentence's mean token probability under the
constraint: near 1 when Whisper would have said that sentence anyway, low when the grammar had to force it; each
slot's score is the mean probability of the tokens that spell its value.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import torch

from intentd.daemon.errors import ModelError
from intentd.daemon.grammar import DEAD, Automaton, Grammar, TokenConstraint, token_bytes

log = logging.getLogger(__name__)

RECOGNISER_KEY: Final = "recogniser"  # in intentd.json: what the folder is
WHISPER_GRAMMAR: Final = "whisper-grammar"
GRAMMAR_KEY: Final = "grammar"
DECODER_KEY: Final = "decoder"
TOKENIZER_FILE: Final = "tokenizer.json"
DEFAULT_BEAM: Final = 5
DEFAULT_MAX_TOKENS: Final = 64
# Rank finished sentences by mean token log-probability (Whisper's own ranking without a length penalty) rather
# than by the sum, which favours sentences that stop early: in noise the sum drops trailing slots ("... with
# sugar") because every extra token can only lower it.
DEFAULT_LENGTH_NORM: Final = True
# Determinised grammar states kept between decodings; past it the memo starts again (a daemon runs for months).
MAX_CACHED_STATES: Final = 100_000


@dataclass(frozen=True, slots=True)
class DecoderSettings:
    """How to decode: the prompt (start of transcript, no timestamps), end-of-text, beam width, token limit."""

    prompt: tuple[int, ...]
    eot: int
    beam: int = DEFAULT_BEAM
    max_tokens: int = DEFAULT_MAX_TOKENS
    length_norm: bool = DEFAULT_LENGTH_NORM

    def to_json(self) -> dict[str, Any]:
        """The intentd.json form."""
        return {"prompt": list(self.prompt), "eot": self.eot, "beam": self.beam, "max_tokens": self.max_tokens,
                "length_norm": self.length_norm}

    @classmethod
    def from_json(cls, raw: Any, where: str) -> DecoderSettings:
        """Parse the intentd.json form; a ModelError names `where`."""
        try:
            settings = cls(tuple(int(t) for t in raw["prompt"]), int(raw["eot"]), int(raw.get("beam", DEFAULT_BEAM)),
                           int(raw.get("max_tokens", DEFAULT_MAX_TOKENS)),
                           _flag(raw.get("length_norm", DEFAULT_LENGTH_NORM)))
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"{where}: {DECODER_KEY} must be {{'prompt': [ids], 'eot': id, 'beam': n, "
                             f"'max_tokens': n, 'length_norm': true|false}}: {err!r}") from err
        if not settings.prompt or settings.beam < 1 or settings.max_tokens < 1:
            raise ModelError(f"{where}: {DECODER_KEY} needs a prompt, beam >= 1 and max_tokens >= 1")
        return settings


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"length_norm must be true or false, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Heard:
    """One clip's decoding: the intent (None: no grammar sentence within the token limit), each captured slot's
    canonical value with a score, the sentence as the grammar spells it, and the sentence's score."""

    intent: str | None
    score: float
    slots: Mapping[str, tuple[str, float]] = field(default_factory=dict)
    text: str | None = None


@dataclass(slots=True)
class _Hyp:
    tokens: tuple[int, ...]
    logps: tuple[float, ...]  # each token's log-probability
    logp: float
    state: int


class GrammarDecoder:
    """Constrained beam search over a WhisperForConditionalGeneration's decoder."""

    def __init__(self, model: Any, grammar: Grammar, tokens: Mapping[int, bytes], settings: DecoderSettings) -> None:
        self.model = model
        self.grammar = grammar
        self.tokens = tokens
        self.automaton = Automaton(grammar)
        self.constraint = TokenConstraint(self.automaton, tokens)
        self.settings = settings
        self._ids: dict[int, tuple[torch.Tensor, tuple[int, ...]]] = {}

    @property
    def intents(self) -> tuple[str, ...]:
        """The grammar's intents, in label order."""
        return tuple(self.grammar.intents)

    @classmethod
    def load(cls, folder: Path, meta: Mapping[str, Any], model: Any) -> GrammarDecoder:
        """The decoder a folder states (grammar and decoder settings in intentd.json, tokenizer.json beside it)."""
        where = f"{folder / 'intentd.json'}"
        if GRAMMAR_KEY not in meta or DECODER_KEY not in meta:
            raise ModelError(f"{where}: a {WHISPER_GRAMMAR} folder needs '{GRAMMAR_KEY}' and '{DECODER_KEY}'")
        grammar = Grammar.from_json(meta[GRAMMAR_KEY], where)
        settings = DecoderSettings.from_json(meta[DECODER_KEY], where)
        path = folder / TOKENIZER_FILE
        if not path.is_file():
            raise ModelError(f"{folder}: a {WHISPER_GRAMMAR} folder needs its {TOKENIZER_FILE}")
        vocab = int(model.config.vocab_size)
        tokens = {t: b for t, b in token_bytes(path).items() if t < vocab}
        return cls(model, grammar, tokens, settings)

    def _allowed(self, state: int) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Token ids a state allows (end-of-text included where a sentence may end) and the state after each."""
        found = self._ids.get(state)
        if found is None:
            pairs = list(self.constraint.allowed(state))
            if self.automaton.accepts(state):
                pairs.append((self.settings.eot, DEAD))
            ids = torch.tensor([t for t, _ in pairs], dtype=torch.long)
            found = self._ids[state] = (ids, tuple(s for _, s in pairs))
        return found

    @torch.inference_mode()
    def decode(self, hidden: torch.Tensor) -> list[Heard]:
        """The best grammar sentence for each clip's encoder states (batch, frames, d_model)."""
        s = self.settings
        if self.automaton.states > MAX_CACHED_STATES:
            self.automaton.forget()
            self.constraint.forget()
            self._ids.clear()
        device = hidden.device
        clips = hidden.shape[0]
        # Decoder rows, each a (clip, hypothesis); every clip starts with one row.
        entries = [(clip, _Hyp((), (), 0.0, self.automaton.start)) for clip in range(clips)]
        finished: list[list[_Hyp]] = [[] for _ in range(clips)]
        encoder = hidden
        input_ids = torch.tensor([list(s.prompt)] * clips, dtype=torch.long, device=device)
        cache = None
        decoder = self.model.model.decoder
        for _ in range(s.max_tokens):
            out = decoder(input_ids=input_ids, encoder_hidden_states=encoder, cache=cache, use_cache=True)
            cache = out.cache
            logprobs = torch.log_softmax(self.model.proj_out(out.last_hidden_state[:, -1]).float(), dim=-1).cpu()
            by_clip: dict[int, list[int]] = {}
            for row, (clip, _hyp) in enumerate(entries):
                by_clip.setdefault(clip, []).append(row)
            next_entries: list[tuple[int, _Hyp]] = []
            next_rows: list[int] = []
            next_tokens: list[int] = []
            for clip, rows in by_clip.items():
                kept = self._step(logprobs, [(row, entries[row][1]) for row in rows], finished[clip])
                for row, token, hyp in kept:
                    next_entries.append((clip, hyp))
                    next_rows.append(row)
                    next_tokens.append(token)
            if not next_entries:
                break
            index = torch.tensor(next_rows, dtype=torch.long, device=device)
            cache.reorder_cache(index)
            encoder = encoder.index_select(0, index)
            entries = next_entries
            input_ids = torch.tensor([[t] for t in next_tokens], dtype=torch.long, device=device)
        return [self._heard(done) for done in finished]

    def _step(self, logprobs: torch.Tensor, rows: Sequence[tuple[int, _Hyp]], finished: list[_Hyp]
              ) -> list[tuple[int, int, _Hyp]]:
        """One clip's beam step: the best `beam` continuations among the tokens the grammar allows, sentences
        that end moved to `finished`; [] once no live beam can beat the best finished sentence."""
        beam = self.settings.beam
        candidates: list[tuple[float, float, int, int, int]] = []
        for row, hyp in rows:
            ids, states = self._allowed(hyp.state)
            if not len(ids):
                continue
            top = torch.topk(logprobs[row, ids], min(beam, len(ids)))
            for value, j in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                candidates.append((hyp.logp + value, value, row, int(ids[j]), states[j]))
        candidates.sort(key=lambda c: -c[0])
        parents = dict(rows)
        kept: list[tuple[int, int, _Hyp]] = []
        for logp, token_logp, row, token, state in candidates:
            if len(kept) == beam:
                break
            parent = parents[row]
            hyp = _Hyp(parent.tokens + (token,), parent.logps + (token_logp,), logp, state)
            if token == self.settings.eot:
                finished.append(hyp)
            else:
                kept.append((row, token, hyp))
        if len(finished) >= beam or not kept:
            return []
        # Summed log-probabilities only fall, so no live beam can overtake a finished sentence that beats it.
        # (A mean can rise again, so ranked by means the search goes on until `beam` sentences have ended.)
        if not self.settings.length_norm and max((h.logp for h in finished), default=-math.inf) >= kept[0][2].logp:
            return []
        return kept

    def _rank(self, hyp: _Hyp) -> float:
        return hyp.logp / len(hyp.tokens) if self.settings.length_norm else hyp.logp

    def _heard(self, finished: Sequence[_Hyp]) -> Heard:
        if not finished:
            return Heard(None, 0.0)
        hyp = max(finished, key=self._rank)
        score = math.exp(hyp.logp / len(hyp.tokens))
        pieces = [self.tokens[t] for t in hyp.tokens[:-1]]
        text = b"".join(pieces).decode("utf-8", "replace")
        parsed = self.automaton.parse(text)
        if parsed is None:  # pragma: no cover - the constraint only lets grammar sentences through
            log.warning("decoded %r, which the grammar does not parse", text)
            return Heard(None, 0.0)
        ends = list(itertools.accumulate(len(p) for p in pieces))
        slots = {}
        for name, value in parsed.slots.items():
            start, end = parsed.spans.get(name, (0, 0))
            # The tokens that spell any byte of the value: its score is their mean probability.
            spelled = [lp for lp, stop, piece in zip(hyp.logps, ends, pieces, strict=False)
                       if stop > start and stop - len(piece) < end]
            slots[name] = (value, math.exp(sum(spelled) / len(spelled)) if spelled else score)
        return Heard(parsed.intent, score, slots, parsed.text)
