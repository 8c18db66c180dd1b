"""The environment, files, threads, network and processes."""

import os
import socket
import subprocess
import threading
import urllib.request
from os import environ
from pathlib import Path

from replaygen import Do

try:  # not installed in the test environment; lint resolves the names from the imports
    import requests
except ImportError:
    requests = None
try:
    import httpx
except ImportError:
    httpx = None


def step(x):
    return x


def effects(url):
    a = os.environ["HOME"]  # expect: RG105
    b = os.environ.get("DEBUG")  # expect: RG105
    c = os.getenv("REGION")  # expect: RG105
    d = environ.get("USER")  # expect: RG105
    with open("/etc/hostname") as fh:  # expect: RG106
        e = fh.read()
    f = Path("/etc/hostname").read_text()  # expect: RG106
    lock = threading.Lock()  # expect: RG107
    worker = threading.Thread(target=print)  # expect: RG107
    g = requests.get(url)  # expect: RG108
    h = httpx.post(url, json={})  # expect: RG108
    i = urllib.request.urlopen(url)  # expect: RG108
    j = socket.gethostname()  # expect: RG108
    k = subprocess.run(["true"], check=False)  # expect: RG108
    yield Do("log", step, [a, b, c, d, e, f, lock, worker, g, h, i, j, k])


workflows = effects
