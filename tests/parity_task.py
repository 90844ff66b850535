"""A task a random model solves about half the time (right when the response has an even number of
characters), registered as `parity:`. Shared by the Phase-1 and Phase-2 tests and the multi-process worker."""

from sdzero.tasks import register_task_kind
from sdzero.tasks.base import Question, Task


class ParityTask(Task):
    name = "test:parity"

    def pool(self, n):
        return [Question(id=f"p{i}", prompt=f"Say something #{i}.", answer="even") for i in range(n)]

    def reward(self, question, response):
        return 1.0 if response and len(response) % 2 == 0 else 0.0


register_task_kind("parity", lambda body, cfg: ParityTask())
