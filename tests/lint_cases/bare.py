"""Neither ``workflows`` nor ``@workflow``: every generator function defined here that makes
replaygen commands is linted."""

import random
import time

import replaygen

from .clock import clock  # imported, not defined here: not picked  # noqa: F401


def step(x):
    return x


def first():
    yield replaygen.Do("t", step, time.time())  # expect: RG101


def second():
    choice = yield replaygen.Wait("choice")
    return choice, random.random()  # expect: RG103


def numbers():
    # A generator that makes no replaygen command: not a workflow.
    yield time.time()


def plain():
    return time.time()
