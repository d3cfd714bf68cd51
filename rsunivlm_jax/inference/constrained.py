"""Constrained decoding: token-level automata that mask logits so structured answers always parse.

Two grammars over the Qwen2 vocabulary, in the canonical tokenisation that `rsunivlm_jax.tasks`
text gets from the tokenizer (digits are single tokens):

* `box_constraint` ([VG]): ``[a, b, c, d]`` with integers 0-100 (no leading zeros), ``c >= a`` and
  ``d >= b``; several boxes separated by ``" "``; then an eos id.
  Tokens: ``[`` ``' ['`` ``]`` ``,`` ``' '`` digits eos.
* `mask_constraint` ([SEG], change detection): exactly `rows` rows joined by ``"\\n"``; each row is
  runs ``label*count`` joined by ``", "`` whose counts (>= 1, no leading zeros) sum to `cols`;
  labels are ``others`` and the row's prompt class; adjacent runs differ in label (canonical RLE,
  as `tasks.encode_mask` writes it); then an eos id.
  Tokens: label tokens (as the label tokenises at a row start and after ``", "``) ``*`` ``,``
  ``\\n`` digits eos.

Design. Every vocabulary id is mapped on the host to a grammar symbol class (`token_class [V]`,
0 = not in the grammar); label spellings become a token trie (`trie_next`, `node_label`,
`node_dist`), all precomputed numpy tables. The automaton state is a handful of int32 per row
(phase, row, column, partial number, ...). Per decode step, in jit, each symbol class is tried
(`_step`) and kept only if the exact minimal number of tokens to finish from the new state
(`_cost`) fits in the remaining token budget; the class mask is then gathered to a `[B, V]` token
mask. Because `_cost` is the exact shortest completion, a state within budget always has an
allowed continuation, so with `max_new_tokens >= min_length()` every answer is complete and
parses under the strict parsers (`parse_boxes_strict`, `tasks.decode_mask_strict`).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rsunivlm_jax import tasks

BIG = 1_000_000  # "unreachable" cost
_POW10 = (1, 10, 100, 1000, 10000)


def _digits(v):
    """Decimal digits of non-negative ints (1 for 0), up to 5 digits."""
    return 1 + (v >= 10).astype(jnp.int32) + (v >= 100) + (v >= 1000) + (v >= 10000)


def _single_id(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text)
    if len(ids) != 1:
        raise ValueError(f"tokenizer encodes {text!r} as {ids}; constrained decoding needs one token")
    return int(ids[0])


def _eos_list(tokenizer, eos_ids) -> list[int]:
    if eos_ids is None:
        eos_ids = [tokenizer.eos_id]
    eos = [int(e) for e in (eos_ids if isinstance(eos_ids, (list, tuple, np.ndarray)) else [eos_ids])]
    if not eos:
        raise ValueError("constrained decoding needs at least one eos id")
    return eos


def _class_table(vocab_size: int, assign: dict[int, int]) -> np.ndarray:
    table = np.zeros((vocab_size,), np.int32)
    for token, cls in assign.items():
        if not 0 <= token < vocab_size:
            raise ValueError(f"token id {token} outside the model vocabulary of {vocab_size} rows")
        table[token] = cls
    return table


def _rows_enabled(batch: int, enabled) -> np.ndarray:
    if enabled is None:
        return np.ones((batch,), bool)
    enabled = np.asarray(enabled, bool)
    if enabled.shape != (batch,):
        raise ValueError(f"enabled must have shape ({batch},), got {enabled.shape}")
    return enabled


# --------------------------------------------------------------------------------------------
# Shared driver
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Constraint:
    """Base: `token_class [V]` and per-row arrays `rows` (each `[B, ...]`); subclasses add tables.

    Subclasses implement `init_state()` and the per-row scalar functions `_step(s, row, c)` ->
    (ok, next state) and `_cost(s, row)` -> exact minimal tokens to finish (BIG if impossible).
    """

    token_class: Any
    rows: dict

    @property
    def batch_size(self) -> int:
        return int(self.rows["enabled"].shape[0])

    def take(self, index) -> "Constraint":
        """The constraint for rows `index` of the batch (numpy indexing on every per-row array)."""
        index = np.asarray(index)
        return dataclasses.replace(self, rows={k: np.asarray(v)[index] for k, v in self.rows.items()})

    # Overridden by subclasses.
    num_classes = 1

    def init_state(self) -> dict:
        raise NotImplementedError

    def _step(self, s, row, c):
        raise NotImplementedError

    def _cost(self, s, row):
        raise NotImplementedError


def allowed_tokens(con: Constraint, state: dict, remaining) -> jax.Array:
    """bool [B, V]: tokens that keep the answer completable within `remaining` tokens (this one included).

    Rows whose constraint is disabled allow everything.
    """
    classes = jnp.arange(con.num_classes, dtype=jnp.int32)
    remaining = jnp.asarray(remaining, jnp.int32)

    def per_row(s, row):
        def per_class(c):
            ok, nxt = con._step(s, row, c)
            return ok & (con._cost(nxt, row) <= remaining - 1)
        return jax.vmap(per_class)(classes)

    ok = jax.vmap(per_row)(state, con.rows).at[:, 0].set(False)  # [B, K]
    # Pack the class mask into 31-bit words (a reduction, which XLA does not fuse into the [B, V]
    # consumer; a plain gather made XLA recompute the automaton for every vocabulary entry).
    k = ok.shape[1]
    words = -(-k // 31)
    padded = jnp.pad(ok, ((0, 0), (0, words * 31 - k))).reshape(ok.shape[0], words, 31).astype(jnp.int32)
    packed = jnp.sum(padded << jnp.arange(31, dtype=jnp.int32), axis=-1)  # [B, words]
    tc = jnp.asarray(con.token_class)
    tokens = ((jnp.take(packed, tc // 31, axis=1) >> (tc % 31)) & 1).astype(bool)
    return jnp.where(jnp.asarray(con.rows["enabled"])[:, None], tokens, True)


def advance(con: Constraint, state: dict, tokens: jax.Array) -> dict:
    """State after each row emitted `tokens [B]` (unchanged where the token was not allowed)."""
    cls = jnp.take(jnp.asarray(con.token_class), tokens)

    def per_row(s, row, c):
        ok, nxt = con._step(s, row, c)
        return jax.tree.map(lambda a, b: jnp.where(ok, a, b), nxt, s)

    return jax.vmap(per_row)(state, con.rows, cls)


@jax.jit
def _min_length(con: Constraint) -> jax.Array:
    return jax.vmap(con._cost)(con.init_state(), con.rows)


def min_length(con: Constraint) -> np.ndarray:
    """Shortest complete answer per row, eos included (int [B]); BIG when no answer exists."""
    return np.asarray(_min_length(con))


def _smallest_completion(n, k, lo, hi):
    """Number with digit prefix `n` (k digits so far; k=0: nothing yet) in [lo, hi], no leading zeros.

    Returns (extra digits, value) of the smallest such number, or (BIG, BIG).
    """
    if_empty = (_digits(lo), lo)
    done = (k > 0) & (n >= lo) & (n <= hi)
    extra, value = jnp.int32(BIG), jnp.int32(BIG)
    for j in (3, 2, 1):  # the smallest j that works wins (assigned last)
        start = n * _POW10[j]
        v = jnp.maximum(start, lo)
        ok = (k > 0) & (n > 0) & (v <= jnp.minimum(start + _POW10[j] - 1, hi))
        extra, value = jnp.where(ok, j, extra), jnp.where(ok, v, value)
    extra = jnp.where(done, 0, extra)
    value = jnp.where(done, n, value)
    extra = jnp.where(k == 0, if_empty[0], extra)
    value = jnp.where(k == 0, if_empty[1], value)
    return extra.astype(jnp.int32), value.astype(jnp.int32)


def _select(cases, default):
    """First matching (condition, state dict) wins; `default` otherwise."""
    out = default
    for cond, st in reversed(cases):
        out = jax.tree.map(lambda a, b: jnp.where(cond, a, b), st, out)
    return out


# --------------------------------------------------------------------------------------------
# [VG] boxes
# --------------------------------------------------------------------------------------------

_VG_OPEN, _VG_SOPEN, _VG_CLOSE, _VG_COMMA, _VG_SPACE, _VG_D0, _VG_EOS = 1, 2, 3, 4, 5, 6, 16
_P_OPEN, _P_NUM, _P_SPACE, _P_DONE = 0, 1, 2, 3
BOX_MAX = 100


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BoxConstraint(Constraint):
    """``[x1, y1, x2, y2]`` boxes on 0-100 (x2 >= x1, y2 >= y1), separated by ``" "``, then eos."""

    max_boxes: int = dataclasses.field(default=0, metadata=dict(static=True))  # 0 = unlimited
    num_classes = 17

    def init_state(self) -> dict:
        b = self.batch_size
        z = jnp.zeros((b,), jnp.int32)
        return {"p": z + _P_OPEN, "i": z, "n": z, "k": z, "a": z, "b": z, "nb": z}

    @staticmethod
    def _lo(i, a, b):
        return jnp.where(i == 2, a, jnp.where(i == 3, b, 0))

    def _step(self, s, row, c):
        p, i, n, k, a, b, nb = (s[x] for x in ("p", "i", "n", "k", "a", "b", "nb"))
        d = c - _VG_D0
        is_digit = (c >= _VG_D0) & (c < _VG_D0 + 10)
        v = jnp.where(k == 0, d, n * 10 + d)
        lo = self._lo(i, a, b)
        complete = (k > 0) & (n >= lo) & (n <= BOX_MAX)
        more_boxes = (self.max_boxes == 0) | (nb < self.max_boxes)
        start = dict(s, p=jnp.int32(_P_NUM), i=jnp.int32(0), n=jnp.int32(0), k=jnp.int32(0))
        cases = [
            ((p == _P_OPEN) & (c == _VG_OPEN) & (nb == 0), start),
            ((p == _P_OPEN) & (c == _VG_SOPEN) & (nb > 0) & more_boxes, start),
            ((p == _P_OPEN) & (c == _VG_EOS) & (nb > 0), dict(s, p=jnp.int32(_P_DONE))),
            ((p == _P_NUM) & is_digit & ((k == 0) | (n > 0)) & (v <= BOX_MAX), dict(s, n=v, k=k + 1)),
            ((p == _P_NUM) & (c == _VG_COMMA) & (i < 3) & complete,
             dict(s, p=jnp.int32(_P_SPACE), i=i + 1, a=jnp.where(i == 0, n, a), b=jnp.where(i == 1, n, b))),
            ((p == _P_NUM) & (c == _VG_CLOSE) & (i == 3) & complete, dict(s, p=jnp.int32(_P_OPEN), nb=nb + 1)),
            ((p == _P_SPACE) & (c == _VG_SPACE), dict(s, p=jnp.int32(_P_NUM), n=jnp.int32(0), k=jnp.int32(0))),
        ]
        ok = jnp.zeros((), bool)
        for cond, _ in cases:
            ok = ok | cond
        return ok, _select(cases, s)

    def _coords_cost(self, i, n, k, a, b):
        extra, v = _smallest_completion(n, k, self._lo(i, a, b), BOX_MAX)
        a2 = jnp.where(i == 0, v, a)
        b2 = jnp.where(i == 1, v, jnp.where(i < 1, 0, b))
        tail = jnp.int32(0)
        for j in (1, 2, 3):
            lo_j = self._lo(jnp.int32(j), a2, b2)
            tail = tail + jnp.where(j > i, 2 + _digits(lo_j), 0)
        return jnp.minimum(extra + tail + 2, BIG)  # + "]" + eos

    def _cost(self, s, row):
        p, i, n, k, a, b, nb = (s[x] for x in ("p", "i", "n", "k", "a", "b", "nb"))
        zero = jnp.int32(0)
        open_cost = jnp.where(nb > 0, 1, 1 + self._coords_cost(zero, zero, zero, zero, zero))
        cost = jnp.where(p == _P_OPEN, open_cost, zero)
        cost = jnp.where(p == _P_NUM, self._coords_cost(i, n, k, a, b), cost)
        cost = jnp.where(p == _P_SPACE, 1 + self._coords_cost(i, zero, zero, a, b), cost)
        return cost.astype(jnp.int32)


def box_constraint(tokenizer, vocab_size: int, batch_size: int, *, eos_ids=None, max_boxes: int = 0,
                   enabled=None) -> BoxConstraint:
    """[VG] constraint for a batch; `vocab_size` = model vocabulary rows; eos default: tokenizer eos."""
    assign = {_single_id(tokenizer, "["): _VG_OPEN, _single_id(tokenizer, " ["): _VG_SOPEN,
              _single_id(tokenizer, "]"): _VG_CLOSE, _single_id(tokenizer, ","): _VG_COMMA,
              _single_id(tokenizer, " "): _VG_SPACE}
    for d in range(10):
        assign[_single_id(tokenizer, str(d))] = _VG_D0 + d
    for e in _eos_list(tokenizer, eos_ids):
        assign[e] = _VG_EOS
    _check_canonical_boxes(tokenizer, assign)
    return BoxConstraint(token_class=_class_table(vocab_size, assign),
                         rows={"enabled": _rows_enabled(batch_size, enabled)}, max_boxes=int(max_boxes))


def _check_canonical_boxes(tokenizer, assign):
    text = "[12, 40, 100, 52] [0, 5, 68, 98]"
    if any(t not in assign for t in tokenizer.encode(text)):
        raise ValueError(f"tokenizer splits {text!r} into tokens outside the box grammar; "
                         "constrained decoding needs single-digit and punctuation tokens (Qwen2 BPE)")


_STRICT_BOX = re.compile(r"\[(0|[1-9]\d{0,2}), (0|[1-9]\d{0,2}), (0|[1-9]\d{0,2}), (0|[1-9]\d{0,2})\]")


def parse_boxes_strict(text: str) -> list[tuple[int, int, int, int]]:
    """Strict [VG] parser: the whole answer is boxes ``[x1, y1, x2, y2]`` joined by single spaces.

    Integers 0-100 without leading zeros, x2 >= x1, y2 >= y1; ValueError otherwise.
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"box answer must be a non-empty string, got {text!r}")
    boxes, pos = [], 0
    while True:
        m = _STRICT_BOX.match(text, pos)
        if not m:
            raise ValueError(f"malformed box answer at character {pos}: {text[pos:pos + 40]!r}")
        box = tuple(int(g) for g in m.groups())
        if max(box) > 100 or box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"box {list(box)} is outside 0-100 or has x2 < x1 / y2 < y1")
        boxes.append(box)
        pos = m.end()
        if pos == len(text):
            return boxes
        if text[pos] != " ":
            raise ValueError(f"expected ' ' between boxes at character {pos}: {text[pos:pos + 40]!r}")
        pos += 1


# --------------------------------------------------------------------------------------------
# [SEG] masks
# --------------------------------------------------------------------------------------------

_SG_STAR, _SG_COMMA, _SG_NL, _SG_D0, _SG_EOS, _SG_LABEL0 = 1, 2, 3, 4, 14, 15
_P_LABEL, _P_COUNT, _P_END = 0, 1, 2
ROOT_ROW, ROOT_COMMA = 0, 1


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MaskConstraint(Constraint):
    """Row-RLE mask text of a `num_rows` x `num_cols` grid (see the module docstring)."""

    trie_next: Any = None  # int32 [nodes, label tokens]; -1 = no edge
    node_label: Any = None  # int32 [nodes]; label completed at the node or -1
    node_dist: Any = None  # int32 [nodes, labels]; tokens from node to label's end or BIG
    num_rows: int = dataclasses.field(default=24, metadata=dict(static=True))
    num_cols: int = dataclasses.field(default=24, metadata=dict(static=True))
    num_classes: int = dataclasses.field(default=_SG_LABEL0, metadata=dict(static=True))

    def init_state(self) -> dict:
        z = jnp.zeros((self.batch_size,), jnp.int32)
        return {"p": z + _P_LABEL, "r": z, "c": z, "node": z + ROOT_ROW, "prev": z - 1, "cur": z - 1,
                "n": z, "k": z}

    def _step(self, s, row, cls):
        p, r, col, node, prev, n, k = (s[x] for x in ("p", "r", "c", "node", "prev", "n", "k"))
        w, h = self.num_cols, self.num_rows
        trie_next, node_label = jnp.asarray(self.trie_next), jnp.asarray(self.node_label)
        j = jnp.clip(cls - _SG_LABEL0, 0, trie_next.shape[1] - 1)
        nxt = trie_next[node, j]
        lab = node_label[node]
        lab_allowed = (lab >= 0) & row["label_ok"][jnp.maximum(lab, 0)] & (lab != prev)
        d = cls - _SG_D0
        is_digit = (cls >= _SG_D0) & (cls < _SG_D0 + 10)
        v = jnp.where(k == 0, d, n * 10 + d)
        total = col + n
        cases = [
            ((p == _P_LABEL) & (cls >= _SG_LABEL0) & (nxt >= 0), dict(s, node=nxt)),
            ((p == _P_LABEL) & (cls == _SG_STAR) & lab_allowed,
             dict(s, p=jnp.int32(_P_COUNT), cur=lab, n=jnp.int32(0), k=jnp.int32(0))),
            ((p == _P_COUNT) & is_digit & ((k > 0) | (d >= 1)) & (v <= w - col), dict(s, n=v, k=k + 1)),
            ((p == _P_COUNT) & (cls == _SG_COMMA) & (k > 0) & (total < w),
             dict(s, p=jnp.int32(_P_LABEL), c=total, node=jnp.int32(ROOT_COMMA), prev=s["cur"])),
            ((p == _P_COUNT) & (cls == _SG_NL) & (k > 0) & (total == w) & (r < h - 1),
             dict(s, p=jnp.int32(_P_LABEL), r=r + 1, c=jnp.int32(0), node=jnp.int32(ROOT_ROW),
                  prev=jnp.int32(-1))),
            ((p == _P_COUNT) & (cls == _SG_EOS) & (k > 0) & (total == w) & (r == h - 1),
             dict(s, p=jnp.int32(_P_END))),
        ]
        ok = jnp.zeros((), bool)
        for cond, _ in cases:
            ok = ok | cond
        return ok, _select(cases, s)

    def _cost(self, s, row):
        p, r, col, node, prev, cur, n, k = (s[x] for x in ("p", "r", "c", "node", "prev", "cur", "n", "k"))
        w, h = self.num_cols, self.num_rows
        dist = jnp.asarray(self.node_dist)  # [nodes, labels]
        ok_l = row["label_ok"]
        labels = jnp.arange(dist.shape[1])
        d_w = _digits(jnp.int32(w))
        row_min = jnp.min(jnp.where(ok_l, dist[ROOT_ROW], BIG)) + 1 + d_w
        rest = jnp.minimum((h - 1 - r) * (1 + row_min) + 1, BIG)
        rem = w - col
        # P_LABEL: finish a label other than `prev`, "*", then the whole rest of the row as one count.
        label_cost = jnp.min(jnp.where(ok_l & (labels != prev), dist[node], BIG)) + 1 + _digits(rem)
        # P_COUNT: final count v reachable from the digits so far; if v < rem one more run of another label.
        vs = jnp.arange(1, w + 1, dtype=jnp.int32)
        dv = _digits(vs)
        shift = jnp.take(jnp.asarray(_POW10, jnp.int32), jnp.clip(dv - k, 0, 4))
        reach = (k == 0) | ((dv >= k) & (vs // shift == n))
        other = jnp.min(jnp.where(ok_l & (labels != cur), dist[ROOT_COMMA], BIG))
        extra = jnp.where(vs == rem, 0, 1 + other + 1 + _digits(jnp.maximum(rem - vs, 0)))
        count_cost = jnp.min(jnp.where(reach & (vs <= rem), dv - k + extra, BIG))
        cost = jnp.where(p == _P_LABEL, label_cost + rest, 0)
        cost = jnp.where(p == _P_COUNT, count_cost + rest, cost)
        return jnp.minimum(cost, BIG).astype(jnp.int32)


def check_mask_label(label: str) -> str:
    """A foreground label usable in mask text (no ``*``, ``,``, newline; not ``others``)."""
    label = str(label).strip()
    if not label or any(ch in label for ch in "*,\n") or label.lower() == tasks.BACKGROUND:
        raise ValueError(f"mask label {label!r} must be non-empty, not {tasks.BACKGROUND!r}, "
                         "and contain no '*', ',' or newline")
    return label


def _label_tokens(tokenizer, label: str, after_comma: bool) -> list[int]:
    """Ids of `label` as it tokenises inside mask text (row start, or after ``", "``)."""
    prefix, body = ("others*1,", " " + label) if after_comma else ("others*1\n", label)
    pre, full = tokenizer.encode(prefix), tokenizer.encode(prefix + body + "*1")
    star_one = tokenizer.encode("*1")
    if full[:len(pre)] != pre or full[-len(star_one):] != star_one or len(full) <= len(pre) + len(star_one):
        raise ValueError(f"mask label {label!r} does not tokenise separately from its neighbours; "
                         "it cannot be constrained")
    return full[len(pre):-len(star_one)]


def mask_constraint(tokenizer, vocab_size: int, labels: Sequence[str] | str, *, grid_size: int = 24,
                    num_rows: int | None = None, num_cols: int | None = None, eos_ids=None,
                    enabled=None) -> MaskConstraint:
    """[SEG] constraint; `labels` holds each row's foreground class (a str: batch of one).

    Allowed run labels of row b: ``others`` and ``labels[b]``.
    """
    labels = [labels] if isinstance(labels, str) else list(labels)
    fg = [check_mask_label(l) for l in labels]
    names = [tasks.BACKGROUND] + sorted(set(fg))
    index = {name: i for i, name in enumerate(names)}
    label_ok = np.zeros((len(fg), len(names)), bool)
    label_ok[:, 0] = True
    for b, l in enumerate(fg):
        label_ok[b, index[l]] = True
    # Token trie over both spellings of every label (two roots).
    seqs = [(root, li, _label_tokens(tokenizer, name, root == ROOT_COMMA))
            for root in (ROOT_ROW, ROOT_COMMA) for li, name in enumerate(names)]
    token_ids = sorted({t for _, _, seq in seqs for t in seq})
    tclass = {t: j for j, t in enumerate(token_ids)}
    children: list[dict[int, int]] = [{}, {}]
    depth, ends = [0, 0], {}
    parent = [-1, -1]
    for root, li, seq in seqs:
        node = root
        for t in seq:
            j = tclass[t]
            if j not in children[node]:
                children.append({})
                depth.append(depth[node] + 1)
                parent.append(node)
                children[node][j] = len(children) - 1
            node = children[node][j]
        if (root, node) in ends.values():
            raise ValueError(f"mask labels {names} have identical token spellings")
        ends[(root, li)] = (root, node)
    nodes = len(children)
    trie_next = -np.ones((nodes, max(1, len(token_ids))), np.int32)
    for node, ch in enumerate(children):
        for j, nxt in ch.items():
            trie_next[node, j] = nxt
    node_label = -np.ones((nodes,), np.int32)
    node_dist = np.full((nodes, len(names)), BIG, np.int32)
    for (root, li), (_, end) in ends.items():
        node_label[end] = li
        a = end
        while a != -1:  # every ancestor reaches this label's end
            node_dist[a, li] = depth[end] - depth[a]
            a = parent[a]
    assign = {_single_id(tokenizer, "*"): _SG_STAR, _single_id(tokenizer, ","): _SG_COMMA,
              _single_id(tokenizer, "\n"): _SG_NL}
    for d in range(10):
        assign[_single_id(tokenizer, str(d))] = _SG_D0 + d
    for e in _eos_list(tokenizer, eos_ids):
        assign[e] = _SG_EOS
    for t, j in tclass.items():
        if t in assign:
            raise ValueError(f"label token {t} collides with a mask punctuation / digit / eos token")
        assign[t] = _SG_LABEL0 + j
    con = MaskConstraint(
        token_class=_class_table(vocab_size, assign),
        rows={"enabled": _rows_enabled(len(fg), enabled), "label_ok": label_ok},
        trie_next=trie_next, node_label=node_label, node_dist=node_dist,
        num_rows=int(num_rows or grid_size), num_cols=int(num_cols or grid_size),
        num_classes=_SG_LABEL0 + len(token_ids))
    example = tasks.encode_mask(np.eye(2, dtype=bool), fg[0]) if fg else ""
    if fg and any(t not in assign for t in tokenizer.encode(example)):
        raise ValueError(f"tokenizer splits mask text {example!r} into tokens outside the mask grammar")
    return con


# --------------------------------------------------------------------------------------------
# Prompts -> constraints
# --------------------------------------------------------------------------------------------

_LABEL_PATTERNS = [
    re.compile(r"^please segment the (.+?) area that ha(?:ve|s) changed", re.I),
    re.compile(r"^(?:please )?segment (?:all )?(?:of )?(?:the )?(.+?)(?: area)?(?: in (?:this|the) image| that |[.?!]|$)",
               re.I),
    re.compile(r"mask (?:of|for) (?:the )?(.+?)(?: in (?:this|the) image)?[.?!]*$", re.I),
]


def seg_label_from_prompt(prompt: str) -> str:
    """The class phrase of a [SEG] prompt: ``"[SEG] water."`` -> ``water``; change-detection template
    ``"... segment the building area that have changed ..."`` -> ``building``; a few Figure-1 phrasings."""
    text = tasks.strip_placeholders(prompt)
    text = re.sub(r"^\s*\[SEG\]\s*", "", text, flags=re.I).strip()
    for pat in _LABEL_PATTERNS:
        m = pat.search(text)
        if m and m.group(1).strip():
            return check_mask_label(m.group(1).strip())
    return check_mask_label(text.rstrip(" .?!"))


def for_prompts(tokenizer, vocab_size: int, prompts: Sequence[str], *, grid_size: int = 24,
                eos_ids=None, labels: Sequence[str | None] | None = None) -> Constraint | None:
    """The constraint for a batch of user prompts (all [VG], or all [SEG]); None when no row is structured.

    Rows of other tasks in the batch are left unconstrained. `labels` overrides the [SEG] class per row.
    """
    tags = [tasks.leading_tag(p) for p in prompts]
    kinds = {t for t in tags if t in ("[VG]", "[SEG]")}
    if not kinds:
        return None
    if len(kinds) > 1:
        raise ValueError("one batch cannot mix constrained [VG] and [SEG] prompts; split it by task")
    enabled = np.asarray([t in kinds for t in tags])
    if kinds == {"[VG]"}:
        return box_constraint(tokenizer, vocab_size, len(prompts), eos_ids=eos_ids, enabled=enabled)
    fg = []
    for b, p in enumerate(prompts):
        given = labels[b] if labels is not None else None
        fg.append(given if given else (seg_label_from_prompt(p) if enabled[b] else "object"))
    return mask_constraint(tokenizer, vocab_size, fg, grid_size=grid_size, eos_ids=eos_ids, enabled=enabled)
