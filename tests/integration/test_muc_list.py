"""tests/integration/test_muc_list.py - the service's room list (disco#items of conference.<domain>, router/muc.c) with XEP-0059 paging over rooms on both router shards: the unpaged answer (the first 100 rooms and a <set/> with the count), pages by after, before and index, max 0 (the count alone), bad <set/>s refused."""
import pytest

from harness import cluster_on, shard_of
from mucutil import MUC, ROUTERS, join_raw, self_presence
from xmpp import error_condition, login

DIT = "http://jabber.org/protocol/disco#items"
RSM = "http://jabber.org/protocol/rsm"
ROOMS = 130


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    extra = "modules: {muc: {enabled: true, max_rooms_per_user: 200}}"
    with cluster_on("sqlite", tmp_path_factory.mktemp("muclist"), extra=extra) as c:
        for u in ("alice", "bob"):
            c.ctl("register", f"{u}@localhost", "pw")
        yield c


@pytest.fixture(scope="module")
def rooms(cl):
    """alice in ROOMS rooms (they live while she is in them), bob to ask; the room JIDs sorted."""
    alice = login(cl, "alice", "pw", "r")
    bob = login(cl, "bob", "pw", "r")
    jids = [f"list{i:03d}@{MUC}" for i in range(ROOMS)]
    for k in range(0, ROOMS, 10):   # at most 16 loads from the store per user at a time
        for j in jids[k:k + 10]:
            join_raw(alice, j, "A")
        for j in jids[k:k + 10]:
            self_presence(alice, j, "A")
    assert {shard_of(j, ROUTERS) for j in jids} == set(ROUTERS)
    yield bob, sorted(jids)
    alice.close()
    bob.close()


def page(c, set_xml=None):
    """(item JIDs, <set/> as a dict or None) of one disco#items of the service."""
    r = c.iq(f"<query xmlns='{DIT}'>{set_xml or ''}</query>", to=MUC)
    assert r.get("type") == "result", r
    q = r.find(f"{{{DIT}}}query")
    items = [i.get("jid") for i in q.findall(f"{{{DIT}}}item")]
    s = q.find(f"{{{RSM}}}set")
    if s is None:
        return items, None
    first = s.find(f"{{{RSM}}}first")
    return items, {"count": int(s.findtext(f"{{{RSM}}}count")),
                   "first": first.text if first is not None else None,
                   "index": int(first.get("index")) if first is not None else None,
                   "last": s.findtext(f"{{{RSM}}}last")}


def rsm(**kw):
    return f"<set xmlns='{RSM}'>" + "".join(f"<{k}>{v}</{k}>" for k, v in kw.items()) + "</set>"


def test_unpaged_answer_is_the_first_page_with_the_count(rooms):
    bob, jids = rooms
    info = bob.iq("<query xmlns='http://jabber.org/protocol/disco#info'/>", to=MUC)
    assert RSM in {f.get("var") for f in info.iter("{http://jabber.org/protocol/disco#info}feature")}
    items, s = page(bob)
    assert items == jids[:100]
    assert s == {"count": ROOMS, "first": jids[0], "index": 0, "last": jids[99]}


def test_pages_by_after(rooms):
    bob, jids = rooms
    got, after, indexes = [], None, []
    while True:
        items, s = page(bob, rsm(max=50, **({"after": after} if after else {})))
        assert s["count"] == ROOMS
        if not items:
            assert s["first"] is None and s["last"] is None
            break
        assert (s["first"], s["last"]) == (items[0], items[-1])
        indexes.append(s["index"])
        got += items
        after = s["last"]
    assert got == jids and indexes == [0, 50, 100]


def test_pages_by_before_and_index(rooms):
    bob, jids = rooms
    items, s = page(bob, rsm(max=40, before=""))   # the last page
    assert items == jids[-40:] and s["index"] == ROOMS - 40 and s["count"] == ROOMS
    items, s = page(bob, rsm(max=40, before=s["first"]))
    assert items == jids[-80:-40] and s["index"] == ROOMS - 80
    items, s = page(bob, rsm(max=10, index=125))
    assert items == jids[125:] and s["index"] == 125 and s["last"] == jids[-1]
    items, s = page(bob, rsm(max=3, index=7))
    assert items == jids[7:10] and s["index"] == 7
    items, s = page(bob, rsm(max=0))
    assert items == [] and s == {"count": ROOMS, "first": None, "index": None, "last": None}
    items, s = page(bob, rsm(max=5, after=jids[-1]))
    assert items == [] and s["count"] == ROOMS


def test_bad_set_is_refused(rooms):
    bob, _ = rooms
    for bad in (rsm(max="ten"), rsm(max=5, after=""), rsm(max=5, after="a", before="b"), rsm(index=-1)):
        r = bob.iq(f"<query xmlns='{DIT}'>{bad}</query>", to=MUC)
        assert error_condition(r) == "bad-request", bad
