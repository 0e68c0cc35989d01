"""EventTransformer: a causal transformer over customer event sequences (intensity-free style).

Each step sees one token per event (type, marks, calendar, log gap, amount, context) plus the user's
static attributes, and predicts the next event in this order:

1. the gap to the next event: the earliest of competing latent times, one per event type, each a mixture
   of log-normals (Shchur et al., "Intensity-free learning of temporal point processes") blended with a
   grid of the clock hours of the next days, each day's hours scored with that day's calendar
   (``time_head.py``); past the window end this enters the likelihood as a survival term;
2. its type: each type's hazard at that time, adjusted given the calendar and context of the time it
   lands on (paydays, hours);
3. its marks given the type, and its amount (a Gaussian mixture on the standardised log amount) given both.

Attention has no position embeddings: each head's score is biased by ``-slope * (days between query and
key)``, with one head of slope 0 for long memory. That makes a key-value cache a ring buffer that never
needs recomputing: generation slides its window by overwriting the oldest event.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from twinsim.models.encoding import CALENDAR_SIZES
from twinsim.models.time_head import TimeHead, mixture_log_prob, next_event_log_prob
from twinsim.models.windows import EVENT, NONE


@dataclass
class ModelConfig:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    window: int = 32  # events of context
    mixture: int = 8  # components of the gap and amount mixtures
    dropout: float = 0.0
    # sizes from the schema
    n_types: int = 1
    mark_sizes: list[int] = field(default_factory=list)
    attribute_sizes: list[int] = field(default_factory=list)
    n_numeric: int = 0
    n_context: int = 0
    n_recency: int = 0
    n_memory: int = 0
    amount_codes: list[int] = field(default_factory=list)  # event types that carry an amount, in memory order

    def to_json(self) -> dict:
        return asdict(self)

    def slopes(self) -> list[float]:
        """Per-head recency slopes (per day): one global head, the others geometric from 1/64 to 1."""
        if self.n_heads == 1:
            return [0.0]
        return [0.0] + [2.0 ** (-6 + 6 * i / max(1, self.n_heads - 2)) for i in range(self.n_heads - 1)]


def _mlp(d: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, out))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout, self.window = cfg.dropout, cfg.window
        self.register_buffer("slopes", torch.tensor(cfg.slopes()).view(1, -1, 1, 1), persistent=False)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split(self.n_heads * self.d_head, dim=2)
        return tuple(z.view(b, t, self.n_heads, self.d_head).transpose(1, 2) for z in (q, k, v))

    def forward(self, x: torch.Tensor, time_days: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Token 0 is BOS; each token attends to BOS and the ``W`` latest tokens up to itself, as the ring
        cache of :meth:`step` does. Up to ``W`` events that is all of them (plain causal attention); longer
        inputs (a multiple of ``W`` events) go through :meth:`_banded`."""
        b, t, d = x.shape
        q, k, v = self._split(x)
        if t - 1 > self.window:
            return self.proj(self._banded(q, k, v, time_days, valid).transpose(1, 2).reshape(b, t, d))
        delta = (time_days[:, :, None] - time_days[:, None, :]).clamp(min=0).unsqueeze(1)
        allowed = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()[None, None] & valid[:, None, None, :]
        bias = (-self.slopes * delta).masked_fill(~allowed, float("-inf"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))

    def _banded(self, q, k, v, time_days, valid) -> torch.Tensor:
        """Attention over blocks of ``W`` events: each block's queries read BOS, the previous block and their
        own, keys at most ``W - 1`` tokens back; BOS reads only itself. (B, H, T, dh)."""
        b, h, t, dh = q.shape
        w = self.window
        qb, _ = _blocks(q, w)
        _, kb = _blocks(k, w)
        _, vb = _blocks(v, w)
        tq, tk = _blocks(time_days[:, None, :, None], w)
        _, ok = _blocks(valid[:, None, :, None], w)  # the previous block of block 0 is zeros: not valid
        back = (w + torch.arange(w))[:, None] - torch.cat([torch.zeros(1), torch.arange(2 * w)])[None, :]
        near = (back >= 0) & (back <= w - 1)
        near[:, 0] = True  # BOS
        allowed = near & ok.transpose(-1, -2)  # (B, 1, nb, W, 1 + 2W)
        delta = (tq - tk.transpose(-1, -2)).clamp(min=0)
        bias = (-self.slopes[..., None] * delta).masked_fill(~allowed, float("-inf"))
        y = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=bias, dropout_p=self.dropout if self.training else 0)
        return torch.cat([v[:, :, :1], y.reshape(b, h, t - 1, dh)], dim=2)

    def step(self, x: torch.Tensor, key_bias: torch.Tensor, cache: KVCache, layer: int,
             rows: torch.Tensor | None = None, only: torch.Tensor | None = None) -> torch.Tensor:
        """One token per row (of the cache's ``rows``; all rows if None), attending to the cache;
        ``key_bias`` (B, H, 1, C) from :meth:`KVCache.begin`. With ``only`` (and ``rows`` None) every row
        is computed but only the rows ``only`` write their token into the cache."""
        b, d = x.shape
        q, k, v = self._split(x[:, None, :])  # (B, H, 1, dh)
        index = torch.arange(b) if rows is None else rows
        if only is not None:  # all rows computed, only these written
            index, k, v = only, k[only], v[only]
        slot = cache.slot[index]
        cache.k[layer][index, :, slot] = k[:, :, 0]
        cache.v[layer][index, :, slot] = v[:, :, 0]
        keys, values = cache.k[layer], cache.v[layer]
        if rows is not None:
            keys, values = keys[rows], values[rows]
        scores = torch.matmul(q, keys.transpose(-1, -2)) * self.d_head**-0.5 + key_bias
        y = torch.matmul(torch.softmax(scores, dim=-1), values)
        return self.proj(y.reshape(b, d))


def _blocks(z: torch.Tensor, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, 1 + nb W, e) -> each block of ``w`` tokens after BOS (B, H, nb, w, e) and the keys it reads
    (B, H, nb, 1 + 2w, e): BOS, the previous block (zeros before the first) and itself."""
    b, h, t, e = z.shape
    body = z[:, :, 1:].reshape(b, h, (t - 1) // w, w, e)
    before = torch.cat([torch.zeros_like(body[:, :, :1]), body[:, :, :-1]], dim=2)
    return body, torch.cat([z[:, :, :1, None].expand(b, h, body.shape[2], 1, e), before, body], dim=3)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(),
                                 nn.Linear(4 * cfg.d_model, cfg.d_model), nn.Dropout(cfg.dropout))

    def forward(self, x, time_days, valid):
        x = x + self.attn(self.ln1(x), time_days, valid)
        return x + self.mlp(self.ln2(x))

    def step(self, x, key_bias, cache, layer, rows=None, only=None):
        x = x + self.attn.step(self.ln1(x), key_bias, cache, layer, rows, only)
        return x + self.mlp(self.ln2(x))


@dataclass
class KVCache:
    """Ring buffer of keys and values per batch row: slot 0 holds BOS, slots 1..W the latest events."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    time_days: torch.Tensor  # (B, W + 1)
    valid: torch.Tensor  # (B, W + 1)
    count: torch.Tensor  # (B,) events written since the row's BOS
    slot: torch.Tensor  # (B,) where the next token goes

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int) -> KVCache:
        shape = (batch, cfg.n_heads, cfg.window + 1, cfg.d_model // cfg.n_heads)
        return cls(k=[torch.zeros(shape) for _ in range(cfg.n_layers)],
                   v=[torch.zeros(shape) for _ in range(cfg.n_layers)],
                   time_days=torch.zeros(batch, cfg.window + 1), valid=torch.zeros(batch, cfg.window + 1, dtype=bool),
                   count=torch.zeros(batch, dtype=torch.long), slot=torch.zeros(batch, dtype=torch.long))

    def reset(self, rows: torch.Tensor) -> None:
        """Start new users in ``rows``: their next token is a BOS in slot 0."""
        self.valid[rows] = False
        self.count[rows] = -1
        self.slot[rows] = 0

    def prefix(self, m: int) -> KVCache:
        """The first ``m`` rows, as views: what a step on them writes lands in this cache."""
        return KVCache(k=[t[:m] for t in self.k], v=[t[:m] for t in self.v], time_days=self.time_days[:m],
                       valid=self.valid[:m], count=self.count[:m], slot=self.slot[:m])

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (in that order)."""
        self.k = [t[rows] for t in self.k]
        self.v = [t[rows] for t in self.v]
        self.time_days, self.valid, self.count, self.slot = (
            x[rows] for x in (self.time_days, self.valid, self.count, self.slot))

    def begin(self, time_days: torch.Tensor, slopes: torch.Tensor, rows: torch.Tensor | None = None,
              only: torch.Tensor | None = None) -> torch.Tensor:
        """Claim the slot of each of ``rows`` (all if None; only ``only`` if given) for a token at
        ``time_days`` and return the attention bias of every key, (B, H, 1, C), shared by all layers. The
        training bias ``-slope * (t_query - t_key)`` equals ``slope * t_key`` up to a per-query constant,
        which softmax ignores."""
        index = torch.arange(len(self.slot)) if rows is None else rows
        if only is not None:
            index, time_days = only, time_days[only]
        self.valid[index, self.slot[index]] = True
        self.time_days[index, self.slot[index]] = time_days
        times, valid = (self.time_days, self.valid) if rows is None else (self.time_days[rows], self.valid[rows])
        return (slopes * times[:, None, None, :]).masked_fill(~valid[:, None, None, :], float("-inf"))

    def advance(self, rows: torch.Tensor | None = None) -> None:
        """Move ``rows`` (all if None) to their next slot (slot 0 keeps the BOS; events cycle through 1..W)."""
        if rows is None:
            self.count += 1
            self.slot = 1 + self.count % (self.valid.shape[1] - 1)
        else:
            self.count[rows] += 1
            self.slot[rows] = 1 + self.count[rows] % (self.valid.shape[1] - 1)


class EventTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, k = cfg.d_model, cfg.mixture
        self.bos = cfg.n_types  # token index of BOS
        self.type_emb = nn.Embedding(cfg.n_types + 1, d)
        self.mark_emb = nn.ModuleList(nn.Embedding(n, d) for n in cfg.mark_sizes)
        self.cal_emb = nn.ModuleList(nn.Embedding(n, d) for n in CALENDAR_SIZES)
        self.cont = nn.Linear(2 + cfg.n_context, d)
        self.recency = nn.Linear(cfg.n_recency, d)
        self.memory = nn.Linear(cfg.n_memory, d)
        self.attr_emb = nn.ModuleList(nn.Embedding(n, d) for n in cfg.attribute_sizes)
        self.numeric = nn.Linear(cfg.n_numeric, d) if cfg.n_numeric else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.time = TimeHead(d, k, types=cfg.n_types)
        self.query_cal = nn.ModuleList(nn.Embedding(n, d) for n in CALENDAR_SIZES)
        self.query_cont = nn.Linear(1 + cfg.n_context, d)
        self.query_recency = nn.Linear(cfg.n_recency, d)
        self.type_head = _mlp(d, cfg.n_types)
        self.next_type_emb = nn.Embedding(cfg.n_types, d)
        self.next_mark_emb = nn.ModuleList(nn.Embedding(n, d) for n in cfg.mark_sizes)
        self.mark_heads = nn.ModuleList(_mlp(d, n) for n in cfg.mark_sizes)
        self.amount_head = _mlp(d, 3 * k + 2)  # k free components and the "repeat" component's weight and scale
        slots = torch.full((cfg.n_types,), -1, dtype=torch.long)
        slots[cfg.amount_codes] = torch.arange(len(cfg.amount_codes))
        self.register_buffer("amount_slot", slots, persistent=False)

    # ------------------------------------------------------------------------------------- inputs
    def static(self, static_cat: torch.Tensor, static_num: torch.Tensor) -> torch.Tensor:
        s = sum((emb(static_cat[:, i]) for i, emb in enumerate(self.attr_emb)),
                torch.zeros(static_cat.shape[0], self.cfg.d_model))
        return s + self.numeric(static_num) if self.numeric is not None else s

    def embed(self, tokens: dict[str, torch.Tensor], static: torch.Tensor) -> torch.Tensor:
        """Token embeddings from a batch's or a generation step's inputs (type, marks, calendar, cont,
        recency, memory) plus the users' static embedding."""
        x = (self.type_emb(tokens["type"]) + self.cont(tokens["cont"]) + self.recency(tokens["recency"])
             + self.memory(tokens["memory"]) + static)
        for i, emb in enumerate(self.mark_emb):
            x = x + emb(tokens["marks"][..., i])
        for i, emb in enumerate(self.cal_emb):
            x = x + emb(tokens["calendar"][..., i])
        return x

    def query(self, h, calendar_next, log_gap_next, context_next, recency_next) -> torch.Tensor:
        q = h + self.query_cont(torch.cat([log_gap_next.unsqueeze(-1), context_next], dim=-1))
        q = q + self.query_recency(recency_next)
        for i, emb in enumerate(self.query_cal):
            q = q + emb(calendar_next[..., i])
        return q

    def type_logits(self, q: torch.Tensor, log_hazard: torch.Tensor) -> torch.Tensor:
        """Logits of the next event's type at the time it comes: each type's hazard at that time (from the
        time head; they share one normaliser) adjusted by what the type head reads off the query there."""
        return self.type_head(q) + log_hazard

    def amount_mixture(self, cond: torch.Tensor, marks: torch.Tensor, memory: torch.Tensor,
                       type_: torch.Tensor) -> torch.Tensor:
        """Gaussian-mixture parameters (..., 3 (k + 1)) of the standardised log amount of an event of ``type_``
        with ``marks`` (a travel payment is not a grocery payment), given the history in ``cond``.

        Besides ``k`` free components there is a *repeat* component centred exactly on this user's latest
        amount of the same type (``memory``, as of the previous event; left out before the first): a salary
        is the same salary to the cent or nearly, which a mixture read from the hidden state can only blur."""
        for i, emb in enumerate(self.next_mark_emb):
            cond = cond + emb(marks[..., i])
        raw = self.amount_head(cond)
        logits, mu, log_scale = raw[..., :-2].chunk(3, dim=-1)
        repeat_logit, repeat_log_scale = raw[..., -2:].unbind(-1)
        slot = self.amount_slot[type_].clamp(min=0)
        latest = memory.gather(-1, slot.unsqueeze(-1)).squeeze(-1)
        seen = memory[..., 2 * len(self.cfg.amount_codes):].gather(-1, type_.unsqueeze(-1)).squeeze(-1) > 0
        repeat_logit = torch.where(seen, repeat_logit, torch.full_like(repeat_logit, -1e4))
        return torch.cat([logits, repeat_logit.unsqueeze(-1), mu, latest.unsqueeze(-1), log_scale,
                          repeat_log_scale.unsqueeze(-1)], dim=-1)

    # ------------------------------------------------------------------------------------- training
    def hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        static = self.static(batch["static_cat"], batch["static_num"]).unsqueeze(1)
        x = self.embed(batch, static)
        for block in self.blocks:
            x = block(x, batch["time_days"], batch["valid"])
        return self.ln_f(x)

    def nll(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Summed negative log-likelihood parts (nats) and the number of predicted events.

        ``time`` is the density of log(gap in hours) plus survival terms for censored users;
        ``amount`` the density of the standardised log amount. Both use the same transforms as the
        baseline, so the figures compare directly.
        """
        h = self.hidden(batch)
        kind = batch["target_kind"]
        scored = kind != NONE  # tokens that only give context predict nothing
        type_log_pdf, type_log_surv = self.time.log_prob(h[scored], *(batch[k][scored] for k in (
            "grid_day", "clock_hour", "target_log_gap", "target_bin", "target_bin_log_width", "target_bin_frac")))
        log_pdf, log_surv = next_event_log_prob(type_log_pdf, type_log_surv)
        is_event = kind[scored] == EVENT
        time = -torch.where(is_event, log_pdf, log_surv).sum()
        ev = kind == EVENT
        q = self.query(h[ev], batch["target_calendar"][ev], batch["target_log_gap"][ev], batch["target_context"][ev],
                       batch["query_recency"])
        target_type = batch["target_type"][ev]
        log_hazard = (type_log_pdf - type_log_surv)[is_event]
        type_ = F.cross_entropy(self.type_logits(q, log_hazard), target_type, reduction="sum")
        cond = q + self.next_type_emb(target_type)
        marks = sum((F.cross_entropy(head(cond), batch["target_marks"][ev][:, i], reduction="sum")
                     for i, head in enumerate(self.mark_heads)), torch.zeros(()))
        has_amount = batch["target_has_amount"][ev]
        amount_params = self.amount_mixture(cond[has_amount], batch["target_marks"][ev][has_amount],
                                            batch["memory"][ev][has_amount], target_type[has_amount])
        amount_pdf, _ = mixture_log_prob(amount_params, batch["target_amount_z"][ev][has_amount])
        return {"time": time, "type": type_, "marks": marks, "amount": -amount_pdf.sum(),
                "events": ev.sum()}

    # ------------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def step(self, token: dict[str, torch.Tensor], static: torch.Tensor, cache: KVCache,
             rows: torch.Tensor | None = None, only: torch.Tensor | None = None) -> torch.Tensor:
        """Feed one token per row of the cache's ``rows`` (all rows if None; ``token`` and ``static`` hold
        those rows only), written into the cache, and return the hidden state (B, d). ``only`` (with
        ``rows`` None): compute every row, but feed only these (the others' outputs are meaningless);
        cheaper than gathering a large subset of the cache."""
        key_bias = cache.begin(token["time_days"], self.blocks[0].attn.slopes, rows, only)
        x = self.embed(token, static)
        for layer, block in enumerate(self.blocks):
            x = block.step(x, key_bias, cache, layer, rows, only)
        cache.advance(rows if only is None else only)
        return self.ln_f(x)
