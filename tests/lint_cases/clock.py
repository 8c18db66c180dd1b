"""The clock, under every import style."""

import datetime as dt
import time
from datetime import date, datetime
from time import monotonic as tick
from time import time as now

from replaygen import Do, Sleep


def step(x):
    return x


def clock():
    a = datetime.now()  # expect: RG101
    b = datetime.utcnow()  # expect: RG101
    c = datetime.today()  # expect: RG101
    d = date.today()  # expect: RG101
    e = dt.datetime.now(dt.timezone.utc)  # expect: RG101
    f = dt.date.today().isoformat()  # expect: RG101
    g = now()  # expect: RG101
    h = time.time_ns() + tick()  # expect: RG101 RG101
    i = time.perf_counter() - time.process_time()  # expect: RG101 RG101
    time.sleep(1)  # expect: RG102
    j = time.strftime("%H")  # expect: RG101
    k = time.strftime("%H", time.gmtime(0))  # the time is given: fine
    year = dt.datetime(2024, 1, 1).year + dt.timedelta(days=1).days  # no clock: fine
    yield Do("log", step, [a, b, c, d, e, f, g, h, i, j, k, year])
    yield Sleep(60)  # the right way to wait


workflows = [clock]
