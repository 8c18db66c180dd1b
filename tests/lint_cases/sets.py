"""Iterating a set: its order of str items differs between processes."""

from replaygen import All, Do


def notify(who):
    return who


def sets(users, tags):
    for who in {"ann", "bob"}:  # expect: RG109
        yield Do(f"notify {who}", notify, who)
    for who in set(users):  # expect: RG109
        yield Do(f"notify {who}", notify, who)
    for who in {u.lower() for u in users}:  # expect: RG109
        yield Do(f"notify {who}", notify, who)
    unique = set(users)
    for who in unique:  # expect: RG109
        yield Do(f"notify {who}", notify, who)
    yield All(*(Do(f"tag {t}", notify, t) for t in unique))  # expect: RG109
    for i, who in enumerate(unique | {"root"}):  # expect: RG109
        yield Do(f"notify {i} {who}", notify, who)
    label = ",".join(frozenset(tags))  # expect: RG109
    seen: set[str] = set()
    for who in seen:  # expect: RG109
        yield Do(f"again {who}", notify, who)

    for who in sorted(unique):  # sorted: fine
        yield Do(f"sorted {who}", notify, who)
    ordered = sorted(set(users))
    for who in ordered:  # a list by now: fine
        yield Do(f"ordered {who}", notify, who)
    unique = list(dict.fromkeys(users))  # rebound to a list before the loop: fine
    for who in unique:
        yield Do(f"dict order {who}", notify, who)
    for key in {"a": 1, "b": 2}:  # a dict keeps insertion order: fine
        yield Do(f"key {key}", notify, key)
    for n in {3, 1, 2}:  # ints hash to themselves: the same order in every process
        yield Do(f"n {n}", notify, n)
    return label


workflows = [sets]
