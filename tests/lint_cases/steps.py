"""What is a step, not body code, and the silencing comment: nothing here is reported but
the marked lines."""

import functools
import os
import random
import time
import uuid

import replaygen as rg
from replaygen import Do, Retry


def stamp(prefix):
    return f"{prefix}-{time.time()}"


def steps(order):
    now = yield Do("now", time.time)  # a reference: the step calls it
    yield Do("env", os.environ.get, "REGION")
    yield Do("pick", random.choice, order["items"], retry=Retry(2))
    yield Do("id", lambda: str(uuid.uuid4()))
    yield rg.Do("draw", lambda lo, hi: random.randint(lo, hi), 1, 6)

    def charge(amount):
        # Defined in the body, but passed to Do: a step.
        return {"at": time.time(), "amount": amount, "key": os.environ.get("KEY")}

    yield Do("charge", charge, order["amount"])
    make_id = lambda: uuid.uuid4().hex
    yield Do("make id", make_id)
    yield Do("partial", functools.partial(stamp, "order"))
    yield Do(name="keyword", fn=lambda: random.random())
    yield rg.All(Do("a", lambda: time.monotonic()), Do("b", lambda: random.random()))

    started = time.time()  # replaygen: deterministic
    nonce = random.random()  # REPLAYGEN: Deterministic -- (case and trailing words are fine)
    late = ("# replaygen: deterministic", time.time())  # expect: RG101
    best = min(order["items"], key=lambda item: (item, random.random()))  # expect: RG103
    yield Do("at", time.sleep, time.time())  # expect: RG101
    return [now, started, nonce, late, best]


workflows = [steps]
