"""The idea pictures: each is drawn from a real run of its chapter's engine and shows what it claims."""
import pytest
from matplotlib.colors import to_hex

from tools import pictures
from tools.pictures import FINISHED, PAD


def images_and_patches(fig) -> int:
    return sum(len(ax.images) + len(ax.patches) + len(ax.collections) for ax in fig.axes)


def test_padded_batch_matches_the_engines_counts():
    c = pictures.capture_padded()
    assert (c.cells == PAD).sum() == c.stats["prefill_pad"] > 0  # the picture's pads are the engine's
    assert (c.cells == FINISHED).sum() == c.stats["decode_idle"] > 0  # and so are its finished rows
    fig = pictures.padded_batch_figure(c)
    assert fig.axes[0].images and fig.axes[0].get_legend() and fig.axes[0].get_title()


def test_ragged_batch_has_decode_tokens_and_prompt_chunks():
    c = pictures.capture_ragged()
    prompt = [ch for ch in c.chunks if not ch[3]]
    assert c.num_decode >= 1 and len(prompt) >= 2
    assert any(start > 0 for _, start, *_ in prompt)  # one chunk starts mid-prompt: it sees cached keys
    tokens, context = c.prefill_mask.shape
    assert tokens == sum(n for _, _, n, *_ in prompt) and context == sum(s + n for _, s, n, *_ in prompt)
    assert c.prefill_mask.any(axis=1).all()  # every prompt token sees at least itself
    fig = pictures.ragged_batch_figure(c)
    assert len(fig.axes) == 2 and images_and_patches(fig) > len(c.chunks)


def test_block_tables_show_a_shared_prefix_and_free_blocks():
    c = pictures.capture_block_tables()
    shared = [b for b, n in enumerate(c.ref_count) if n > 1]
    assert shared and all(set(shared) <= set(t) for t in c.tables.values())
    assert c.free_blocks and pictures.holes(c)  # a finished request's blocks are back in the pool
    assert c.prefix_hit_tokens > 0
    fig = pictures.block_tables_figure(c)
    assert images_and_patches(fig) >= len(c.ref_count) + sum(map(len, c.tables.values()))


@pytest.mark.parametrize("source", ["h200", "cpu"])
def test_two_slots_alternate(source):
    c = pictures.capture_h200_timeline() if source == "h200" else pictures.capture_cpu_timeline()
    assert c is not None, "the committed H200 timeline is missing"
    assert c.on_gpu == (source == "h200")
    starts = [s["start"] for s in c.steps]
    assert starts == sorted(starts) and len(c.shown) >= 4
    fig = pictures.two_slots_figure(c)
    drawn = {to_hex(col.get_facecolor()[0]) for col in fig.axes[0].collections}
    assert {to_hex(colour) for colour in pictures.SLOT_COLOURS} <= drawn  # both slots drawn
