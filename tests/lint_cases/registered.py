"""No ``workflows``: the functions registered with ``@workflow`` are linted."""

import time

from replaygen import Do, workflow


def step(x):
    return x


@workflow(name="lint_cases.marked")
def marked():
    yield Do("t", step, time.time())  # expect: RG101


def not_marked():
    yield Do("t", step, time.time())  # a workflow only by the fallback rule: not linted here
