"""No ``workflows``: the functions marked by the (coming) ``@workflow`` decorator are linted."""

import time

from replaygen import Do


def workflow(fn):
    # Stands in for replaygen.workflow, which marks each function with the name it registered.
    fn.__replaygen_workflow__ = fn.__name__
    return fn


def step(x):
    return x


@workflow
def marked():
    yield Do("t", step, time.time())  # expect: RG101


def not_marked():
    yield Do("t", step, time.time())  # a workflow only by the fallback rule: not linted here
