"""CTC prefix scoring for joint CTC/attention beam search, and CTC-only greedy decoding.

The prefix score follows Watanabe et al. 2017, "Hybrid CTC/attention architecture for end-to-end speech
recognition" (IEEE JSTSP 11(8), Algorithm 2), computed for every hypothesis of every utterance and every next
token at once (``N = B x K`` hypotheses, ``V`` tokens), with a Python loop over encoder frames only.

Notation, for a prefix ``g`` and encoder frame ``t`` (0-based):

- ``r_t^n(g)``, ``r_t^b(g)``: log-probability of all CTC paths over frames ``0..t`` whose labelling is ``g``
  and whose last symbol is a non-blank / a blank;
- ``psi(g)``: the prefix probability, log of the total probability of all labellings that start with ``g``;
- for ``h = g + c``: ``phi_{t-1} = logaddexp(r_{t-1}^b(g), r_{t-1}^n(g))`` (or only ``r_{t-1}^b(g)`` when ``c``
  repeats the last token of ``g``), ``r_t^n(h) = logaddexp(r_{t-1}^n(h), phi_{t-1}) + x_t(c)``,
  ``r_t^b(h) = logaddexp(r_{t-1}^b(h), r_{t-1}^n(h)) + x_t(blank)``, ``psi(h) = logsumexp_t(phi_{t-1} + x_t(c))``;
- ending (``c = eos``): ``psi(g + eos) = logaddexp(r_{T-1}^n(g), r_{T-1}^b(g))``, the probability of exactly ``g``.

A virtual frame ``t = -1`` with ``r^b = 0`` for the empty prefix (``-inf`` otherwise) starts the recursion.
Frames past an utterance's end get ``x(blank) = 0`` and ``x(c) = -inf``, so every utterance can be scored to the
batch's longest length (as ESPnet's ``CTCPrefixScoreTH`` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

NEG_INF = float("-inf")


@dataclass
class CTCPrefixState:
    """Prefix-score state of ``N`` hypotheses.

    Attributes
    ----------
    r : Tensor
        ``(T, 2, N)`` ``r_t^b`` (index 0) and ``r_t^n`` (index 1) of each hypothesis' prefix, log domain.
    psi : Tensor
        ``(N,)`` prefix log-probability ``psi(g)`` of each hypothesis (0 for the empty prefix).
    last : Tensor
        ``(N,)`` int64 last token of each prefix (-1 for the empty prefix).
    length : Tensor
        ``(N,)`` int64 tokens in each prefix (its paths need at least that many frames).
    """

    r: Tensor
    psi: Tensor
    last: Tensor
    length: Tensor


class CTCPrefixScorer:
    """Vectorised CTC prefix scorer over a batch of utterances with ``K`` hypotheses each.

    Parameters
    ----------
    logp : Tensor
        ``(B, T, V)`` CTC log-posteriors (log-softmax of the CTC head over encoder frames).
    lens : Tensor
        ``(B,)`` valid encoder frames per utterance.
    blank : int
        The CTC blank id (``pad_id`` in this toolkit).
    eos : int
        End-of-sentence id: scored as "the prefix is the whole labelling".
    beam : int
        ``K``: hypotheses per utterance, laid out utterance-major (row ``b * K + k``).

    The loop over frames is the cost at the sizes of a CPU search (``N x V`` of a few thousand values per frame:
    the time goes to op calls, not arithmetic), so each frame is two ops on a buffer laid out for them
    (:meth:`score`), and frames before the shortest prefix could end are skipped (their ``r`` is ``-inf``).
    """

    def __init__(self, logp: Tensor, lens: Tensor, blank: int, eos: int, beam: int = 1) -> None:
        b, t, v = logp.shape
        self.blank, self.eos, self.beam, self.vocab_size = blank, eos, beam, v
        x = logp.float().clone()
        pad = torch.arange(t, device=logp.device)[None, :] >= lens[:, None]  # (B, T)
        x.masked_fill_(pad[:, :, None], NEG_INF)
        x[..., blank] = x[..., blank].masked_fill(pad, 0.0)
        # (T, N, V) with each utterance repeated for its K hypotheses.
        self._set_x(x.transpose(0, 1).repeat_interleave(beam, dim=1))
        self.lens = lens.repeat_interleave(beam)

    def _set_x(self, x: Tensor) -> None:
        """Frame posteriors ``x (T, N, V)``; for the recursion ``xx (T, 2, N, V)``: ``(x_t(blank), x_t(c))``; for the
        prefix probabilities (:meth:`score`) ``x`` out of the log domain, per row and token scaled by its maximum over
        frames: ``ex = exp(x - x_max)`` ``(N, T, V)`` float64 and ``x_max`` ``(N, V)``."""
        self.x = x
        self.xx = torch.stack([x[:, :, self.blank, None].expand_as(x), x], 1)
        x_max = x.amax(0)
        self.x_max = torch.where(torch.isfinite(x_max), x_max, 0.0)
        self.ex = torch.exp(x - self.x_max).transpose(0, 1).double()

    def init_state(self) -> CTCPrefixState:
        """State of the empty prefix for all ``N = B x K`` rows: ``r^n = -inf``, ``r^b_t = sum_{s<=t} x_s(blank)``."""
        t, n, _ = self.x.shape
        r = self.x.new_full((t, 2, n), NEG_INF)
        r[:, 0] = torch.cumsum(self.x[:, :, self.blank], dim=0)
        zeros = torch.zeros(n, dtype=torch.long, device=self.x.device)
        return CTCPrefixState(r, self.x.new_zeros(n), zeros - 1, zeros)

    def score(self, state: CTCPrefixState) -> tuple[Tensor, Tensor]:
        """Prefix scores of every one-token extension of every hypothesis.

        Returns
        -------
        psi : Tensor
            ``(N, V)`` ``psi(g + c)``; the eos column holds ``log p(g)`` (the labelling ends), the blank column -inf.
        r : Tensor
            ``(T, 2, N, V)`` the ``r`` (``r^b``, ``r^n``) of every extension, for :meth:`select`.
        """
        x = self.x  # (T, N, V)
        t_max, n, v = x.shape
        self._length = state.length  # for select()
        r_prev = state.r  # (T, 2, N): r^b, r^n
        total = torch.logaddexp(r_prev[:, 0], r_prev[:, 1])  # (T, N)
        repeat = state.last[:, None] == torch.arange(v, device=x.device)[None, :]  # (N, V)
        # buf[t] = (r_t^b(h), r_t^n(h), phi_t): phi_t(g, c) = total_t(g), or r_t^b(g) when c repeats g's last token.
        buf = x.new_full((t_max, 3, n, v), NEG_INF)
        torch.where(repeat[None], r_prev[:, 0, :, None], total[:, :, None], out=buf[:, 2])
        start = torch.where(state.last < 0, 0.0, NEG_INF).to(x)  # phi_{-1}: the virtual frame, only the empty prefix
        buf[0, 1] = start[:, None] + x[0]
        # r_t^b = logaddexp(r_{t-1}^n, r_{t-1}^b) + x_t(blank), r_t^n = logaddexp(r_{t-1}^n, phi_{t-1}) + x_t(c):
        # one logaddexp of r_{t-1}^n with the strided pair (r_{t-1}^b, phi_{t-1}), one add of (x_t(blank), x_t(c)),
        # on views made before the loop (unbind: one call, not five slicings per frame) into one scratch buffer.
        # An extension of a prefix of L tokens has L + 1 labels, so r_t = -inf for t < L: start at the shortest.
        t0 = int(state.length.min())
        r_n, pair, out, xx = buf[:, 1:2].unbind(0), buf[:, 0::2].unbind(0), buf[:, 0:2].unbind(0), self.xx.unbind(0)
        tmp = x.new_empty((2, n, v))
        for t in range(max(1, t0), t_max):
            torch.add(torch.logaddexp(r_n[t - 1], pair[t - 1], out=tmp), xx[t], out=out[t])
        # psi(h) = logsumexp_t phi_{t-1} + x_t(c). phi_{t-1} is total_{t-1}(g) for every c but g's last token, so
        # out of the log domain the sum over frames is one batched matrix product (N, 1, T) @ (N, T, V), each factor
        # scaled by its maximum (float64: terms 700 nats below the largest still count), instead of a logsumexp over
        # (T, N, V); the repeated token's column (phi = r^b) is then rewritten from a (T, N) logsumexp.
        phi = torch.cat([start[None], total[:-1]], 0)  # (T, N) phi_{t-1} of a non-repeating extension
        phi_max = phi.amax(0)
        phi_max = torch.where(torch.isfinite(phi_max), phi_max, 0.0)
        prod = torch.bmm(torch.exp(phi - phi_max).t().double()[:, None, :], self.ex)[:, 0]  # (N, V)
        psi = (torch.log(prod) + self.x_max.double() + phi_max.double()[:, None]).to(x.dtype)
        last = state.last.clamp(min=0)[:, None]  # (N, 1); rows of the empty prefix (last -1) keep their value
        phi_rep = torch.cat([start[None], r_prev[:-1, 0]], 0)  # (T, N) r^b_{t-1}(g)
        x_rep = x.gather(2, last[None].expand(t_max, -1, -1))[..., 0]  # (T, N) x_t(last token of g)
        psi_rep = torch.where(state.last >= 0, torch.logsumexp(phi_rep + x_rep, dim=0), psi.gather(1, last)[:, 0])
        psi.scatter_(1, last, psi_rep[:, None])
        psi[:, self.eos] = total[-1]
        psi[:, self.blank] = NEG_INF
        return psi, buf[:, 0:2]

    def keep(self, state: CTCPrefixState, rows: Tensor) -> CTCPrefixState:
        """Drop every hypothesis row but ``rows`` (``(N',)`` int64, whole utterances of ``K`` rows each) from the
        scorer, in place, and return their state; frames past the longest kept utterance are cut off (their
        ``x`` is blank-only padding, so every kept row's scores are unchanged). Beam search calls this when
        utterances of the batch are done, so finished ones cost nothing more."""
        t_keep = int(self.lens.index_select(0, rows).max())
        # the kept rows of what _set_x computed (a copy: cheaper than computing it again)
        self.x, self.xx = self.x[:t_keep].index_select(1, rows), self.xx[:t_keep].index_select(2, rows)
        self.x_max, self.ex = self.x_max.index_select(0, rows), self.ex[:, :t_keep].index_select(0, rows)
        self.lens = self.lens.index_select(0, rows)
        return CTCPrefixState(state.r[:t_keep].index_select(2, rows), state.psi.index_select(0, rows), state.last.index_select(0, rows), state.length.index_select(0, rows))

    def select(self, psi: Tensor, r: Tensor, src: Tensor, tokens: Tensor) -> CTCPrefixState:
        """State of the chosen extensions: row ``i`` of the new state is hypothesis ``src[i]`` extended by
        ``tokens[i]`` (``(N',)`` int64 each); ``psi`` and ``r`` are what :meth:`score` returned for the last state it
        scored."""
        idx = (src * self.vocab_size + tokens)  # flat (N * V) index
        r_sel = r.flatten(2).index_select(2, idx)
        return CTCPrefixState(r_sel, psi.reshape(-1).index_select(0, idx), tokens.clone(), self._length.index_select(0, src) + 1)


def ctc_greedy(logp: Tensor, lens: Tensor, blank: int) -> list[tuple[list[int], float, list[int]]]:
    """Best-path CTC decoding: arg-max per frame, merge repeats, drop blanks.

    Parameters
    ----------
    logp : ``(B, T, V)`` CTC log-posteriors; lens : ``(B,)`` valid frames; blank : blank id.

    Returns
    -------
    list of ``(tokens, score, frames)`` per utterance: token ids, the best path's log-probability, and the
    encoder frame at which each token starts.
    """
    best_lp, best = logp.max(-1)
    out = []
    for i in range(logp.shape[0]):
        n = int(lens[i])
        path = best[i, :n].tolist()
        tokens, frames, prev = [], [], blank
        for t, p in enumerate(path):
            if p != blank and p != prev:
                tokens.append(p)
                frames.append(t)
            prev = p
        out.append((tokens, float(best_lp[i, :n].sum()), frames))
    return out


def ctc_align(logp: Tensor, tokens: list[int], blank: int) -> list[tuple[int, int]] | None:
    """Viterbi (forced) alignment of a token sequence to CTC posteriors: the most probable CTC path whose
    labelling is ``tokens`` (Graves et al. 2006; the path of best-path decoding constrained to the labels).

    Parameters
    ----------
    logp : ``(T, V)`` CTC log-posteriors of one utterance (valid frames only).
    tokens : the token ids (no blank, sos or eos).
    blank : the blank id.

    Returns
    -------
    list of ``(first_frame, last_frame)`` per token (encoder frames, inclusive), in order; ``[]`` for no
    tokens; None when no CTC path of ``T`` frames has that labelling (too few frames for the tokens and
    their repeats).
    """
    n_tok = len(tokens)
    if n_tok == 0:
        return []
    t_max = logp.shape[0]
    ext = torch.full((2 * n_tok + 1,), blank, dtype=torch.long, device=logp.device)
    ext[1::2] = torch.as_tensor(tokens, dtype=torch.long, device=logp.device)
    s_max = ext.numel()
    emit = logp.float()[:, ext]  # (T, S)
    skip = torch.zeros(s_max, dtype=torch.bool, device=logp.device)
    skip[2:] = (ext[2:] != blank) & (ext[2:] != ext[:-2])  # s-2 -> s allowed between different labels
    alpha = torch.full((s_max,), NEG_INF, device=logp.device)
    alpha[0] = emit[0, 0]
    alpha[1] = emit[0, 1]
    back = torch.zeros(t_max, s_max, dtype=torch.long, device=logp.device)
    neg = torch.full((2,), NEG_INF, device=logp.device)
    for t in range(1, t_max):
        prev1 = torch.cat([neg[:1], alpha[:-1]])
        prev2 = torch.cat([neg, alpha[:-2]]).masked_fill(~skip, NEG_INF)
        best, arg = torch.stack([alpha, prev1, prev2]).max(0)
        back[t] = arg
        alpha = best + emit[t]
    ends = alpha[-2:]
    if not bool(torch.isfinite(ends).any()):
        return None
    s = s_max - 2 + int(ends.argmax())
    states = [0] * t_max
    back_l = back.tolist()
    for t in range(t_max - 1, -1, -1):
        states[t] = s
        s -= back_l[t][s]
    spans: list[list[int]] = [[-1, -1] for _ in range(n_tok)]
    for t, s in enumerate(states):
        if s % 2 == 1:
            u = s // 2
            if spans[u][0] < 0:
                spans[u][0] = t
            spans[u][1] = t
    return [(a, b) for a, b in spans]
