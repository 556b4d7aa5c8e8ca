"""What a test's stand-in task needs besides its own `grade`: the rest of the Task protocol."""


class FakeTaskBase:
    name = "fake"
    stop_sequences: tuple[str, ...] = ()

    def grade_batch(self, problems, responses):
        return [self.grade(p, r) for p, r in zip(problems, responses)]

    def extract_answer(self, response):
        return None
