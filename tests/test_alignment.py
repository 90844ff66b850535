import pytest
import torch

from sdzero.alignment import build_aligned_pair
from sdzero.chat import ControlPhrases, chat_prompt_ids, text_ids
from sdzero.errors import SDZeroError


def test_positions_by_hand():
    pair = build_aligned_pair([1, 2, 3], [10, 11], [20, 21], max_teacher_tokens=64)
    assert pair.student_ids == [1, 2, 3, 10, 11]
    assert pair.teacher_ids == [1, 2, 3, 10, 11, 20, 21, 10, 11]
    # Row 2 of the student (after token 3) predicts 10; row 6 of the teacher (after 21) predicts the second 10.
    assert pair.student_positions == [2, 3] and pair.teacher_positions == [6, 7]
    for s, t, y in zip(pair.student_positions, pair.teacher_positions, pair.target_ids):
        assert pair.student_ids[s + 1] == y and pair.teacher_ids[t + 1] == y


def test_the_end_token_is_predicted_by_both_but_absent_from_the_first_copy():
    pair = build_aligned_pair([1, 2], [10, 11], [20], max_teacher_tokens=64, end_ids=[99])
    assert pair.student_ids == [1, 2, 10, 11, 99]
    assert pair.teacher_ids == [1, 2, 10, 11, 20, 10, 11, 99]  # the draft as the reviser saw it, then y + end
    assert pair.target_ids == [10, 11, 99]
    for s, t, y in zip(pair.student_positions, pair.teacher_positions, pair.target_ids):
        assert pair.student_ids[s + 1] == y and pair.teacher_ids[t + 1] == y
    # A response cut to fit did not end where it was cut: no end token is predicted there.
    cut = build_aligned_pair([1, 2], list(range(10, 30)), [20], max_teacher_tokens=12, end_ids=[99])
    assert 99 not in cut.target_ids and len(cut.teacher_ids) <= 12


def test_long_responses_are_cut_on_both_sides_never_the_question():
    prompt, y, suffix = [1, 2, 3], list(range(100, 120)), [7, 8]
    pair = build_aligned_pair(prompt, y, suffix, max_teacher_tokens=15)
    assert pair.target_ids == y[:5] and len(pair.teacher_ids) <= 15
    assert pair.teacher_ids[:3] == prompt and pair.student_ids == prompt + y[:5]
    assert build_aligned_pair(prompt, y, suffix, 100, max_student_tokens=6).target_ids == y[:3]
    with pytest.raises(SDZeroError, match="never truncated"):
        build_aligned_pair(prompt, y, suffix, max_teacher_tokens=6)


def test_aligned_rows_with_a_real_model(tokenizer, tiny_model):
    """The rows line up in shape; the shared prefix gives identical rows; the teacher's rows over the
    second copy differ (it has seen the draft and the control phrase), which is the signal Phase 2 uses."""
    prompt = chat_prompt_ids(tokenizer, "What is 2+3?")
    y = text_ids(tokenizer, "It is 5.")
    suffix = text_ids(tokenizer, ControlPhrases().suffix_text(1.0))
    pair = build_aligned_pair(prompt, y, suffix, max_teacher_tokens=512)
    with torch.no_grad():
        s_logits = tiny_model(torch.tensor([pair.student_ids])).logits[0, pair.student_positions]
        t_logits = tiny_model(torch.tensor([pair.teacher_ids])).logits[0, pair.teacher_positions]
        t_prefix = tiny_model(torch.tensor([pair.teacher_ids[: len(pair.student_ids)]])).logits[0,
                                                                                               pair.student_positions]
    assert s_logits.shape == t_logits.shape == (len(y), len(tokenizer))
    assert torch.allclose(s_logits, t_prefix, atol=1e-5)
    assert not torch.allclose(s_logits, t_logits, atol=1e-3)
