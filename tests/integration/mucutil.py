"""tests/integration/mucutil.py - what the group chat tests (test_muc*.py) share: the service, namespaces, room names on a chosen router shard, and the raw join and status-code helpers."""
import uuid

from harness import shard_of

MUC = "conference.localhost"
NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = NS_MUC + "#user"
XU = "{" + NS_USER + "}"
ROUTERS = ["router.0", "router.1"]


def room_on(shard_id, prefix, unique=False):
    """A room JID whose bare JID lives on shard_id (router.N); with unique, a name no
    earlier run of the module used."""
    base = f"{prefix}{uuid.uuid4().hex[:6]}-" if unique else prefix
    for i in range(1000):
        r = f"{base}{i}@{MUC}"
        if shard_of(r, ROUTERS) == shard_id:
            return r
    raise AssertionError("no room name found")


def codes(el):
    """The muc#user status codes of a stanza, sorted."""
    return sorted(int(s.get("code")) for s in el.findall(f"{XU}x/{XU}status"))


def item(el):
    return el.find(f"{XU}x/{XU}item")


def join_raw(c, room, nick, extra=""):
    """Sends the join presence (extra: children of the muc <x/>) without waiting."""
    c.send(f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'>{extra}</x></presence>")


def self_presence(c, room, nick):
    """Waits for c's own presence in the room (status 110)."""
    return c.wait("presence", frm=f"{room}/{nick}", pred=lambda e: 110 in codes(e))


def enter(c, room, nick):
    """Joins and waits for c's own presence in the room."""
    join_raw(c, room, nick)
    return self_presence(c, room, nick)
