"""Helpers of the same module that a workflow runs in its body are linted too."""

import time
import uuid

from replaygen import Do, Wait


def step(x):
    return x


def unused():
    return time.time()  # never called from a workflow: not linted


def new_key():
    return uuid.uuid4().hex  # expect: RG104


def approve(who):
    decision = yield Wait("decision")
    if decision.get("late"):
        yield Do("stamp", step, time.time())  # expect: RG101
    return decision


def flow(who):
    yield Do("ask", step, who)
    decision = yield from approve(who)
    yield Do("key", step, new_key())
    yield Do("via step", new_key)  # a step: not a call from the body
    return decision


workflows = [flow]
