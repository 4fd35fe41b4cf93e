"""Collectives read from compiled HLO text: kinds, bytes, loop trip counts, the TPU compiler's reduce-scatter
fusion, asynchronous pairs. Small hand-written modules in the compiled-HLO syntax (the TPU-compiled step
itself is checked in test_tpu_plan.py)."""
import pytest

from sarmae_jax.training import hlo_collectives

MODULE = """HloModule jit_train_step, entry_computation_layout={(f32[8,4]{1,0})->f32[8,4]{1,0}}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%all-reduce-scatter.3 (input: f32[8,4]) -> f32[4,4] {
  %input = f32[8,4]{1,0:T(8,128)} parameter(0)
  %all-reduce.9 = f32[8,4]{1,0:T(8,128)} all-reduce(%input), channel_id=1, replica_groups={{0,1}}, to_apply=%add
  %pid = u32[] partition-id()
  ROOT %slice = f32[4,4]{1,0} dynamic-slice(%all-reduce.9, %pid, %pid), dynamic_slice_sizes={4,4}
}

%body (p: (s32[], bf16[2,16])) -> (s32[], bf16[2,16]) {
  %p = (s32[]{:T(128)}, bf16[2,16]{1,0:T(8,128)(2,1)}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  %w = bf16[2,16]{1,0} get-tuple-element(%p), index=1
  %ag = bf16[4,16]{1,0:T(8,128)(2,1)} all-gather(%w), channel_id=2, replica_groups={{0,1}}, dimensions={0}
  %one = s32[] constant(1)
  %next = s32[]{:T(128)} add(%i, %one)
  ROOT %t = (s32[]{:T(128)}, bf16[2,16]{1,0}) tuple(%next, %w)
}

%cond (p.1: (s32[], bf16[2,16])) -> pred[] {
  %p.1 = (s32[]{:T(128)}, bf16[2,16]{1,0}) parameter(0)
  %limit = s32[]{:T(128)} constant(12)
  %i.1 = s32[]{:T(128)} get-tuple-element(%p.1), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i.1, %limit), direction=LT, metadata={op_name="while/cond/lt"}
}

%sampler_cond (q: (s32[], pred[4])) -> pred[] {
  %q = (s32[], pred[4]) parameter(0)
  %flags = pred[4]{0} get-tuple-element(%q), index=1
  %any = pred[4]{0:T(512)} all-reduce(%flags), channel_id=3, replica_groups={{0,1}}, to_apply=%add
  ROOT %r = pred[] constant(false)
}

%sampler_body (q.1: (s32[], pred[4])) -> (s32[], pred[4]) {
  ROOT %q.1 = (s32[], pred[4]) parameter(0)
}

%fused (a: f32[8,4]) -> f32[4,4] {
  %a = f32[8,4]{1,0} parameter(0)
  ROOT %f = f32[4,4]{1,0} fusion(%a), kind=kCustom, calls=%all-reduce-scatter.3
}

ENTRY %main (arg: f32[8,4], w0: bf16[2,16]) -> f32[8,4] {
  %arg = f32[8,4]{1,0} parameter(0)
  %w0 = bf16[2,16]{1,0} parameter(1)
  %zero = s32[] constant(0)
  %init = (s32[], bf16[2,16]{1,0}) tuple(%zero, %w0)
  %loop = (s32[]{:T(128)}, bf16[2,16]{1,0}) while(%init), condition=%cond, body=%body
  %flags0 = pred[4]{0} constant({0,0,0,0})
  %init2 = (s32[], pred[4]) tuple(%zero, %flags0)
  %sampler = (s32[], pred[4]) while(%init2), condition=%sampler_cond, body=%sampler_body
  %rs = f32[4,4]{1,0} fusion(%arg), kind=kCustom, calls=%all-reduce-scatter.3
  %ars = (f32[8,4]{1,0}, f32[8,4]{1,0}) all-reduce-start(%arg), channel_id=4, replica_groups={{0,1}}, to_apply=%add
  %ard = f32[8,4]{1,0} all-reduce-done(%ars)
  %a2a = f32[8,4]{1,0} all-to-all(%arg), channel_id=5, replica_groups={{0,1}}, dimensions={0}
  %cp = f32[8,4]{1,0} collective-permute(%arg), channel_id=6, source_target_pairs={{0,1},{1,0}}
  ROOT %out = f32[8,4]{1,0} add(%ard, %a2a)
}
"""


def test_kinds_bytes_and_loop_trip_counts():
    c = hlo_collectives.parse(MODULE)
    # The all-gather sits in a loop `i < 12` from 0: 12 per step, each of the gathered bf16[4,16] (128 B).
    assert c.count["all-gather"] == 12 and c.bytes["all-gather"] == 12 * 4 * 16 * 2
    # The all-reduce inside the all-reduce-scatter fusion is a reduce-scatter of the f32[8,4] array; the
    # entry's fusion runs it once (the unused %fused computation is never called).
    assert c.count["reduce-scatter"] == 1 and c.bytes["reduce-scatter"] == 8 * 4 * 4
    # all-reduce: the async pair once (its start's largest array), plus the sampler's flag reduction in a loop
    # of unknown length, counted once.
    assert c.count["all-reduce"] == 2 and c.bytes["all-reduce"] == 8 * 4 * 4 + 4
    assert c.loops_with_unknown_trip_count == 1
    assert (c.count["all-to-all"], c.bytes["all-to-all"]) == (1, 128)
    assert (c.count["collective-permute"], c.bytes["collective-permute"]) == (1, 128)
    assert c.in_program == {"all-gather": 1, "reduce-scatter": 1, "all-reduce": 2, "all-to-all": 1,
                            "collective-permute": 1, "other": 0}
    assert sorted(hlo_collectives.loop_trip_counts(MODULE), key=str) == [12, None]


def test_array_bytes_of_types():
    assert hlo_collectives.array_bytes("bf16[128,64]{0,1:T(8,128)(2,1)S(1)}") == [16384]
    assert hlo_collectives.array_bytes("(f32[4,5]{1,0}, /*index=5*/u32[], pred[3])") == [80, 4, 3]


def test_text_without_an_entry_computation_is_refused():
    with pytest.raises(ValueError, match="no ENTRY computation"):
        hlo_collectives.parse("HloModule m\n\n%f (x: f32[]) -> f32[] {\n  ROOT %x = f32[] parameter(0)\n}\n")


REDUCE_SCATTERS = """HloModule m

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

ENTRY %main (arg: f32[16,4]) -> f32[4,4] {
  %arg = f32[16,4]{1,0} parameter(0)
  %sync = f32[4,4]{1,0} reduce-scatter(%arg), channel_id=1, replica_groups={{0,1,2,3}}, dimensions={0}, to_apply=%add
  %iota = f32[8,4]{1,0} reduce-scatter(%arg), channel_id=2, replica_groups=[4,2]<=[8], dimensions={0}, to_apply=%add
  %start = ((f32[16,4]{1,0}), f32[4,4]{1,0}) reduce-scatter-start(%arg), channel_id=3, replica_groups={{0,1,2,3}}, dimensions={0}, to_apply=%add
  %done = f32[4,4]{1,0} reduce-scatter-done(%start)
  ROOT %out = f32[4,4]{1,0} add(%sync, %done)
}
"""


def test_a_reduce_scatter_counts_its_full_input_in_both_forms():
    """Synchronous (its type is the shard: times the group size) and async (the start's larger array)."""
    c = hlo_collectives.parse(REDUCE_SCATTERS)
    full = 16 * 4 * 4
    assert c.count["reduce-scatter"] == 3 and c.bytes["reduce-scatter"] == 3 * full
    with pytest.raises(ValueError, match="a reduce-scatter without replica groups"):
        hlo_collectives.parse(REDUCE_SCATTERS.replace("replica_groups={{0,1,2,3}}, dimensions={0}, to_apply=%add\n  %iota",
                                                      "dimensions={0}, to_apply=%add\n  %iota"))
