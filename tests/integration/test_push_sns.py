"""tests/integration/test_push_sns.py - the Amazon SNS backend against an HTTPS endpoint in the test that checks every request's SigV4 signature with botocore."""
import hashlib
import json
import os
import re
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import pytest

# Debian's python3-botocore (deploy/install-deps.sh installs it): the signer AWS's own
# Python SDK uses, an implementation independent of common/sigv4.c.
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from harness import Cluster, http_get, make_test_ca, wait_until
from xmpp import login

KEY_ID = "AKIDMEERKATTEST01"
SECRET = "s3cr3t/Meerkat+SNS=test-key-0123456789"
WRONG_SECRET = "not-the-secret-at-all-0123456789abcdef"
TOKEN = "FQoGZXIvYXdzEXAMPLE//session+token=="
REGION = "eu-west-1"
SIGNING_REGION = "eu-central-1"     # not the ARN's region: the signing region is its own setting
ACCOUNT = "123456789012"
BODY = "Hi Bob \U0001F600 \u00e9t\u00e9 % & + = \"quoted\" <tag> \\ done"


class SnsEndpoint:
    """An SNS query-API stand-in over HTTPS. Every request's signature is recomputed with
    botocore from the received method, path, body and the headers the request says it
    signed, with the one secret it knows; a mismatch is answered 403
    SignatureDoesNotMatch, as AWS does. A request that is signed right but malformed is
    answered 400 and its problem kept in `problems`. Accepted Publish calls are kept in
    `published` (topic ARN, message, attributes, event id), rejected ones in `rejected`."""

    def __init__(self, cert, key):
        self.published = []
        self.rejected = []
        self.throttle = {}       # topic ARN -> how many more Publish calls to answer 400 Throttling
        self.throttled = 0
        self.problems = []
        self.cond = threading.Condition()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                status, reply = endpoint.handle(self.path, dict(self.headers.items()), body)
                data = reply.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def error(status, code, message):
        return status, (f"<ErrorResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\"><Error><Type>Sender</Type>"
                        f"<Code>{code}</Code><Message>{message}</Message></Error>"
                        f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>")

    def problem(self, what):
        with self.cond:
            self.problems.append(what)
            self.cond.notify_all()
        return self.error(400, "InvalidParameter", what)

    def handle(self, path, headers, body):
        h = {k.lower(): v for k, v in headers.items()}
        m = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                         r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})", h.get("authorization", ""))
        if m is None:
            return self.problem("no AWS4-HMAC-SHA256 Authorization header: " + h.get("authorization", "")[:80])
        key_id, date, region, service, signed, signature = m.groups()
        amz_date = h.get("x-amz-date", "")
        if key_id != KEY_ID or region != SIGNING_REGION or service != "sns" or date != amz_date[:8]:
            return self.problem(f"credential scope {key_id}/{date}/{region}/{service} for x-amz-date {amz_date}")
        names = signed.split(";")
        for need in ("content-type", "host", "x-amz-content-sha256", "x-amz-date", "x-amz-security-token"):
            if need not in names:
                return self.problem(f"{need} is not signed: {signed}")
        if h.get("x-amz-content-sha256") != hashlib.sha256(body).hexdigest():
            return self.problem("x-amz-content-sha256 is not the body's hash")
        if h.get("x-amz-security-token") != TOKEN:
            return self.problem("x-amz-security-token is not the session token")
        if h.get("content-type") != "application/x-www-form-urlencoded; charset=utf-8":
            return self.problem("content type " + h.get("content-type", ""))
        # botocore signs every header it is given: give it exactly the signed ones.
        req = AWSRequest(method="POST", url=f"https://{h['host']}{path}", data=body,
                         headers={k: h[k] for k in names if k in h})
        req.context["timestamp"] = amz_date
        auth = SigV4Auth(Credentials(KEY_ID, SECRET, TOKEN), "sns", SIGNING_REGION)
        expected = auth.signature(auth.string_to_sign(req, auth.canonical_request(req)), req)
        if expected != signature:
            with self.cond:
                self.rejected.append(body)
                self.cond.notify_all()
            return self.error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match "
                              "the signature you provided.")
        # The form: AWS's encoding (unreserved characters and %XX only), then its fields.
        text = body.decode("ascii", errors="replace")
        if not re.fullmatch(r"([A-Za-z0-9._~%-]+=[A-Za-z0-9._~%-]*)(&[A-Za-z0-9._~%-]+=[A-Za-z0-9._~%-]*)*", text):
            return self.problem("form body not encoded the AWS way: " + text[:200])
        fields = parse_qsl(text, keep_blank_values=True, strict_parsing=True, encoding="utf-8", errors="strict")
        f = dict(fields)
        if len(f) != len(fields):
            return self.problem("a field given twice")
        if f.get("Action") != "Publish" or f.get("Version") != "2010-03-31":
            return self.problem(f"Action/Version {f.get('Action')}/{f.get('Version')}")
        attrs = {}
        i = 1
        while f"MessageAttributes.entry.{i}.Name" in f:
            p = f"MessageAttributes.entry.{i}."
            attrs[f[p + "Name"]] = (f.get(p + "Value.DataType"), f.get(p + "Value.StringValue"))
            i += 1
        extra = set(f) - {"Action", "Version", "TopicArn", "Message"} - {
            f"MessageAttributes.entry.{k}.{s}" for k in range(1, i) for s in ("Name", "Value.DataType", "Value.StringValue")}
        if extra:
            return self.problem(f"unexpected fields {sorted(extra)}")
        item = {"topic": f.get("TopicArn"), "message": f.get("Message"), "attrs": attrs}
        with self.cond:
            if self.throttle.get(item["topic"], 0) > 0:
                # AWS's throttling answer is a 400 with code Throttling (no Retry-After).
                self.throttle[item["topic"]] -= 1
                self.throttled += 1
                return self.error(400, "Throttling", "Rate exceeded")
            self.published.append(item)
            self.cond.notify_all()
        return 200, (f"<?xml version=\"1.0\"?>\n<PublishResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\">"
                     f"<PublishResult><MessageId>{uuid.uuid4()}</MessageId></PublishResult>"
                     f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata></PublishResponse>")

    def wait_published(self, pred, timeout=20.0):
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for item in self.published:
                    if pred(item):
                        return item
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"not published; got {self.published}; problems {self.problems}")
                self.cond.wait(left)


def arn(topic):
    return f"arn:aws:sns:{REGION}:{ACCOUNT}:{topic}"


def metric(cl, name, *labels):
    body = http_get(cl.metrics_port("pusher.0"), "/metrics")[1]
    return sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines()
               if l.startswith(name + "{") and all(x in l for x in labels))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("sns"))
    ca, cert, key = make_test_ca(d)
    ep = SnsEndpoint(cert, key)
    files = {}
    for name, value in (("key_id", KEY_ID), ("secret", SECRET), ("wrong", WRONG_SECRET), ("token", TOKEN)):
        files[name] = os.path.join(d, name)
        with open(files[name], "w") as f:
            f.write(value + "\n")
        os.chmod(files[name], 0o600)

    def backend(name, secret_file, prefix):
        return f"""    - name: {name}
      type: sns
      ca_file: {ca}
      retry_base_ms: 20
      retry_max_ms: 200
      sns:
        region: {REGION}
        account_id: "{ACCOUNT}"
        endpoint: https://127.0.0.1:{ep.port}/
        signing_region: {SIGNING_REGION}
        presence_topic: {prefix}presence
        pm_topic: {prefix}pm
        muc_topic: {prefix}muc
        access_key_id_file: {files['key_id']}
        secret_access_key_file: {secret_file}
        session_token_file: {files['token']}"""

    extra = "pusher:\n  backends:\n" + backend("sns_good", files["secret"], "") + "\n" + \
        backend("sns_bad", files["wrong"], "bad_")
    cl = Cluster(d, c2s=1, router=1, mam=1, pusher=1, gd=0, extra=extra)
    cl.start()
    for u in ("alice", "bob"):
        cl.ctl("register", f"{u}@localhost", "pw")
    try:
        yield cl, ep
    finally:
        cl.stop()
        ep.stop()


def test_presence_and_chat_published_and_signed(env):
    cl, ep = env
    t0 = time.time()
    alice = login(cl, "alice", "pw", "phone")
    alice.presence()
    online = ep.wait_published(lambda i: i["topic"] == arn("presence") and '"user_id":"alice@localhost"' in i["message"]
                               and '"present":true' in i["message"])
    assert online["message"] == '{"present":true,"user_id":"alice@localhost"}'
    a = online["attrs"]
    assert a["event_kind"] == ("String", "online")
    assert a["user_id"] == ("String", "alice@localhost")
    assert a["event_id"][0] == "String" and a["event_id"][1]
    assert a["event_time_us"][0] == "Number"
    assert t0 - 5 <= int(a["event_time_us"][1]) / 1e6 <= time.time() + 5

    bob = login(cl, "bob", "pw", "laptop")
    bob.presence()
    ep.wait_published(lambda i: i["message"] == '{"present":true,"user_id":"bob@localhost"}')
    alice.send(f"<message to='bob@localhost/laptop' type='chat' id='m1'><body>{BODY.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')}</body></message>")
    bob.wait("message", id="m1")
    pm = ep.wait_published(lambda i: i["topic"] == arn("pm"))
    want = json.dumps({"from_user_id": "alice@localhost", "message": BODY, "to_user_id": "bob@localhost"},
                      separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    assert pm["message"] == want          # exact bytes: keys, order, escaping, raw UTF-8
    assert json.loads(pm["message"])["message"] == BODY
    assert pm["attrs"]["event_kind"] == ("String", "chat")
    assert pm["attrs"]["user_id"] == ("String", "alice@localhost")
    assert pm["attrs"]["event_id"][1] not in (online["attrs"]["event_id"][1],)

    # A normal message (no type) is not published to the pm topic.
    alice.send("<message to='bob@localhost/laptop' id='m2'><body>normal</body></message>")
    bob.wait("message", id="m2")

    alice.close()
    off = ep.wait_published(lambda i: i["message"] == '{"present":false,"user_id":"alice@localhost"}')
    assert off["topic"] == arn("presence")
    assert off["attrs"]["event_kind"] == ("String", "offline")
    bob.close()
    ep.wait_published(lambda i: i["message"] == '{"present":false,"user_id":"bob@localhost"}')

    assert ep.problems == []
    assert not any("normal" in i["message"] for i in ep.published)
    good = [i for i in ep.published if not i["topic"].endswith(("bad_presence", "bad_pm", "bad_muc"))]
    assert len([i for i in good if i["topic"] == arn("pm")]) == 1
    # Every accepted request was the good backend's: the wrong secret never passed the check.
    assert all(":bad_" not in i["topic"] for i in ep.published)
    # The good backend's five events (two online, one chat, two offline) counted ok.
    assert wait_until(lambda: metric(cl, "meerkat_push_events_total", 'backend="sns_good"', 'result="ok"') >= 5, 10)


def test_wrong_secret_rejected_and_counted_failed(env):
    cl, ep = env
    # The same five events went to the backend with the wrong secret: the endpoint answered
    # each 403 SignatureDoesNotMatch (a final failure, not retried) and the pusher counted them.
    assert wait_until(lambda: metric(cl, "meerkat_push_events_total", 'backend="sns_bad"', 'result="failed"') >= 5, 20), \
        http_get(cl.metrics_port("pusher.0"), "/metrics")[1]
    with ep.cond:
        rejected = list(ep.rejected)
    assert len(rejected) >= 5
    assert all(b"bad_" in b for b in rejected)
    assert metric(cl, "meerkat_push_events_total", 'backend="sns_bad"', 'result="ok"') == 0
    assert metric(cl, "meerkat_push_retries_total", 'backend="sns_bad"') == 0
    log = cl.read_log()
    assert "SignatureDoesNotMatch" in log
    # Credentials never reach the log (debug level), whatever happened.
    for secret in (SECRET, WRONG_SECRET, TOKEN):
        assert secret not in log


def test_throttling_retried_then_published_once(env):
    cl, ep = env
    retries = metric(cl, "meerkat_push_retries_total", 'backend="sns_good"')
    with ep.cond:
        ep.throttle[arn("pm")] = 2
    alice = login(cl, "alice", "pw", "tablet")
    bob = login(cl, "bob", "pw", "desk")
    alice.send("<message to='bob@localhost/desk' type='chat' id='t1'><body>throttled twice</body></message>")
    bob.wait("message", id="t1")
    item = ep.wait_published(lambda i: '"message":"throttled twice"' in i["message"])
    assert item["topic"] == arn("pm")
    assert ep.throttled == 2
    # Two 400 Throttling answers: two retries, then one Publish accepted, no duplicate.
    assert wait_until(lambda: metric(cl, "meerkat_push_retries_total", 'backend="sns_good"') >= retries + 2, 10)
    with ep.cond:
        assert sum('"message":"throttled twice"' in i["message"] for i in ep.published) == 1
    alice.close()
    bob.close()
    assert ep.problems == []
