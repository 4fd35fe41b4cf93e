"""HBM traffic of a compiled program per device and step, read from its HLO text (`Compiled.as_text()`).

Why not the compiler's cost analysis: its "bytes accessed" counts every operand of an instruction whole,
and a step that slices a block's weights out of the stacked `[depth, ...]` parameters (an unrolled layer
scan) reads one slice while the cost analysis counts the whole stack at every slice. On the ViT-B/16 recipe
(v5e:2x2, 16 per chip) that is 39.2 GB against 10.3 GB counted here.

What is counted, for each top-level instruction of the computations a step runs (the entry computation,
`while` bodies and conditions times their trip counts, both branches of a `conditional`, `call` targets;
the bodies of fusions are not separate traffic: a fusion counts at its boundary):

* an instruction reads its operands and writes its results: operand bytes + result bytes;
* a slice (`slice`, `dynamic-slice`, `slice-start`) moves what it cuts out: twice the slice's bytes;
  `dynamic-update-slice` twice the update's; `copy-start` twice the array copied;
* a fusion reads a parameter whole unless every use inside it (nested fusions included) only slices it,
  then what the slices cut out; a parameter a fusion updates in place (`dynamic-update-slice` root) is not
  read, and that result is written as the update's bytes;
* other asynchronous starts count once (operands + the largest result), their `*-done` nothing;
* views and bookkeeping move nothing: `parameter`, `get-tuple-element`, `tuple`, `bitcast`, `constant`,
  `after-all`, `partition-id`, `replica-id`, `opt-barrier`, and the `while` / `conditional` / `call`
  instructions themselves (their bodies are counted).

It is an estimate of the program's HBM reads and writes, not a measurement: data a fusion keeps in VMEM
across instructions or an operand read twice inside one fusion is not seen.
"""
from __future__ import annotations

import re

from sarmae_jax.training import hlo_collectives

_FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all", "partition-id",
         "replica-id", "opt-barrier", "while", "conditional", "call"}
_SLICES = {"slice", "dynamic-slice", "slice-start"}
_BRANCHES = re.compile(r"\bbranch_computations=\{([^}]*)\}")
_BODY = re.compile(r"\b(body|condition)=%?([\w.\-]+)")
_CALL_TARGET = re.compile(r"\bto_apply=%?([\w.\-]+)")


_NAME = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=")
_OPERAND = re.compile(r"%([\w.\-]+)")
_CALLS = re.compile(r"\bcalls=%?([\w.\-]+)")
_SCALAR_BYTES = 8  # an async start's context (`s32[]`, `u32[]`) rides in its result tuple


def _operand_names(line: str, start: int) -> list[str]:
    """The `%name` operands between the opening parenthesis before `start` and its matching closing one."""
    depth, i = 1, start
    while i < len(line) and depth:
        depth += {"(": 1, ")": -1}.get(line[i], 0)
        i += 1
    return _OPERAND.findall(line[start:i - 1])


def _instructions(lines: list[str]):
    """(name, opcode, result array bytes, operand names, line) of each instruction line."""
    for line in lines:
        match = hlo_collectives.INSTRUCTION.match(line)
        if match:
            type_text, opcode = match.groups()
            yield (_NAME.match(line).group(1), opcode, hlo_collectives.array_bytes(type_text),
                   _operand_names(line, match.end()), line)


def _fusion_io(comps: dict[str, list[str]], name: str, cache: dict) -> tuple[dict[int, int], dict[int, int]]:
    """For the fused computation `name`: {parameter index: bytes read} for each parameter every use of which
    only slices it (directly or in a nested fusion) or is the in-place target of a `dynamic-update-slice`;
    and {result index: bytes written} for results that are a `dynamic-update-slice` (the update's bytes).
    Parameters and results not listed are read or written whole."""
    if name in cache:
        return cache[name]
    params, sizes, uses, defs, root = {}, {}, {}, {}, None
    for inst, opcode, results, operands, line in _instructions(comps.get(name, [])):
        sizes[inst], defs[inst] = results, (opcode, operands)
        if line.lstrip().startswith("ROOT"):
            root = inst
        if opcode == "parameter":
            params[inst] = int(re.search(r"parameter\((\d+)\)", line).group(1))
            continue
        callee = _CALLS.search(line) if opcode == "fusion" else None
        inner_reads = _fusion_io(comps, callee.group(1), cache)[0] if callee else {}
        for position, operand in enumerate(operands):
            if operand not in params:
                continue
            if opcode in ("slice", "dynamic-slice") and position == 0:
                read = sum(results)
            elif opcode == "dynamic-update-slice" and position == 0:
                read = 0  # updated in place
            else:
                read = inner_reads.get(position)
            uses.setdefault(operand, []).append(read)
    reads = {params[p]: sum(u) for p, u in uses.items() if all(r is not None for r in u)}
    elements = defs[root][1] if root is not None and defs[root][0] == "tuple" else [root]
    writes = {}
    for index, element in enumerate(elements):
        opcode, operands = defs.get(element, ("", []))
        if opcode == "dynamic-update-slice" and len(operands) > 1:
            writes[index] = sum(sizes.get(operands[1], ()))
    cache[name] = (reads, writes)
    return cache[name]


def computation_bytes(comps: dict[str, list[str]], name: str, cache: dict | None = None) -> int:
    """HBM bytes one run of computation `name`'s instructions moves (module docstring). Compiled HLO names
    its operands without their types: an operand's size is its defining instruction's result type."""
    cache = {} if cache is None else cache
    sizes: dict[str, list[int]] = {}
    total = 0
    for inst, opcode, results, operand_names, line in _instructions(comps[name]):
        sizes[inst] = results
        if opcode in _FREE or opcode.endswith("-done"):
            continue
        operands = [sum(sizes.get(o, ())) for o in operand_names]
        if opcode in ("slice", "dynamic-slice"):
            total += 2 * sum(results)
        elif opcode == "slice-start":  # results: (operand), slice, context
            total += 2 * sum(b for b in results[len(results) - 2:-1] if b > _SCALAR_BYTES)
        elif opcode == "dynamic-update-slice":
            total += 2 * (operands[1] if len(operands) > 1 else 0)
        elif opcode == "copy-start":  # results: destination, source, context
            total += 2 * (results[0] if results else 0)
        elif opcode.endswith("-start"):
            total += sum(operands) + max(results, default=0)
        elif opcode == "fusion" and _CALLS.search(line):
            reads, writes = _fusion_io(comps, _CALLS.search(line).group(1), cache)
            total += sum(reads.get(i, b) for i, b in enumerate(operands))
            total += sum(writes.get(i, b) for i, b in enumerate(results))
        else:
            total += sum(operands) + sum(results)
    return total


def _control_runs(comps: dict[str, list[str]], entry: str) -> tuple[dict[str, int], int]:
    """How often one step runs each computation reached by control flow; and loops of unknown trip count."""
    runs = dict.fromkeys(comps, 0)
    runs[entry] = 1
    unknown = 0
    for name in reversed(list(comps)):  # callers come after their callees in the text
        if not runs[name]:
            continue
        for line in comps[name]:
            match = hlo_collectives.INSTRUCTION.match(line)
            opcode = match.group(2) if match else ""
            callees, trips = [], 1
            if opcode == "while":
                known = hlo_collectives.trip_count(line, comps)
                trips = known if known is not None else 1
                unknown += known is None
                callees = [c for _, c in _BODY.findall(line)]
            elif opcode == "conditional":
                callees = [c.strip().lstrip("%") for g in _BRANCHES.findall(line) for c in g.split(",") if c.strip()]
            elif opcode == "call":
                callees = _CALL_TARGET.findall(line)
            for callee in callees:
                if callee in runs:
                    runs[callee] += runs[name] * trips
    return runs, unknown


def hbm_bytes(hlo_text: str) -> dict[str, int]:
    """`{"bytes": per device per step, "loops_with_unknown_trip_count": n}` for the program in `hlo_text`."""
    comps, entry = hlo_collectives.computations(hlo_text)
    runs, unknown = _control_runs(comps, entry)
    cache: dict = {}
    total = sum(runs[name] * computation_bytes(comps, name, cache) for name in comps if runs[name])
    return {"bytes": int(total), "loops_with_unknown_trip_count": unknown}
