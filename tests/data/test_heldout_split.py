"""Held-out builtin problems are never trained on: the pair split is fixed by a hash."""
from megatron_hpt.data import arithmetic as A
from megatron_hpt.data.prompts import BUILTIN, HELD_OUT_SEED_OFFSET, PromptSource
from megatron_hpt.data.tokenizer import build_char_tokenizer


def pairs(problems):
    return {tuple(int(x) for x in p.prompt[:-1].split("+")) for p in problems}


def test_training_streams_never_draw_held_out_pairs():
    held = {(a, b) for a in range(10, 100) for b in range(10, 100) if A.is_held_out(a, b)}
    assert 0.10 < len(held) / 8100 < 0.15
    train = pairs(A.problems(3, 0, 3000))
    assert len(train) > 2000 and not (train & held)
    evaluation = pairs(A.problems(3 + HELD_OUT_SEED_OFFSET, 0, 200, held_out=True))
    assert evaluation <= held


def test_prompt_source_held_out_split():
    tok = build_char_tokenizer()
    items = PromptSource(BUILTIN, tok, 5, held_out=True).items(0, 50)
    for it in items:
        a, b = (int(x) for x in tok.decode(it.prompt_ids, skip_special_tokens=True)[:-1].split("+"))
        assert A.is_held_out(a, b) and str(a + b) == it.answer
