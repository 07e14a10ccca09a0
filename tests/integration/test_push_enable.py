"""tests/integration/test_push_enable.py - XEP-0357 enable/disable: registrations in both drivers, MongooseIM's error mapping, bounds, hostile requests."""
import re
import uuid

import pytest

from harness import Cluster, cluster_on
from rawxmpp import Raw

PUSH = "urn:xmpp:push:0"
PO = "http://jabber.org/protocol/pubsub#publish-options"
APP = "pubsub.app.example"        # an external component (configured, never connected here)
VIRTUAL = "mpush.example"         # a MongoosePush virtual host of the backend
USERS = ("alice", "bob", "carol", "dave")


def push_config(tmpdir):
    secret = tmpdir / "component.secret"
    secret.write_text("s3cret\n")
    return "\n".join([
        "pusher:",
        "  backends:",
        "    - name: push",
        "      type: xep0357",
        f"      virtual_hosts: [{VIRTUAL}]",
        "      mongoosepush_url: http://127.0.0.1:9",
        "components:",
        f"  - {{domain: {APP}, secret_file: {secret}}}",
    ])


@pytest.fixture(scope="module", params=["sqlite", "pgsql"])
def cl(request, tmp_path_factory):
    """1 c2s, 1 router, 1 mam, 1 pusher with an xep0357 backend, on sqlite and on PostgreSQL."""
    tmp = tmp_path_factory.mktemp("push")
    with cluster_on(request.param, tmp, c2s=1, router=1, extra=push_config(tmp)) as c:
        for u in USERS:
            c.ctl("register", f"{u}@localhost", f"{u}-pw")
        yield c


def login(cl, user):
    r = Raw(cl.c2s_port, timeout=20.0)
    jid = r.login(user, f"{user}-pw", "r" + uuid.uuid4().hex[:6])
    return r, jid


def iq(r, body, type_="set", to=None):
    """Sends an IQ and returns the text of its answer."""
    iid = "i" + uuid.uuid4().hex[:10]
    to_attr = f" to='{to}'" if to else ""
    r.send(f"<iq type='{type_}' id='{iid}'{to_attr}>{body}</iq>")
    rx = rf"<iq[^>]*id=['\"]{iid}['\"](?:[^>]*/>|.*?</iq>)"
    out = r.recv_until(rx)
    return re.search(rx, out, re.S).group(0)


def result(ans):
    assert "type='result'" in ans or 'type="result"' in ans, ans


def error(ans, condition, etype=None):
    assert re.search(r"type=['\"]error['\"]", ans), ans
    assert f"<{condition} " in ans or f"<{condition}/>" in ans, ans
    if etype:
        assert re.search(rf"<error[^>]*type=['\"]{etype}['\"]", ans), ans


def xform(fields, form_type=PO, type_="submit"):
    out = [f"<x xmlns='jabber:x:data' type='{type_}'>"]
    if form_type is not None:
        out.append(f"<field var='FORM_TYPE'><value>{form_type}</value></field>")
    for var, val in fields:
        out.append(f"<field var='{var}'><value>{val}</value></field>")
    out.append("</x>")
    return "".join(out)


def enable(jid=APP, node="n1", form=""):
    node_attr = "" if node is None else f" node='{node}'"
    jid_attr = "" if jid is None else f" jid='{jid}'"
    return f"<enable xmlns='{PUSH}'{jid_attr}{node_attr}>{form}</enable>"


def disable(jid=APP, node=None):
    node_attr = "" if node is None else f" node='{node}'"
    return f"<disable xmlns='{PUSH}' jid='{jid}'{node_attr}/>"


def registrations(cl, user):
    """ctl's lines for user: [(pubsub, node, [var=value, ...]), ...]."""
    out = cl.ctl("push", "registrations", f"{user}@localhost").stdout
    rows = []
    for line in out.splitlines():
        parts = line.split(" ")
        rows.append((parts[0], parts[1], parts[2:]))
    return rows


def test_disco_advertises_push(cl):
    r, jid = login(cl, "alice")
    ans = iq(r, "<query xmlns='http://jabber.org/protocol/disco#info'/>", "get", "localhost")
    assert f"var='{PUSH}'" in ans or f'var="{PUSH}"' in ans, ans
    bare = jid.split("/")[0]
    ans = iq(r, "<query xmlns='http://jabber.org/protocol/disco#info'/>", "get", bare)
    assert PUSH in ans, ans
    r.close()


def test_enable_disable_stored(cl):
    r, jid = login(cl, "bob")
    form = xform([("service", "apns"), ("device_id", "tok 1&amp;2"), ("silent", "false")])
    result(iq(r, enable(node="phone", form=form)))
    assert registrations(cl, "bob") == [(APP, "phone", ["service=apns", "device_id=tok\\x201&2", "silent=false"])]
    # Same (pubsub, node): replaced, in the new order, not added.
    result(iq(r, enable(node="phone", form=xform([("device_id", "tok2"), ("service", "fcm")])), to=jid.split("/")[0]))
    assert registrations(cl, "bob") == [(APP, "phone", ["device_id=tok2", "service=fcm"])]
    # No form, and a form with only FORM_TYPE: no options.
    result(iq(r, enable(node="tablet")))
    result(iq(r, enable(jid=f"{APP}/res", node="watch", form=xform([]))))
    result(iq(r, enable(jid=VIRTUAL, node="v1", form=xform([("service", "fcm")]))))
    rows = registrations(cl, "bob")
    assert sorted((p, n) for p, n, _ in rows) == sorted([(APP, "phone"), (APP, "tablet"), (APP, "watch"), (VIRTUAL, "v1")])
    assert [o for p, n, o in rows if n == "watch"] == [[]]
    # disable with a node: that one only.
    result(iq(r, disable(node="tablet")))
    assert sorted(n for _, n, _ in registrations(cl, "bob")) == ["phone", "v1", "watch"]
    # disable of an unknown node is fine.
    result(iq(r, disable(node="nope")))
    # disable without node: every node of that service, not the other service's.
    result(iq(r, disable()))
    assert registrations(cl, "bob") == [(VIRTUAL, "v1", ["service=fcm"])]
    r.close()


def test_error_mapping(cl):
    r, jid = login(cl, "carol")
    error(iq(r, enable(), "get"), "not-allowed", "cancel")
    error(iq(r, disable(), "get"), "not-allowed", "cancel")
    error(iq(r, enable(jid=None)), "bad-request", "modify")
    error(iq(r, enable(jid="")), "bad-request", "modify")
    error(iq(r, enable(jid="a@b@c")), "bad-request", "modify")
    error(iq(r, enable(jid="x" * 2000 + "@" + APP)), "bad-request", "modify")
    error(iq(r, f"<disable xmlns='{PUSH}'/>"), "bad-request", "modify")
    error(iq(r, enable(node=None)), "bad-request", "modify")
    error(iq(r, enable(node="")), "bad-request", "modify")
    error(iq(r, disable(node="")), "bad-request", "modify")
    # Forms: not a submit, a wrong FORM_TYPE, none at all, a field without var.
    error(iq(r, enable(form=xform([("service", "apns")], type_="form"))), "bad-request", "modify")
    error(iq(r, enable(form=xform([("service", "apns")], form_type="urn:other"))), "bad-request", "modify")
    error(iq(r, enable(form=xform([("service", "apns")], form_type=None))), "bad-request", "modify")
    error(iq(r, enable(form=f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>{PO}</value>"
                              "</field><field><value>v</value></field></x>")), "bad-request", "modify")
    # Unknown children and payloads.
    error(iq(r, enable(form="<foo xmlns='urn:x'/>")), "bad-request", "modify")
    error(iq(r, enable(form=xform([]) + xform([]))), "bad-request", "modify")
    error(iq(r, f"<frobnicate xmlns='{PUSH}' jid='{APP}' node='n'/>"), "bad-request", "modify")
    error(iq(r, f"<disable xmlns='{PUSH}' jid='{APP}'><x xmlns='jabber:x:data' type='submit'/></disable>"),
          "bad-request", "modify")
    # Another account's registrations are not ours to set.
    error(iq(r, enable(), to="dave@localhost"), "forbidden", "auth")
    # A service nobody could publish to.
    error(iq(r, enable(jid="pubsub.unknown.example")), "remote-server-not-found", "cancel")
    error(iq(r, enable(jid="someone@localhost")), "remote-server-not-found", "cancel")
    assert registrations(cl, "carol") == []
    # Still served.
    result(iq(r, "<ping xmlns='urn:xmpp:ping'/>", "get", "localhost"))
    r.close()


def test_hostile_bounds(cl):
    r, jid = login(cl, "dave")
    # A 10 KiB node name.
    error(iq(r, enable(node="n" * 10240)), "resource-constraint", "cancel")
    error(iq(r, disable(node="n" * 10240)), "resource-constraint", "cancel")
    # Too many fields, a huge value, a huge var.
    error(iq(r, enable(form=xform([(f"f{i}", "v") for i in range(40)]))), "resource-constraint")
    error(iq(r, enable(form=xform([("device_id", "t" * 5000)]))), "resource-constraint")
    error(iq(r, enable(form=xform([("v" * 1000, "x")]))), "resource-constraint")
    # Garbage inside the form is skipped or refused, never stored as is.
    garbage = (f"<x xmlns='jabber:x:data' type='submit'><title>t</title><junk xmlns='urn:j'><deep/></junk>"
               f"<field var='FORM_TYPE'><value>{PO}</value></field>"
               "<field var='service'><value>apns</value><value>second</value></field>"
               "<field var='empty'/><field var='emoji'><value>\U0001F600 &lt;b&gt;</value></field></x>")
    result(iq(r, enable(node="g", form=garbage)))
    assert registrations(cl, "dave") == [(APP, "g", ["service=apns", "empty=", "emoji=\U0001F600\\x20<b>"])]
    # At most 32 registrations: the 33rd is refused, replacing one still works.
    for i in range(31):
        result(iq(r, enable(node=f"n{i}")))
    assert len(registrations(cl, "dave")) == 32
    error(iq(r, enable(node="one-too-many")), "resource-constraint", "cancel")
    result(iq(r, enable(node="n5", form=xform([("service", "fcm")]))))
    assert len(registrations(cl, "dave")) == 32
    result(iq(r, "<ping xmlns='urn:xmpp:ping'/>", "get", "localhost"))
    r.close()
    assert cl.all_healthy()


def test_account_removal_removes_registrations(cl):
    cl.ctl("register", "erin@localhost", "erin-pw")
    r, jid = login(cl, "erin")
    result(iq(r, enable(node="e1")))
    assert len(registrations(cl, "erin")) == 1
    r.close()
    cl.ctl("unregister", "erin@localhost")
    cl.ctl("register", "erin@localhost", "erin-pw")
    assert registrations(cl, "erin") == []


class RawAt(Raw):
    """Raw, on a stream to another hosted domain."""
    domain = "localhost"

    def open_stream(self, domain=None):
        return super().open_stream(domain or self.domain)


def test_offered_per_domain(tmp_path):
    """Two hosted domains, an xep0357 backend for one: only that one advertises and serves it."""
    c = Cluster(tmp_path, c2s=1, router=1, mam=1, pusher=1, gd=0, extra="\n".join([
        "pusher:",
        "  backends:",
        "    - {name: push, type: xep0357, domains: [second.example], virtual_hosts: [mpush.example], "
        "mongoosepush_url: 'http://127.0.0.1:9'}",
    ]))
    with open(c.config) as f:
        text = f.read()
    with open(c.config, "w") as f:
        f.write(text.replace("domains: [localhost]", "domains: [localhost, second.example]", 1))
    c.start()
    try:
        c.ctl("register", "alice@localhost", "alice-pw")
        c.ctl("register", "alice@second.example", "alice-pw")
        r, jid = login(c, "alice")
        for to in ("localhost", "alice@localhost"):
            ans = iq(r, "<query xmlns='http://jabber.org/protocol/disco#info'/>", "get", to)
            assert "<identity" in ans and PUSH not in ans, ans
        error(iq(r, enable(jid="mpush.example")), "service-unavailable", "cancel")
        r.close()
        r = RawAt(c.c2s_port, timeout=20.0)
        r.domain = "second.example"
        r.login("alice", "alice-pw", "r1")
        for to in ("second.example", "alice@second.example", None):
            ans = iq(r, "<query xmlns='http://jabber.org/protocol/disco#info'/>", "get", to)
            assert f"var='{PUSH}'" in ans or f'var="{PUSH}"' in ans, ans
        result(iq(r, enable(jid="mpush.example", node="n")))
        out = c.ctl("push", "registrations", "alice@second.example").stdout
        assert out == "mpush.example n\n", out
        assert c.ctl("push", "registrations", "alice@localhost").stdout == ""
        r.close()
    finally:
        c.stop()
