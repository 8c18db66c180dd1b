"""Randomness and new ids."""

import random
import secrets
import uuid
from random import randint as roll

from replaygen import Do

rng = random.Random(42)  # module level: its state carries over from run to run


def step(x):
    return x


def chance(items):
    a = random.random()  # expect: RG103
    b = random.choice(items)  # expect: RG103
    random.shuffle(items)  # expect: RG103
    c = roll(1, 6)  # expect: RG103
    d = random.Random(7).choice(items)  # expect: RG103
    e = rng.choice(items)  # expect: RG103
    f = secrets.token_hex(8)  # expect: RG103
    g = uuid.uuid4()  # expect: RG104
    h = uuid.uuid1()  # expect: RG104
    i = uuid.uuid5(uuid.NAMESPACE_URL, "https://example.com/")  # derived from data: fine
    j = hash("order-42") + id(items)  # expect: RG110 RG110
    yield Do("log", step, [a, b, c, d, e, f, g, h, i, j])


workflows = {"chance": chance}
