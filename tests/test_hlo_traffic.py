"""HBM traffic read from compiled HLO text: operands and results by their defining instructions' types, slices
by what they cut out, fusions that only slice a stacked operand or update it in place, loop trip counts, views
free. Small hand-written modules in the compiled-HLO syntax (operands named without types, as libtpu prints)."""
from sarmae_jax.training import hlo_traffic

MODULE = """HloModule jit_train_step, entry_computation_layout={(f32[12,256,256]{2,1,0})->f32[12,256,256]{2,1,0}}

%slice_one (param_0.1: f32[12,256,256], param_1.1: s32[]) -> bf16[256,256] {
  %param_0.1 = f32[12,256,256]{2,1,0:T(8,128)} parameter(0)
  %param_1.1 = s32[] parameter(1)
  %zero = s32[] constant(0)
  %ds = f32[1,256,256]{2,1,0} dynamic-slice(%param_0.1, %param_1.1, %zero, %zero), dynamic_slice_sizes={1,256,256}
  %r = f32[256,256]{1,0} reshape(%ds)
  ROOT %c = bf16[256,256]{1,0:T(8,128)(2,1)} convert(%r)
}

%outer (param_0.2: f32[12,256,256], param_1.2: s32[], param_2.2: bf16[64,256]) -> bf16[64,256] {
  %param_0.2 = f32[12,256,256]{2,1,0} parameter(0)
  %param_1.2 = s32[] parameter(1)
  %param_2.2 = bf16[64,256]{1,0} parameter(2)
  %w = bf16[256,256]{1,0} fusion(%param_0.2, %param_1.2), kind=kLoop, calls=%slice_one
  ROOT %dot = bf16[64,256]{1,0} convolution(%param_2.2, %w), dim_labels=bf_io->bf
}

%update_in_place (param_0.3: f32[12,256,256], param_1.3: f32[1,256,256], param_2.3: s32[]) -> f32[12,256,256] {
  %param_0.3 = f32[12,256,256]{2,1,0} parameter(0)
  %param_1.3 = f32[1,256,256]{2,1,0} parameter(1)
  %param_2.3 = s32[] parameter(2)
  %z = s32[] constant(0)
  ROOT %dus = f32[12,256,256]{2,1,0} dynamic-update-slice(%param_0.3, %param_1.3, %param_2.3, %z, %z)
}

%elementwise (param_0.4: bf16[64,256]) -> bf16[64,256] {
  %param_0.4 = bf16[64,256]{1,0} parameter(0)
  ROOT %n = bf16[64,256]{1,0} negate(%param_0.4)
}

%body (p: (s32[], bf16[64,256])) -> (s32[], bf16[64,256]) {
  %p = (s32[]{:T(128)}, bf16[64,256]{1,0}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  %x = bf16[64,256]{1,0} get-tuple-element(%p), index=1
  %y = bf16[64,256]{1,0} fusion(%x), kind=kLoop, calls=%elementwise
  %one = s32[] constant(1)
  %next = s32[]{:T(128)} add(%i, %one)
  ROOT %t = (s32[]{:T(128)}, bf16[64,256]{1,0}) tuple(%next, %y)
}

%cond (p.1: (s32[], bf16[64,256])) -> pred[] {
  %p.1 = (s32[]{:T(128)}, bf16[64,256]{1,0}) parameter(0)
  %limit = s32[]{:T(128)} constant(5)
  %i.1 = s32[]{:T(128)} get-tuple-element(%p.1), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i.1, %limit), direction=LT
}

ENTRY %main (stack: f32[12,256,256], x: bf16[64,256], g: f32[1,256,256]) -> f32[12,256,256] {
  %stack = f32[12,256,256]{2,1,0} parameter(0)
  %x = bf16[64,256]{1,0} parameter(1)
  %g = f32[1,256,256]{2,1,0} parameter(2)
  %k = s32[] constant(3)
  %h = bf16[64,256]{1,0} fusion(%stack, %k, %x), kind=kOutput, calls=%outer
  %bc = bf16[64,256]{1,0} bitcast(%h)
  %zero = s32[]{:T(128)} constant(0)
  %init = (s32[]{:T(128)}, bf16[64,256]{1,0}) tuple(%zero, %bc)
  %loop = (s32[]{:T(128)}, bf16[64,256]{1,0}) while(%init), condition=%cond, body=%body
  %sl = ((f32[12,256,256]{2,1,0}), f32[2,256,256]{2,1,0}, s32[]) slice-start(%stack), slice={[0:2], [0:256], [0:256]}
  %sd = f32[2,256,256]{2,1,0} slice-done(%sl)
  ROOT %upd = f32[12,256,256]{2,1,0} fusion(%stack, %g, %k), kind=kLoop, calls=%update_in_place
}
"""

LAYER = 256 * 256 * 4  # one f32 [256, 256] slice of the stack
ACT = 64 * 256 * 2  # one bf16 [64, 256] activation


def test_traffic_counts_slices_in_place_updates_and_loop_trips():
    expected = (
        LAYER + ACT + ACT      # %h: the nested fusion slices one layer of the stack; x in, h out
        + 5 * (ACT + ACT)      # the loop body's elementwise fusion, 5 trips (counter < 5)
        + 2 * 2 * LAYER        # slice-start: the two layers it cuts out, read and written
        + LAYER + LAYER        # %upd: the stack updated in place: the update read and written, nothing else
        + 2 * 4                # the layer index %k, read by both fusions
        + 5 * 3 * 4            # the loop counter's add (two s32 in, one out) per trip
        + 5 * (2 * 4 + 1)      # the loop condition's compare per trip (counted at the body's trip count)
    )
    assert hlo_traffic.hbm_bytes(MODULE) == {"bytes": expected, "loops_with_unknown_trip_count": 0}
    # The whole-operand count the compiler's cost analysis uses would be far larger: 12 layers per use.
    assert expected < 12 * LAYER
