"""Every exercise has an answer in solutions/: each test runs one and asserts what its prose claims. Timings
are asserted only as ratios with room for a busy machine; counts and tokens exactly."""
import pytest

import minigpt
from chapters import ch01_naive
from solutions import ch01_naive as s1
from solutions import ch02_padded as s2
from solutions import ch03_continuous as s3
from solutions import ch04_paged as s4
from solutions import ch05_async as s5
from solutions import ch06_compiled as s6
from tests.conftest import cuda


@pytest.fixture(scope="module")
def model():
    return minigpt.from_config("tiny")


# ----- chapter 1 ---------------------------------------------------------------------------------------
def test_ch01_exercise1_without_a_cache_the_tokens_are_the_same_and_a_step_costs_the_length(model):
    r = s1.exercise_1(model)
    assert r["same_tokens"]
    assert (r["tokens_computed"], r["tokens_computed_with_cache"]) == (390, 33)
    assert r["step_s"][400] > 3 * r["step_s"][50]  # 8x the length: at least linear
    assert r["cached_step_s"] < r["step_s"][400] / 3


def test_ch01_exercise2_decode_dominates_and_the_context_adds_few_bytes(model):
    r = s1.exercise_2(model, num_requests=16)
    assert r["decode_s"] > 5 * r["prefill_s"]
    assert r["prefills"] == 16 and r["decode_steps"] > 20 * r["prefills"]
    assert r["cpu_decode_step_s"][1000] < 2 * r["cpu_decode_step_s"][10]
    assert r["qwen_weight_bytes"] == 2 * 596_049_920  # 1.19 GB in bf16
    assert r["qwen_kv_bytes"] == {10: 1_146_880, 1000: 114_688_000}
    assert r["qwen_kv_bytes"][1000] < 0.1 * r["qwen_weight_bytes"]


def test_ch01_exercise3_a_seeded_request_samples_the_same_tokens_alone_and_beside_others(model):
    r = s1.exercise_3(model)
    tokens = r["alone"][0]
    assert r["alone"][1] == r["beside_others"] == r["in_a_ch03_batch"] == tokens
    assert r["seed_2"] != tokens and r["greedy"] != tokens


# ----- chapter 2 ---------------------------------------------------------------------------------------
def test_ch02_exercise1_sorting_by_prompt_length_cuts_prefill_waste_not_decode_waste(model):
    w = s2.exercise_1(model)
    assert w["by_prompt_length"]["prefill"] < w["arrival"]["prefill"] / 2  # W1-small: 47% -> 17%
    assert abs(w["by_prompt_length"]["decode"] - w["arrival"]["decode"]) < 0.05  # 43% -> 41%
    assert w["by_output_length"]["decode"] < w["arrival"]["decode"] / 2 and w["by_output_length"]["prefill"] > 0.4


def test_ch02_exercise2_batching_helps_until_steps_stop_being_free_and_padding_grows(model):
    r = s2.exercise_2(model, batch_sizes=(1, 2, 16), num_requests=16, rows=(1, 64))
    assert r["tokens_per_s"][16] > 1.5 * r["tokens_per_s"][1]
    assert r["prefill_waste"][1] == r["decode_waste"][1] == 0
    assert 0 < r["prefill_waste"][2] < r["prefill_waste"][16] and 0 < r["decode_waste"][2] < r["decode_waste"][16]
    step = r["decode_step_s"]
    assert step[1] < step[64] < 16 * step[1]  # 64 rows cost more than 1, far less than 64 times


def test_ch02_exercise3_one_long_request_leaves_the_others_rows_idle(model):
    r = s2.exercise_3(model)
    assert (r["idle_rows"], r["row_steps"]) == (630, 792) and r["decode_waste"] == pytest.approx(0.795, abs=1e-3)
    assert r["decode_waste_even"] == 0
    assert (r["ch02_forwards_15_requests"], r["ch03_steps_15_requests"]) == (110, 100)


# ----- chapter 3 ---------------------------------------------------------------------------------------
def test_ch03_exercise1_a_tiny_budget_chunks_every_prompt_and_changes_no_token(model):
    r = s3.exercise_1(model)
    assert r["same_tokens"]
    assert r["steps"][16] > r["steps"][2048] and r["largest_step"][16] <= 16


def test_ch03_exercise2_a_request_joins_at_the_next_step_not_after_a_batch(model):
    ttft = s3.exercise_2(model)
    assert ttft["ch03_continuous"]["p50_s"] < ttft["ch02_padded"]["p50_s"] / 5


def test_ch03_exercise3_reference_attention_is_a_call_per_sequence_per_layer(model):
    r = s3.exercise_3(model)
    assert r["attention_calls"] == {"batched": 4, "reference": 64}  # 4 layers; 16 sequences x 4 layers
    assert r["tokens"]["reference"] == r["tokens"]["batched"]


# ----- chapter 4 ---------------------------------------------------------------------------------------
def test_ch04_exercise1_a_small_pool_preempts_and_changes_no_token(model):
    r = s4.exercise_1(model, num_blocks=20, num_requests=12)
    requests = minigpt.get_workload("W1-small").requests(model.config.vocab_size, 12)
    assert r["small"]["preemptions"] > 0
    assert r["small"]["tokens"] == [c.tokens for c in ch01_naive.generate(model, requests)]


def test_ch04_exercise1_forty_blocks_on_w1_small_recompute_and_take_more_steps(model):
    r = s4.exercise_1(model)
    roomy, small = r["roomy"], r["small"]
    assert small["tokens"] == roomy["tokens"] and (small["num_blocks"], roomy["num_blocks"]) == (40, 199)
    assert (small["preemptions"], roomy["preemptions"]) == (13, 0)
    assert (small["steps"], roomy["steps"]) == (233, 86)
    assert (small["tokens_computed"], roomy["tokens_computed"]) == (3685, 2908)  # 777 recomputed
    assert small["mean_running"] < roomy["mean_running"] / 2


def test_ch04_exercise2_block_size_trades_table_width_for_slack(model):
    r = s4.exercise_2(model)
    assert [(r[b]["num_blocks"], r[b]["table_width"]) for b in (1, 16, 256)] == [(2940, 158), (199, 10), (32, 1)]
    assert r[1]["kv_utilisation"] == 1.0
    assert r[16]["kv_utilisation"] == pytest.approx(0.905, abs=0.005)
    assert r[256]["kv_utilisation"] == pytest.approx(0.283, abs=0.005)
    assert r[1]["tokens"] == r[16]["tokens"] == r[256]["tokens"]


def test_ch04_exercise3_a_shared_system_prompt_saves_full_blocks_and_steps(model):
    n = 16
    r = s4.exercise_3(model, num_requests=n)
    runs = [r[(attention, share)] for attention in ("batched", "reference") for share in (False, True)]
    assert all(run["tokens"] == runs[0]["tokens"] for run in runs)
    for attention in ("batched", "reference"):
        plain, shared = r[(attention, False)], r[(attention, True)]
        assert shared["prefix_hit_tokens"] == (n - 1) * 192  # 12 full blocks of the 200-token prefix
        assert shared["prefill_tokens"] == plain["prefill_tokens"] - shared["prefix_hit_tokens"]
        assert set(shared["first_token_steps"]) == {0} and max(plain["first_token_steps"]) > 0
    assert r[("reference", True)]["ttft_p50_s"] < r[("reference", False)]["ttft_p50_s"]
    assert r["twins_hit_tokens"] == {32: 16, 33: 32}  # at least one prompt token is computed


# ----- chapter 5 ---------------------------------------------------------------------------------------
def test_ch05_exercise1_an_eager_decode_step_launches_hundreds_of_kernels():
    r = s5.exercise_1()
    assert 700 < r["ops_per_decode_step"] < 1000  # 827 for 28 layers


def test_ch05_exercise2_no_step_in_flight_uses_the_slot_being_prepared(model):
    r = s5.exercise_2(model)
    assert r["prepares"] > 200 and r["preemptions"] > 0 and r["clashes"] == 0


def test_ch05_exercise3_one_slot_needs_the_tokens_read_before_the_next_launch(model):
    r = s5.exercise_3(model)
    n, right = r["requests"], r["right"]
    assert right[("OneSlotUnguarded", True)] == 0 and right[("OneSlotUnguarded", False)] == n
    assert right[("OneSlot", True)] == right[("OneSlot", False)] == n


def test_ch05_exercise4_without_hazard_3s_check_an_eos_request_gets_one_token_too_many():
    r = s5.exercise_4()
    assert r["reference"] == {"tokens": 3, "finish_reason": "stop"}
    assert r[False] == {**r["reference"], "prefix_equal": True}  # synchronous: nothing changes
    assert r[True] == {"tokens": 4, "finish_reason": "", "prefix_equal": True}


def test_ch05_exercise5_handing_out_the_scratch_block_changes_tokens_on_the_cpu_too(model):
    r = s5.exercise_5(model)
    assert r["changed"] == {False: [0], True: [0]}  # request 0 gets block 0


def test_ch05_exercise6_graph_sizes_pad_a_quarter_of_the_decode_rows(model):
    r = s5.exercise_6(model)
    assert (r["steps"], r["decode_steps"], r["rows"], r["rows_computed"]) == (86, 85, 1426, 1877)
    assert r["rows_computed_steps_of_8"] == 1645
    assert r["graphs"] == {"powers_of_two": 18, "steps_of_8": 70, "every_size": 512}


# ----- chapter 6 ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ch06_exercise1_a_compiled_layer_is_four_matmuls_and_four_fused_kernels():
    r = s6.exercise_1()
    assert r["functions"] == 2 and r["attention_calls"] == 4
    assert (r["kernels_per_layer"], r["matmuls"]) == (8, 4) and r["cache_write_fused_with_rope"]


def test_ch06_exercise2_tracing_is_paid_once_and_changes_no_token(model):
    r = s6.exercise_2(model)
    assert all(r[name]["same_tokens"] for name in ("none", "aot_eager", "aot_eager again"))
    assert r["aot_eager"]["build_s"] > 10 * r["aot_eager again"]["build_s"]
    assert r["graphs_compiled"] == 2


def test_ch06_exercise3_the_cpp_wrapper_is_off_on_the_cpu_and_decode_steps_replay(model):
    r = s6.exercise_3(model)
    assert r["cpp_wrapper"] is False and r["same_tokens"]
    assert (r["steps"], r["steps_not_replayed"]) == (86, 1)


# ----- the GPU parts: what each exercise_N_gpu measures, asserted where the answer predicts it ------------
@cuda
@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_exercises():
    attention = s3.exercise_3_gpu()
    assert attention["reference"]["decode_step_ms"] > attention["batched"]["decode_step_ms"]
    kernel = s4.exercise_2_gpu()
    assert kernel[1]["us"] < 2 * kernel[16]["us"] and kernel[256]["us"] < 2 * kernel[16]["us"]
    graphs = s5.exercise_1_gpu()
    assert graphs[True]["decode_launch_ms"] < graphs[False]["decode_launch_ms"]
    assert s5.exercise_2_gpu() == {"stress_runs": 6, "failed": 0}
    slots = s5.exercise_3_gpu()
    busy = [slots[name]["decode_gpu_busy"] for name in ("sync", "one slot, async", "two slots, async")]
    assert busy[0] < busy[2] and busy[0] - 0.02 < busy[1] < busy[2] + 0.02
    compiled = s6.exercise_1("cuda")
    assert compiled["attention_calls"] == 4 and compiled["matmuls"] == 4
    assert set(s6.exercise_3_gpu()) == {False, True}


def test_ch07_exercises_from_the_shape_and_the_committed_run():
    from solutions import ch07_tensor_parallel as ch07

    one = ch07.exercise_1()
    assert one["all_reduces_a_step"] == 8 and 5 < one["floor_us"] < 50
    assert {n for n, _ in ch07.exercise_2().values()} == {32, 256}
    three = ch07.exercise_3()
    assert three["gather_ms"][32] < three["saved_ms"] < three["gather_ms"][256]
