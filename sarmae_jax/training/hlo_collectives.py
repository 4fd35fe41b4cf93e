"""The collectives of a compiled program, read from its HLO text (`jax.stages.Compiled.as_text()`).

Counts per kind (all-gather, reduce-scatter, all-reduce, all-to-all, collective-permute, others) and the
bytes of the full arrays they move, per device and per step:

* every computation's instructions are weighted by how often one step runs it: a `while` body by its
  trip count (a scan over layers runs its body `depth` times), everything else once. The trip count is
  the `known_trip_count` the compiler noted, or, as the TPU compiler notes none, the N of a loop
  condition `counter < N` with N a constant (the form of `lax.scan` / `fori_loop`, counting from 0 by
  1). A loop of any other form (a rejection sampler) counts once and is reported;
  both branches of a `conditional` count (an upper bound);
* bytes are the size of the collective's full array: the gathered result of an all-gather, the array
  reduced by an all-reduce or a reduce-scatter, the array exchanged by an all-to-all or permute. A
  reduce-scatter's full array is its input: the larger array of an async start's tuple, and for the
  synchronous form (whose type is the scattered shard) the shard times its replica group's size;
* the TPU compiler writes a reduce-scatter as a fusion (`all-reduce-scatter`) of an all-reduce and a
  slice: an all-reduce inside such a fusion counts as the reduce-scatter it is;
* asynchronous pairs (`*-start` / `*-done`) count once, at the start.
"""
from __future__ import annotations

import dataclasses
import re

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute", "other")

_OPCODE_KIND = {
    "all-gather": "all-gather", "all-gather-start": "all-gather",
    "all-reduce": "all-reduce", "all-reduce-start": "all-reduce",
    "reduce-scatter": "reduce-scatter", "reduce-scatter-start": "reduce-scatter",
    "all-to-all": "all-to-all", "ragged-all-to-all": "all-to-all", "all-to-all-start": "all-to-all",
    "collective-permute": "collective-permute", "collective-permute-start": "collective-permute",
    "collective-broadcast": "other", "collective-broadcast-start": "other",
}
_DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1, "s16": 2, "u16": 2, "f16": 2,
    "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5,
}
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_DTYPE_BYTES, key=len, reverse=True)) + r")\[([\d,]*)\]")
INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\(")
_CALLEE = re.compile(r"\b(calls|to_apply|body|condition)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"\b(?:branch_computations|called_computations)=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_ROOT_LESS_THAN = re.compile(r"^\s*ROOT\s+%?[\w.\-]+\s*=\s*pred\[\]\S*\s+compare\(%?([\w.\-]+),\s*%?([\w.\-]+)\),"
                             r"\s*direction=LT\b")
_S32_CONSTANT = re.compile(r"^\s*%?([\w.\-]+)\s*=\s*s32\[\]\S*\s+constant\((\d+)\)")
_TUPLE_ELEMENT = re.compile(r"^\s*%?([\w.\-]+)\s*=\s*s32\[\]\S*\s+get-tuple-element\(")
_GROUPS_LISTED = re.compile(r"replica_groups=\{\{([\d,]*)\}")
_GROUPS_IOTA = re.compile(r"replica_groups=\[\d+,(\d+)\]<=")


@dataclasses.dataclass
class Collectives:
    """Per-device collectives of one step: `count[kind]`, `bytes[kind]` (see the module docstring)."""

    count: dict[str, int]
    bytes: dict[str, int]
    in_program: dict[str, int]  # collective instructions in the program text, loops not unrolled
    loops_with_unknown_trip_count: int  # while loops counted once


def group_size(line: str) -> int:
    """Devices in each replica group of a collective instruction (`{{0,1,2,3},...}` or `[G,S]<=[N]`)."""
    listed = _GROUPS_LISTED.search(line)
    if listed:
        return len([d for d in listed.group(1).split(",") if d])
    iota = _GROUPS_IOTA.search(line)
    if iota:
        return int(iota.group(1))
    raise ValueError(f"a reduce-scatter without replica groups: {line.strip()[:200]}")


def array_bytes(type_text: str) -> list[int]:
    """Bytes of every array in an HLO type: 'bf16[128,64]{0,1:T(8,128)}' -> [16384]; tuples give several."""
    out = []
    for dtype, dims in _ARRAY.findall(type_text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        out.append(int(n * _DTYPE_BYTES[dtype]))
    return out


def computations(hlo_text: str) -> tuple[dict[str, list[str]], str]:
    """{computation name: its instruction lines}, in text order, and the entry computation's name."""
    comps: dict[str, list[str]] = {}
    entry = None
    current = None
    for line in hlo_text.splitlines():
        if current is None:
            if line and not line[0].isspace() and line.rstrip().endswith("{") and not line.startswith("HloModule"):
                head = line.split("(", 1)[0].split()
                is_entry = head[0] == "ENTRY"
                current = (head[1] if is_entry else head[0]).lstrip("%")
                comps[current] = []
                if is_entry:
                    entry = current
        elif line.startswith("}"):
            current = None
        else:
            comps[current].append(line)
    if entry is None:
        raise ValueError("not the HLO text of a compiled program: no ENTRY computation")
    return comps, entry


def _counter_bound(condition: list[str]) -> int | None:
    """N when a loop condition computation is `ROOT compare(get-tuple-element(...), constant(N)), LT`."""
    constants = dict(m.groups() for m in map(_S32_CONSTANT.match, condition) if m)
    elements = {m.group(1) for m in map(_TUPLE_ELEMENT.match, condition) if m}
    for line in condition:
        root = _ROOT_LESS_THAN.match(line)
        if root and root.group(1) in elements and root.group(2) in constants:
            return int(constants[root.group(2)])
    return None


def trip_count(line: str, comps: dict[str, list[str]]) -> int | None:
    found = _TRIP_COUNT.search(line)
    if found:
        return int(found.group(1))
    condition = re.search(r"\bcondition=%?([\w.\-]+)", line)
    return _counter_bound(comps.get(condition.group(1), [])) if condition else None


def loop_trip_counts(hlo_text: str) -> list[int | None]:
    """The trip count of every `while` loop in the program (None where it is not a counted loop)."""
    comps, _ = computations(hlo_text)
    out = []
    for lines in comps.values():
        for line in lines:
            match = INSTRUCTION.match(line)
            if match and match.group(2) == "while":
                out.append(trip_count(line, comps))
    return out


def parse(hlo_text: str) -> Collectives:
    """Collectives per step of the program in `hlo_text` (the text of one compiled HLO module)."""
    comps, entry = computations(hlo_text)
    # Callers come after their callees in the text: walk it backwards from the entry computation.
    runs = {name: 0 for name in comps}
    runs[entry] = 1
    unknown_loops = 0
    for name in reversed(list(comps)):
        if not runs[name]:
            continue
        for line in comps[name]:
            match = INSTRUCTION.match(line)
            opcode = match.group(2) if match else ""
            trips = 1
            if opcode == "while":
                known = trip_count(line, comps)
                trips = known if known is not None else 1
                unknown_loops += known is None
            callees = [c for field, c in _CALLEE.findall(line) if field != "to_apply"]
            for group in _BRANCHES.findall(line):
                callees += [c.strip().lstrip("%") for c in group.split(",") if c.strip()]
            for callee in callees:
                if callee in runs:
                    runs[callee] += runs[name] * trips
    count = dict.fromkeys(KINDS, 0)
    nbytes = dict.fromkeys(KINDS, 0)
    in_program = dict.fromkeys(KINDS, 0)
    for name, lines in comps.items():
        in_reduce_scatter = "reduce-scatter" in name
        for line in lines:
            match = INSTRUCTION.match(line)
            if not match or match.group(2) not in _OPCODE_KIND:
                continue
            type_text, opcode = match.groups()
            kind = _OPCODE_KIND[opcode]
            if kind == "all-reduce" and in_reduce_scatter:
                kind = "reduce-scatter"
            sizes = array_bytes(type_text)
            # An async start's type is a tuple of operands and results: its largest array is the full one.
            size = max(sizes, default=0) if opcode.endswith("-start") else sum(sizes)
            if opcode == "reduce-scatter":  # its type is the scattered shard: the input is group-size times it
                size *= group_size(line)
            in_program[kind] += 1
            count[kind] += runs[name]
            nbytes[kind] += runs[name] * size
    return Collectives(count=count, bytes=nbytes, in_program=in_program, loops_with_unknown_trip_count=unknown_loops)
