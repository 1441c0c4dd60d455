"""The input tokens behind sampled passes, kept so that a sampled token's routing can be
explained later (moe_probe.attribution re-runs the model on them).

A token's router saw more than the token: in a prompt (a prefill pass) the whole row of
the batch it sits in; in generation (decode passes of one new token each, with a KV
cache) the prompt and every token generated since. So the probe follows the rows that
its token records sample (the first `token_sample` tokens of the flattened batch sit in
the first ceil(token_sample / seq) rows): at each prompt it keeps those rows, and at each
decode pass it appends their new token. Sampled passes then point at what their rows
held at that moment.

Cost in the job's forward (called from the recorder's pass-start hook): one small device
copy per pass (the kept rows of a prompt, or the new token of each kept row), no host
sync. Memory: at most MAX_TOKENS per kept row, and the sequences of the last KEPT_PASSES
sampled passes.
"""

import collections
import threading
from typing import List, Optional, Tuple, Union

import torch

MAX_TOKENS = 4096  # tokens kept per row; longer rows are cut here (and said so)
KEPT_PASSES = 256  # sampled passes whose inputs stay available


class Sequence:
    """The kept rows since the last prompt: device chunks [rows, n] appended pass after pass."""

    __slots__ = ("chunks", "length", "rows", "cut")

    def __init__(self, first: torch.Tensor, cut: bool):
        self.chunks: List[torch.Tensor] = [first]
        self.length = int(first.shape[1])
        self.rows = int(first.shape[0])
        self.cut = cut  # the prompt was longer than MAX_TOKENS: its start is kept, not its end


class PassInput:
    """What one sampled pass's rows held: the sequence and how far it went at that pass."""

    __slots__ = ("pass_id", "phase", "sequence", "chunks", "length", "seq", "mask")

    def __init__(self, pass_id, phase, sequence, seq, mask):
        self.pass_id = pass_id
        self.phase = phase
        self.sequence = sequence
        self.chunks = len(sequence.chunks)  # the chunks that existed at this pass
        self.length = sequence.length
        self.seq = seq  # tokens per row in this pass (1 for decode)
        self.mask = mask  # attention_mask rows [rows, length] of this pass, when the job gave one

    def locate(self, index: int) -> Tuple[int, int]:
        """(row, position) of the index-th sampled token of this pass."""
        if self.phase == "decode" and self.seq == 1:
            return index, self.length - 1
        return index // self.seq, index % self.seq

    def row_tokens(self, row: int) -> torch.Tensor:
        """The row's tokens up to and including this pass, [length] on the model's device."""
        parts = [chunk[row] for chunk in self.sequence.chunks[: self.chunks]]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class InputKeeper:
    """Follows the sampled rows of one model root's passes (hook side) and answers which
    tokens a sampled pass's token saw (request side)."""

    def __init__(self, token_sample: int):
        self.token_sample = max(1, int(token_sample))
        self._sequence: Optional[Sequence] = None
        # Why the current decode passes have no sequence (attached mid-generation, too long).
        self._missing = "the probe attached in the middle of this sequence and never saw its prompt"
        self._passes: "collections.OrderedDict[int, Union[PassInput, str]]" = collections.OrderedDict()
        self._lock = threading.Lock()

    # -- the job's thread, inside the pass-start hook --

    def on_pass(self, ids: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor], pass_id: int, phase: str,
                sampled: bool) -> None:
        if ids is None:
            self._sequence = None
            self._missing = "the model was called without input ids"
            if sampled:
                self._remember(pass_id, self._missing)
            return
        rows2d = ids.detach() if ids.dim() == 2 else ids.detach().reshape(1, -1)
        batch, seq = int(rows2d.shape[0]), int(rows2d.shape[1])
        if seq == 1 and phase == "decode":
            sequence = self._sequence
            if sequence is not None and batch >= sequence.rows and sequence.length < MAX_TOKENS:
                sequence.chunks.append(rows2d[: sequence.rows].clone())
                sequence.length += 1
            elif sequence is not None:
                self._missing = ("the sequence grew past the %d tokens the probe keeps" % MAX_TOKENS
                                 if sequence.length >= MAX_TOKENS else "the batch shrank below the rows the probe follows")
                self._sequence = sequence = None
        else:
            rows = min(batch, -(-self.token_sample // seq))
            sequence = self._sequence = Sequence(rows2d[:rows, :MAX_TOKENS].clone(), cut=seq > MAX_TOKENS)
        if not sampled:
            return
        if sequence is None:
            self._remember(pass_id, self._missing)
            return
        mask = attention_mask
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[0] >= sequence.rows \
                and mask.shape[1] == sequence.length:
            mask = mask.detach()[: sequence.rows].clone()
        else:
            mask = None
        self._remember(pass_id, PassInput(pass_id, phase, sequence, seq, mask))

    def _remember(self, pass_id, entry):
        with self._lock:
            self._passes[pass_id] = entry
            while len(self._passes) > KEPT_PASSES:
                self._passes.popitem(last=False)

    # -- the probe's request thread --

    def lookup(self, pass_id: int) -> Union[PassInput, str]:
        """The kept input of a sampled pass, or why there is none."""
        with self._lock:
            entry = self._passes.get(pass_id)
            oldest = next(iter(self._passes), None)
        if entry is None:
            if oldest is not None and pass_id < oldest:
                return ("the probe keeps the inputs of its last %d sampled passes only, and pass %d is older"
                        % (KEPT_PASSES, pass_id))
            return "pass %d was not sampled by this probe" % pass_id
        return entry
