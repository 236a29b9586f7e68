"""Bottom-up enumeration (the SyCAM paper's Algorithm 1) with pruning.

For each size ``s = 1, 2, ...`` and each non-terminal, every production is applied to the bank:
a production with fixed size ``f`` and holes ``H1..Hm`` combines, for every way of splitting
``s - f`` into ``m`` positive parts, every term of ``H1`` of the first part size with every term of
``H2`` of the second, and so on. Order is deterministic: sizes ascending, non-terminals in file
order (a non-terminal reached by a unit production ``E -> T`` after ``T``), productions in file
order, splits lexicographic, children in bank order. With production costs (``Enumerator(costs=)``,
for a search that learns where good expressions are), "size" is the cost: a production of cost ``c``
splits ``s - c``, and terms stream cheapest first.

Each new combination is (1) canonicalized with sympy (``Canonicalizer``): a form seen before in
the same non-terminal is dropped without computing anything; (2) evaluated on the equivalence
subset with one batched tensor operation per production node on its children's stored values;
(3) dropped if its value fingerprint was seen before in the same non-terminal (observational
equivalence keeps the first, i.e. smallest, term). Survivors enter the bank; those of the start
non-terminal are yielded at once, so a consumer starts before a size is finished.

A non-terminal whose first production is a unit ``E -> T`` takes ``T``'s new terms as each of
``T``'s productions finishes, rather than when its own turn comes (when no unit productions form a
cycle, and in the first pass over a size): the order is the same, since ``E`` would read those terms
first anyway, but ``E``'s first terms reach the consumer before ``T``'s later productions are
evaluated. With terminals computed on demand this matters: in ``T -> grads | cic | abl``,
``grads`` is yielded (and can be scored) before ``cic`` is computed for the equivalence subset.

With both prunings off the enumerator still drops syntactic duplicates (an ambiguous grammar can
derive one term twice), so it yields each term of the grammar exactly once.

Before step (1), a combination that sums a position-free Map (a ``gsum`` whose operand does not
vary over positions: the rule in ``lang.operators``) is dropped as ``undefined``: it is not a term
of the language. Map values are stored materialized to ``[N, K, h, w]`` (fingerprints need equal
shapes); under that rule they equal ``evaluate``'s values after broadcasting.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, cast

import torch

from ..canonicalize import Canonicalizer
from ..equivalence.observational import DEFAULT_MANTISSA_BITS, fingerprints
from ..evaluate.evaluator import evaluate_with
from ..evaluate.terminal_values import Terminals
from ..lang.ast import CONST, HOLE, OP, Node, fill
from ..lang.types import Type
from ..parse.grammar import Grammar, Production
from .bank import Bucket, NTState, Positions, compositions, positions
from .grammar_order import check_costs, unit_forwards, unit_order


class Candidate(NamedTuple):
    """A yielded term with its value on the equivalence subset and its position in the stream."""

    term: Node
    value: torch.Tensor
    # Shadows tuple.index on purpose (callers read ``cand.index``); mypy rejects any NamedTuple field so named.
    index: int  # type: ignore[assignment]


@dataclass
class SizeStats:
    generated: int = 0
    undefined: int = 0  # sums of a position-free Map (gsum's rule), dropped before canonicalization
    duplicates: int = 0
    canonical: int = 0
    equivalent: int = 0
    kept: int = 0
    yielded: int = 0


@dataclass
class EnumerationStats:
    """Counts per size (over all non-terminals) and totals; ``seconds`` is time spent enumerating."""

    per_size: dict[int, SizeStats] = field(default_factory=dict)
    seconds: float = 0.0
    canonical_seconds: float = 0.0  # of ``seconds``, spent in canonicalization (step 1)
    sympy_calls: int = 0

    def size(self, s: int) -> SizeStats:
        return self.per_size.setdefault(s, SizeStats())

    def total(self) -> SizeStats:
        t = SizeStats()
        for s in self.per_size.values():
            for f in vars(t):
                setattr(t, f, getattr(t, f) + getattr(s, f))
        return t

    def as_dict(self) -> dict:
        return {"per_size": {s: vars(v) for s, v in sorted(self.per_size.items())},
                "total": vars(self.total()), "seconds": self.seconds,
                "canonical_seconds": self.canonical_seconds, "sympy_calls": self.sympy_calls}

    def table(self) -> str:
        rows = ["size  generated  undefined  duplicate  canonical  equivalent   kept  yielded"]
        for s, v in sorted(self.per_size.items()) + [("all", self.total())]:
            rows.append(f"{s!s:>4}  {v.generated:9d}  {v.undefined:9d}  {v.duplicates:9d}  {v.canonical:9d}"
                        f"  {v.equivalent:10d}  {v.kept:5d}  {v.yielded:7d}")
        return "\n".join(rows)


class Enumerator:
    """Streams the start non-terminal's terms of ``grammar``, cheapest first: by default a term costs
    its size (node count), so smallest first.

    ``terminals`` are the terminal values on the equivalence subset (``[N, K]`` / ``[N, K, h, w]``).
    ``costs``: each production's cost (an integer, at least 1; a unit production ``E -> T`` at least
    0; productions not given cost their fixed size: 1 per node, 0 for a unit production). A term
    costs the sum of its derivation's production costs, and the bottom-up pass goes by cost instead
    of size: every term of cost ``c`` comes before any of cost ``c' > c``, each once, and the
    equivalence pruning keeps the cheapest of equal terms. ``max_size`` bounds the cost (the size,
    with the default costs); ``canonicalize`` and ``equivalence`` switch the two prunings; ``chunk`` is
    how many combinations are evaluated in one batched operation.
    ``on_prune(nonterminal, term, reason, earlier)``, if given, is called for every dropped term with
    the reason (``"duplicate"``, ``"canonical"`` or ``"equivalent"``) and the earlier kept term of the
    same non-terminal that it duplicates. Undefined combinations (a ``gsum`` of a position-free Map)
    duplicate nothing: they are only counted, in ``stats`` (``undefined``).
    ``stats`` is updated as terms stream."""

    def __init__(self, grammar: Grammar, terminals: Terminals, max_size: int, *, canonicalize: bool = True,
                 equivalence: bool = True, mantissa_bits: int = DEFAULT_MANTISSA_BITS, chunk: int = 64,
                 on_prune: Callable[[str, Node, str, Node], None] | None = None,
                 costs: Mapping[Production, int] | None = None,
                 interrupt: Callable[[], None] | None = None) -> None:
        missing = [n for n in grammar.inputs if n not in terminals]
        if missing:
            raise ValueError(f"no values for terminal(s) {', '.join(missing)} of grammar {grammar.source}")
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.grammar = grammar
        self.terminals = terminals
        self.max_size = max_size
        self.canonicalize = canonicalize
        self.equivalence = equivalence
        self.mantissa_bits = mantissa_bits
        self.chunk = chunk
        self.on_prune = on_prune
        # called between chunks of combinations, so that a caller's deadline can stop (by raising)
        # the growth of sizes that yield no candidate for a long time
        self.interrupt = interrupt
        self.costs = check_costs(grammar, costs)
        self.stats = EnumerationStats()
        self.canon = Canonicalizer()
        self._states = {name: NTState(nt, mantissa_bits) for name, nt in grammar.nonterminals.items()}
        self._order = unit_order(grammar)
        self._unit_targets = {p.template.head for nt in grammar.nonterminals.values() for p in nt.productions
                              if p.template.kind == HOLE}
        self._forward = unit_forwards(grammar)
        self._yielded = 0
        # Positions matter only to gsum: a grammar without one skips the flags and the filter.
        prods = [p for nt in grammar.nonterminals.values() for p in nt.productions]
        self._positions: dict[Production, Positions] | None = None
        if any(n.kind == OP and n.head == "gsum" for p in prods for n in p.template.walk()):
            self._positions = {p: positions(p.template) for p in prods}
        hw = terminals.hw
        self._map_shape = (terminals.n, terminals.k) + (hw if hw else (1, 1))

    def __iter__(self) -> Iterator[Node]:
        return (c.term for c in self.candidates())

    def candidates(self) -> Iterator[Candidate]:
        """Yield the start non-terminal's surviving terms with their values, as they are found."""
        start = self.grammar.start.name
        for size in range(1, self.max_size + 1):
            t0 = time.perf_counter()
            units_only = False
            # After the full pass, unit productions of a cycle (E -> T, T -> E) may find terms that
            # appeared later in the same size: repeat them until nothing new comes.
            while True:
                found = False
                for name in self._order:
                    st = self._states[name]
                    for prod in st.nt.productions:
                        if units_only and prod.template.kind != HOLE:
                            continue
                        for owner, term, value in self._apply_forwarding(name, prod, size, not units_only):
                            found = True
                            if owner == start:
                                self.stats.size(size).yielded += 1
                                self._yielded += 1
                                self.stats.seconds += time.perf_counter() - t0
                                yield Candidate(term, value, self._yielded - 1)
                                t0 = time.perf_counter()
                if not found:
                    break
                units_only = True
            if size == self.max_size:
                for st in self._states.values():
                    if size in st.buckets:
                        st.buckets[size].drop_values()
            self.stats.seconds += time.perf_counter() - t0
            self.stats.sympy_calls = self.canon.sympy_calls

    # -- one production at one size -------------------------------------------------------------

    def _apply_forwarding(self, name: str, prod: Production, size: int,
                          forward: bool) -> Iterator[tuple[str, Node, torch.Tensor]]:
        """``_apply`` of ``name``'s ``prod``, then (``forward``) the first (unit) production of each
        non-terminal that reads ``name`` first, on the terms just added: ``(owner, term, value)``."""
        for term, value in self._apply(self._states[name], prod, size):
            yield name, term, value
        if forward:
            for target in self._forward.get(name, ()):
                yield from self._apply_forwarding(target, self._states[target].nt.productions[0], size, True)

    def _apply(self, st: NTState, prod: Production, size: int) -> Iterator[tuple[Node, torch.Tensor]]:
        holes = prod.holes
        rest = size - self.costs[prod]
        if not holes:
            if rest == 0:
                yield from self._process(st, prod, size, [()], [])
            return
        for split in compositions(rest, len(holes)):
            buckets = []
            for h, s in zip(holes, split):
                b = self._states[cast(str, h.head)].buckets.get(s)  # a hole's head names its non-terminal
                if not b:
                    break
                buckets.append(b)
            else:
                if prod.template.kind == HOLE:
                    # A unit production reads a bucket that may still be filling at this size:
                    # take only the entries this production has not seen yet.
                    b = buckets[0]
                    done = st.unit_done.get((prod, size), 0)
                    st.unit_done[(prod, size)] = len(b)
                    combos: list[tuple[int, ...]] = [(i,) for i in range(done, len(b))]
                    for lo in range(0, len(combos), self.chunk):
                        yield from self._process(st, prod, size, combos[lo:lo + self.chunk], buckets)
                    continue
                for combos in self._chunks(buckets):
                    if self.interrupt is not None:
                        self.interrupt()
                    yield from self._process(st, prod, size, combos, buckets)

    def _chunks(self, buckets: list[Bucket]) -> Iterator[list[tuple[int, ...]]]:
        """All index combinations of ``buckets`` in chunks, in a fixed order.

        When one bucket is large, it varies fastest, in runs that stay inside one of its stored
        parts, and every other child is fixed within a chunk: then each child's values are a view
        (one row that broadcasts, or a slice), never a copy. Otherwise: lexicographic order."""
        sizes = [len(b) for b in buckets]
        big = max(range(len(buckets)), key=lambda j: sizes[j])
        if sizes[big] >= self.chunk // 4 and buckets[big].parts:
            others = [range(n) for j, n in enumerate(sizes) if j != big]
            runs = list(buckets[big].runs(self.chunk))
            for outer in itertools.product(*others):
                head, tail = outer[:big], outer[big:]
                for lo, hi in runs:
                    yield [head + (i,) + tail for i in range(lo, hi)]
            return
        it = itertools.product(*(range(n) for n in sizes))
        while True:
            combos = list(itertools.islice(it, self.chunk))
            if not combos:
                return
            yield combos

    def _process(self, st: NTState, prod: Production, size: int, combos: list[tuple[int, ...]],
                 buckets: list[Bucket]) -> Iterator[tuple[Node, torch.Tensor]]:
        stats = self.stats.size(size)
        stats.generated += len(combos)
        tmpl = prod.template
        pos = self._positions[prod] if self._positions is not None else None
        if pos is not None and pos.guards:
            # (0) the rule of gsum: drop sums of a position-free Map before they claim a canonical form
            defined = [c for c in combos if all(any(buckets[h].varies[c[h]] for h in g) for g in pos.guards)]
            stats.undefined += len(combos) - len(defined)
            combos = defined
        # (1) canonicalization, or syntactic de-duplication when it is off
        t_canon = time.perf_counter()
        watch = self.on_prune is not None
        canonical_prunes: list[tuple[Node, int]] = []  # reported once the chunk's survivors are settled
        survivors: list[tuple[tuple[int, ...], int, Node | None]] = []
        for combo in combos:
            node = fill(tmpl, tuple(b.terms[i] for b, i in zip(buckets, combo))) if watch else None
            if self.canonicalize:
                cid = self.canon.combine(tmpl, tuple(b.canon[i] for b, i in zip(buckets, combo)))
                if cid in st.canon_seen:
                    stats.canonical += 1
                    if watch:
                        assert node is not None  # built above whenever on_prune watches
                        canonical_prunes.append((node, cid))
                    continue
                st.canon_seen[cid] = node
            else:
                cid = -1
                if node is None:
                    node = fill(tmpl, tuple(b.terms[i] for b, i in zip(buckets, combo)))
                if node in st.syntax_seen:
                    stats.duplicates += 1
                    if watch:
                        assert self.on_prune is not None  # watch says so
                        self.on_prune(st.nt.name, node, "duplicate", node)
                    continue
                st.syntax_seen.add(node)
            survivors.append((combo, cid, node))
        self.stats.canonical_seconds += time.perf_counter() - t_canon
        if not survivors:
            self._report(st, canonical_prunes)
            return
        # (2) one batched evaluation of the production over all surviving combinations
        values = self._evaluate(tmpl, [c for c, _, _ in survivors], buckets, st.nt.type)
        # (3) observational equivalence
        keys = fingerprints(values, self.mantissa_bits) if self.equivalence and values is not None else None
        out = st.bucket(size)
        new_rows: list[int] = []
        for j, (combo, cid, node) in enumerate(survivors):
            if node is None:
                node = fill(tmpl, tuple(b.terms[i] for b, i in zip(buckets, combo)))
            if keys is not None:
                # ValueIndex stores objects; the only ones added to this non-terminal's index are its terms.
                earlier = cast("Node | None", st.values_seen.add(keys[j], node))
                if earlier is not None:
                    stats.equivalent += 1
                    if watch:
                        assert self.on_prune is not None  # watch says so
                        st.canon_seen[cid] = earlier
                        self.on_prune(st.nt.name, node, "equivalent", earlier)
                    continue
            out.terms.append(node)
            out.canon.append(cid)
            if pos is not None and st.nt.type == Type.MAP:
                out.varies.append(pos.varies or any(buckets[h].varies[combo[h]] for h in pos.holes))
            stats.kept += 1
            if values is None:
                out.ints.append(_int_value(node))
                continue
            new_rows.append(j)
            yield node, values[j]
        if new_rows and (size < self.max_size or st.nt.name in self._unit_targets):
            # Kept for bigger terms, or for a unit production reading this size. Otherwise the
            # chunk is freed, which keeps memory flat while the largest size streams.
            assert values is not None  # rows are only kept for tensor values (an Int non-terminal's are None)
            out.add_part(values, new_rows, len(out.terms) - len(new_rows))
        self._report(st, canonical_prunes)

    def _report(self, st: NTState, canonical_prunes: list[tuple[Node, int]]) -> None:
        for node, cid in canonical_prunes:
            # Only collected while on_prune watches, and then every canonical id seen maps to a term.
            earlier = st.canon_seen[cid]
            assert self.on_prune is not None and earlier is not None
            self.on_prune(st.nt.name, node, "canonical", earlier)

    def _evaluate(self, tmpl: Node, combos: list[tuple[int, ...]], buckets: list[Bucket],
                  nt_type: Type) -> torch.Tensor | None:
        """Values ``[B, ...]`` of the template on each combination (None for an Int non-terminal)."""
        if nt_type == Type.INT:
            return None
        holes = tmpl.holes()
        int_holes = [j for j, h in enumerate(holes) if h.type == Type.INT]
        if int_holes:
            # Int operands (topk's k, pow's n) are Python ints: evaluate each group of equal ints together.
            groups: dict[tuple[int, ...], list[int]] = {}
            for r, combo in enumerate(combos):
                groups.setdefault(tuple(buckets[j].ints[combo[j]] for j in int_holes), []).append(r)
            parts, order = [], []
            for ints, rows in groups.items():
                parts.append(self._evaluate_group(tmpl, [combos[r] for r in rows], buckets, nt_type,
                                                  dict(zip(int_holes, ints))))
                order.extend(rows)
            out = torch.cat(parts)
            inverse = torch.empty(len(order), dtype=torch.long)
            inverse[torch.as_tensor(order)] = torch.arange(len(order))
            return out.index_select(0, inverse.to(out.device))
        return self._evaluate_group(tmpl, combos, buckets, nt_type, {})

    def _evaluate_group(self, tmpl: Node, combos: list[tuple[int, ...]], buckets: list[Bucket], nt_type: Type,
                        ints: dict[int, int]) -> torch.Tensor:
        terms = self.terminals
        b_count = len(combos)
        hole_vals: list[torch.Tensor | int] = []
        for j, b in enumerate(buckets):
            # Int holes come grouped by value; the evaluator turns an int in a tensor position into a constant.
            hole_vals.append(ints[j] if j in ints else b.gather([c[j] for c in combos]))
        it = iter(hole_vals)

        def leaf(n: Node):
            if n.kind == HOLE:
                return next(it)
            return terms[cast(str, n.head)]  # the other leaves are terminals, named by their head

        # A non-Int template evaluates to a tensor: the evaluator turns an int hole into a constant tensor.
        v = cast(torch.Tensor, evaluate_with(tmpl, leaf, terms.dtype, terms.device))
        return _batch_shape(v, b_count, nt_type, self._map_shape)


def _int_value(node: Node) -> int:
    if node.kind != CONST:
        raise ValueError(f"an Int non-terminal derived a non-literal {node}")
    return int(node.head)


def _batch_shape(v: torch.Tensor, b: int, t: Type, map_shape: tuple[int, ...]) -> torch.Tensor:
    """Broadcast a value to its type's full batched shape ``[B, ...]``, so rows stack and hash alike."""
    n, k = map_shape[:2]
    full = {Type.REAL: (b, 1, 1), Type.VEC: (b, n, k), Type.MAP: (b,) + map_shape}[t]
    if tuple(v.shape) != full:
        v = torch.broadcast_to(v, full).contiguous()
    return v
