"""Phase 2 inputs: the student's sequence, the teacher's sequence, and which logits line up.

Student: chat(x) + y                         -> its logits at the positions that predict y's tokens.
Teacher: chat(x) + y + sep P_r sep + y       -> its logits at the positions that predict the SECOND y.
(SDFT's teacher instead reads chat(x + demonstration) + y: `build_context_pair`.)
Row j of both predicts token y[j], so the divergence is taken row by row with no generation by the
teacher. `end_ids` (the end-of-turn token, when the student stopped by itself) are appended to the student's
y and to the teacher's second copy only: the teacher's first copy is the draft as the reviser saw it in
Phase 1 (no end token), and the end token is a prediction both sides make, so when to stop is distilled
too. When the teacher's sequence would pass `max_teacher_tokens`, y itself is cut (both copies and the
student's, so both sides see the same y); the question is never cut.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdzero.errors import SDZeroError


@dataclass
class AlignedPair:
    student_ids: list[int]
    teacher_ids: list[int]
    student_positions: list[int]  # logits rows of the student that predict y[0..n-1]
    teacher_positions: list[int]  # logits rows of the teacher that predict the second copy's y[0..n-1]
    target_ids: list[int]  # the tokens predicted: y as used (possibly cut), then end_ids

    @property
    def num_tokens(self) -> int:
        return len(self.target_ids)


def build_aligned_pair(prompt_ids: list[int], response_ids: list[int], suffix_ids: list[int],
                       max_teacher_tokens: int, max_student_tokens: int | None = None,
                       end_ids: list[int] | tuple[int, ...] = ()) -> AlignedPair:
    room = (max_teacher_tokens - len(prompt_ids) - len(suffix_ids) - len(end_ids)) // 2
    if max_student_tokens is not None:
        room = min(room, max_student_tokens - len(prompt_ids) - len(end_ids))
    if room < 1:
        raise SDZeroError(
            f"the teacher context does not fit: a {len(prompt_ids)}-token question plus the control phrase "
            f"({len(suffix_ids)} tokens) leaves no room for the response under max_teacher_tokens="
            f"{max_teacher_tokens}; the question is never truncated, so raise the limit"
        )
    y, targets = _cut(response_ids, room, end_ids)
    return _pair(prompt_ids, list(prompt_ids) + y + list(suffix_ids), targets)


def build_context_pair(student_prompt_ids: list[int], teacher_prompt_ids: list[int], response_ids: list[int],
                       max_teacher_tokens: int, end_ids: list[int] | tuple[int, ...] = ()) -> AlignedPair:
    """Student chat(x) + y, teacher <its own prompt> + y: the same y after two different contexts (SDFT)."""
    room = max_teacher_tokens - len(teacher_prompt_ids) - len(end_ids)
    if room < 1:
        raise SDZeroError(f"the teacher's {len(teacher_prompt_ids)}-token prompt leaves no room for the response "
                          f"under max_teacher_tokens={max_teacher_tokens}; raise the limit")
    return _pair(student_prompt_ids, teacher_prompt_ids, _cut(response_ids, room, end_ids)[1])


def _cut(response_ids: list[int], room: int, end_ids: list[int] | tuple[int, ...]) -> tuple[list[int], list[int]]:
    """y cut to `room` tokens, and the targets: y, then end_ids unless y was cut (a cut response did not end
    there: predicting the end token would be wrong)."""
    y = list(response_ids[:room])
    return y, y + (list(end_ids) if len(y) == len(response_ids) else [])


def _pair(student_prefix: list[int], teacher_prefix: list[int], targets: list[int]) -> AlignedPair:
    """Both sequences are their prefix + targets; the row before each target predicts it."""
    s, t = len(student_prefix), len(teacher_prefix)
    return AlignedPair(student_ids=list(student_prefix) + targets, teacher_ids=list(teacher_prefix) + targets,
                       student_positions=list(range(s - 1, s - 1 + len(targets))),
                       teacher_positions=list(range(t - 1, t - 1 + len(targets))), target_ids=targets)
