#!/usr/bin/env python3
"""Checks src/contract/openapi.yaml and src/contract/asyncapi.yaml.

  scripts/check-contract.py

Creates its own virtualenv on first run (in $CONTRACT_VENV, default
/tmp/chatapp-contract-venv) and re-runs itself there. It checks that

- openapi.yaml is a valid OpenAPI 3.1 document (openapi-spec-validator);
- every schema of both documents is a valid JSON Schema (draft 2020-12, and
  draft-07 for the AsyncAPI ones), every pattern compiles, every local $ref
  resolves;
- the AsyncAPI operations only use their channel's messages, every frame
  schema is in `ServerFrame` / `ClientFrame` and pins its `type`;
- every OpenAPI response carries `X-Request-Id`, every 429 `rate_limited`
  `Retry-After`, every 405 `Allow`; each `x-error-codes` value is an `Error`
  code and the statuses match the codes; every operation with a body answers
  413 / 415 and `invalid_text`, every authenticated one 401, the rate-limited
  and password-hashing ones 429 / 503 `busy`;
- the schemas copied from openapi.yaml into asyncapi.yaml did not drift
  (`Member` less `online`), nor `Chat` from `ChatDetail`;
- sample bodies and frames (the README's examples and hand-written ones)
  validate, and broken ones do not.

It needs no server and no database. Exit status 0 when everything holds.
"""

import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.environ.get("CONTRACT_VENV", "/tmp/chatapp-contract-venv")
REQUIREMENTS = [
    "openapi-spec-validator==0.9.0",
    "jsonschema==4.26.0",
    "PyYAML==6.0.4",
    "rfc3339-validator==0.1.4",
]


def in_venv():
    return os.path.realpath(sys.prefix) == os.path.realpath(VENV)


def bootstrap():
    python = os.path.join(VENV, "bin", "python")
    stamp = os.path.join(VENV, ".chatapp-contract-requirements")
    wanted = "\n".join(REQUIREMENTS)
    current = open(stamp).read() if os.path.exists(stamp) else None
    if current != wanted:
        print(f"creating the virtualenv {VENV} ...", file=sys.stderr)
        venv.create(VENV, with_pip=True, clear=os.path.exists(VENV))
        subprocess.check_call([python, "-m", "pip", "install", "-q", *REQUIREMENTS])
        with open(stamp, "w") as f:
            f.write(wanted)
    os.execv(python, [python, os.path.abspath(__file__), *sys.argv[1:]])


if not in_venv():
    bootstrap()

# ---------------------------------------------------------------- in the venv
import copy  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402

import yaml  # noqa: E402
from jsonschema import Draft7Validator, Draft202012Validator  # noqa: E402
from openapi_spec_validator import validate as validate_openapi  # noqa: E402
from referencing import Registry, Resource  # noqa: E402
from referencing.jsonschema import DRAFT202012  # noqa: E402

OPENAPI_PATH = os.path.join(ROOT, "src", "contract", "openapi.yaml")
ASYNCAPI_PATH = os.path.join(ROOT, "src", "contract", "asyncapi.yaml")
OPENAPI_URI = "urn:chatapp:contract:openapi"
ASYNCAPI_URI = "urn:chatapp:contract:asyncapi"

failures = []


def fail(message):
    failures.append(message)
    print("FAIL", message)


def load(path):
    with open(path) as f:
        # Through JSON: plain data only (YAML dates etc. would not be JSON).
        return json.loads(json.dumps(yaml.safe_load(f)))


openapi = load(OPENAPI_PATH)
asyncapi = load(ASYNCAPI_PATH)
registry = Registry().with_resources(
    [
        (OPENAPI_URI, Resource(contents=openapi, specification=DRAFT202012)),
        (ASYNCAPI_URI, Resource(contents=asyncapi, specification=DRAFT202012)),
    ]
)


def validator(uri, name):
    return Draft202012Validator(
        {"$ref": f"{uri}#/components/schemas/{name}"},
        registry=registry,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def walk(node, path="#"):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}/{i}")


def pointer(doc, ref):
    node = doc
    for part in ref.lstrip("#/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


# ------------------------------------------------------------ document checks
def check_openapi_document():
    try:
        validate_openapi(copy.deepcopy(openapi))
    except Exception as e:  # the validator raises its own exception types
        fail(f"openapi.yaml is not a valid OpenAPI 3.1 document: {e}")


def schemas_of(doc, is_asyncapi):
    out = [(f"#/components/schemas/{k}", v) for k, v in doc["components"]["schemas"].items()]
    for path, node in walk(doc):
        if not isinstance(node, dict):
            continue
        if path.startswith("#/components/schemas/"):
            continue
        for key in ("schema", "query", "headers") if is_asyncapi else ("schema",):
            if isinstance(node.get(key), dict) and "$ref" not in node[key]:
                out.append((f"{path}/{key}", node[key]))
    return out


def check_schemas(name, doc, is_asyncapi):
    count = 0
    for path, schema in schemas_of(doc, is_asyncapi):
        count += 1
        try:
            Draft202012Validator.check_schema(schema)
        except Exception as e:
            fail(f"{name} {path}: not a valid draft 2020-12 schema: {e}")
        if is_asyncapi:
            try:
                Draft7Validator.check_schema(schema)
            except Exception as e:
                fail(f"{name} {path}: not a valid draft-07 schema: {e}")
    patterns = 0
    for path, node in walk(doc):
        if path.endswith("/pattern") and isinstance(node, str):
            patterns += 1
            try:
                re.compile(node)
            except re.error as e:
                fail(f"{name} {path}: pattern does not compile: {e}")
        if path.endswith("/$ref") and isinstance(node, str):
            if not node.startswith("#/"):
                fail(f"{name} {path}: non-local $ref {node} (the files must be self-contained)")
                continue
            try:
                pointer(doc, node)
            except (KeyError, IndexError, ValueError):
                fail(f"{name} {path}: $ref {node} does not resolve")
    print(f"{name}: {count} schemas, {patterns} patterns and every $ref checked")


def check_asyncapi_structure():
    channels = asyncapi["channels"]
    for op_name, op in asyncapi["operations"].items():
        channel_ref = op["channel"]["$ref"]
        channel_prefix = channel_ref + "/messages/"
        refs = [m["$ref"] for m in op.get("messages", [])]
        reply = op.get("reply")
        if reply:
            refs += [m["$ref"] for m in reply.get("messages", [])]
        for ref in refs:
            if not ref.startswith(channel_prefix):
                fail(f"asyncapi operation {op_name}: {ref} is not a message of {channel_ref}")
    used = {
        m["$ref"].rsplit("/", 1)[1]
        for ch in channels.values()
        for m in ch["messages"].values()
    }
    for name in asyncapi["components"]["messages"]:
        if name not in used:
            fail(f"asyncapi message {name} is in no channel")
    schemas = asyncapi["components"]["schemas"]

    def union(name):
        refs = set()
        for branch in schemas[name]["oneOf"]:
            target = branch["$ref"].rsplit("/", 1)[1]
            if "oneOf" in schemas[target]:
                refs |= union(target)
            else:
                refs.add(target)
        return refs

    server, client = union("ServerFrame"), union("ClientFrame")
    for name, schema in schemas.items():
        if not (name.startswith("Server") or name.startswith("Client")) or "oneOf" in schema:
            continue
        if name not in (server if name.startswith("Server") else client):
            fail(f"asyncapi schema {name} is missing from its frame union")
        if "const" not in schema.get("properties", {}).get("type", {}):
            fail(f"asyncapi schema {name} does not pin its type")
        if schema.get("additionalProperties") is not False:
            fail(f"asyncapi schema {name}: the envelope is not closed")
    for name in sorted(server | client):
        message = asyncapi["components"]["messages"].get(name)
        if not message or message["payload"]["$ref"] != f"#/components/schemas/{name}":
            fail(f"asyncapi frame schema {name} has no message of the same name")
            continue
        wanted = schemas[name]["properties"]["type"]["const"]
        if message["name"] != wanted:
            fail(f"asyncapi message {name}: name {message['name']!r} != type {wanted!r}")
    print(f"asyncapi: structure of {len(server)} server and {len(client)} client frame schemas checked")


def strip_descriptions(node):
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def check_copies():
    o, a = openapi["components"]["schemas"], asyncapi["components"]["schemas"]
    for name in ("ReadMarker", "ReplyTo"):
        if strip_descriptions(o[name]) != strip_descriptions(a[name]):
            fail(f"asyncapi {name} drifted from openapi {name}")
    # Events carry members without `online`, which is each viewer's own.
    rest_member = strip_descriptions(o["Member"])
    event_member = {
        **rest_member,
        "required": [k for k in rest_member["required"] if k != "online"],
        "properties": {k: v for k, v in rest_member["properties"].items() if k != "online"},
    }
    if event_member != strip_descriptions(a["Member"]):
        fail("asyncapi Member drifted from openapi Member (they differ only in `online`)")
    detail = strip_descriptions(o["ChatDetail"])
    # Chat is ChatDetail with `members` optional.
    chat = strip_descriptions(o["Chat"])
    if {k: v for k, v in chat.items() if k != "required"} != {k: v for k, v in detail.items() if k != "required"} or set(
        chat["required"]
    ) != set(detail["required"]) - {"members"}:
        fail("openapi Chat drifted from ChatDetail (they differ only in `members` being required)")

    def event_copy(name, dropped, replaced):
        """asyncapi `name` is ChatDetail + event_id, without `dropped`, with `replaced` properties."""
        event = strip_descriptions(a[name])
        props = dict(event["properties"])
        props.pop("event_id", None)
        wanted = {k: v for k, v in detail["properties"].items() if k not in dropped}
        for key, schema in replaced.items():
            if props.get(key) != schema:
                fail(f"asyncapi {name}.{key} should be {schema}")
            wanted[key] = schema
        if props != wanted:
            diff = sorted(k for k in set(props) | set(wanted) if props.get(k) != wanted.get(k))
            fail(f"asyncapi {name} drifted from openapi ChatDetail (+ event_id): {diff}")
        if set(event["required"]) != (set(detail["required"]) - set(dropped)) | {"event_id"}:
            fail(f"asyncapi {name}: required drifted from openapi ChatDetail (+ event_id)")
        if event.get("if") != detail.get("if") or event.get("then") != detail.get("then"):
            fail(f"asyncapi {name}: its if/then drifted from openapi ChatDetail")

    # chat_created: what the added user sees as a new member (no read marker yet).
    event_copy("ChatCreatedPayload", dropped=(), replaced={"last_read_message_id": {"type": "null"}})
    # chat_updated: the chat without any member's own marker and count.
    event_copy("ChatUpdatedPayload", dropped=("last_read_message_id", "unread_count", "mention_count"), replaced={})
    # message / message_updated: the REST body without `id` and `sender`, plus names.
    message = strip_descriptions(o["Message"])["properties"]
    event = strip_descriptions(a["MessageEventPayload"])["properties"]
    for key in ("chat_id", "content", "sender_id", "is_edited", "client_id", "created_at", "updated_at", "reply_to",
                "mentions"):
        if message[key] != event.get(key):
            fail(f"asyncapi MessageEventPayload.{key} drifted from openapi Message.{key}")
    if event["message_id"] != message["id"]:
        fail("asyncapi MessageEventPayload.message_id drifted from openapi Message.id")
    sender = strip_descriptions(o["MessageSender"])["properties"]
    for key in ("username", "display_name"):
        if {k: v for k, v in event[key].items() if k != "type"} != {k: v for k, v in sender[key].items() if k != "type"}:
            fail(f"asyncapi MessageEventPayload.{key} drifted from openapi MessageSender.{key}")
    # A pinned message: a Message with when it was pinned and by whom.
    pinned = strip_descriptions(o["PinnedMessage"])
    whole = strip_descriptions(o["Message"])
    extra = ("pinned_at", "pinned_by")
    if {k: v for k, v in pinned["properties"].items() if k not in extra} != whole["properties"] or [
        k for k in pinned["required"] if k not in extra
    ] != whole["required"] or {k: v for k, v in pinned.items() if k not in ("properties", "required")} != {
        k: v for k, v in whole.items() if k not in ("properties", "required")
    }:
        fail("openapi PinnedMessage drifted from Message (+ pinned_at, pinned_by)")
    codes = set(a["ServerError"]["properties"]["payload"]["properties"]["code"]["enum"])
    rest_codes = set(o["Error"]["properties"]["code"]["enum"])
    ws_only = {"invalid_json", "invalid_frame", "unknown_type", "invalid_payload"}
    if not codes - ws_only <= rest_codes:
        fail(f"asyncapi error codes not in the REST enum: {sorted(codes - ws_only - rest_codes)}")
    print("copies between the two documents checked")


# ------------------------------------------------------- openapi responses
# What the code does (src/http.rs `authed_for`, src/limits.rs, src/password.rs),
# by operationId: the operations with a rate limit, and those running bcrypt.
RATE_LIMITED = {"register", "login", "createChat", "addMembers", "markRead", "sendMessage", "searchMessages"}
BCRYPT = {"register", "login", "updateUser", "deleteUser"}
# Operations that answer 503 busy: the password-hashing queue, and the line of
# WebSocket session starts (ws::admission).
BUSY = BCRYPT | {"connectWebSocket"}
# Operations reading a query string (`http::query_map`): NUL and bad escapes are 400.
READS_QUERY = {"listUsers", "listBlocked", "listChats", "listMembers", "listMessages", "listMentions",
               "searchMessages", "connectWebSocket"}
STATUS_OF_CODE = {
    "validation_failed": 400, "invalid_body": 400, "invalid_id": 400, "invalid_text": 400,
    "invalid_query": 400, "invalid_header": 400, "missing_header": 400, "length_required": 400,
    "not_a_group": 400, "invalid_reply": 400, "upgrade_required": 400, "unauthorized": 401, "invalid_credentials": 401,
    "forbidden": 403, "not_chat_admin": 403, "not_chat_creator": 403, "not_message_sender": 403,
    "not_your_account": 403, "blocked": 403, "not_found": 404, "method_not_allowed": 405,
    "username_taken": 409, "last_admin": 409, "client_id_reused": 409, "chat_full": 409,
    "invalid_emoji": 400, "too_many_reactions": 409, "too_many_pins": 409,
    "payload_too_large": 413, "unsupported_media_type": 415, "rate_limited": 429,
    "too_many_sockets": 429, "internal_error": 500, "database_unavailable": 503,
    "query_timeout": 503, "busy": 503, "too_many_connections": 503,
}


def resolved(node):
    return pointer(openapi, node["$ref"]) if "$ref" in node else node


def check_openapi_responses():
    enum = set(openapi["components"]["schemas"]["Error"]["properties"]["code"]["enum"])
    if enum != set(STATUS_OF_CODE):
        fail(f"openapi Error codes differ from this script's table: {sorted(enum ^ set(STATUS_OF_CODE))}")
    operations = 0
    for path, item in openapi["paths"].items():
        for method, op in item.items():
            if method not in ("get", "put", "post", "delete", "patch"):
                continue
            operations += 1
            name = op["operationId"]
            responses = {status: resolved(r) for status, r in op["responses"].items()}
            codes_at = {}
            for status, response in responses.items():
                headers = response.get("headers", {})
                if "X-Request-Id" not in headers:
                    fail(f"openapi {name} {status}: no X-Request-Id header")
                codes = response.get("x-error-codes", [])
                codes_at[status] = set(codes)
                for code in codes:
                    if code not in enum:
                        fail(f"openapi {name} {status}: unknown error code {code}")
                    elif str(STATUS_OF_CODE[code]) != status:
                        fail(f"openapi {name} {status}: {code} is a {STATUS_OF_CODE[code]}")
                error_body = response.get("content", {}).get("application/json", {}).get("schema") == {
                    "$ref": "#/components/schemas/Error"
                }
                if error_body and not codes:
                    fail(f"openapi {name} {status}: an Error response without x-error-codes")
                if "rate_limited" in codes and "Retry-After" not in headers:
                    fail(f"openapi {name} {status}: rate_limited without Retry-After")
                if "busy" in codes and "Retry-After" not in headers:
                    fail(f"openapi {name} {status}: busy without Retry-After")
                if status == "405" and "Allow" not in headers:
                    fail(f"openapi {name} 405: no Allow header")
            everything = set().union(*codes_at.values())
            secured = op.get("security", openapi["security"]) != []
            if secured and "unauthorized" not in everything:
                fail(f"openapi {name}: authenticated but no 401 unauthorized")
            if not secured and "unauthorized" in everything:
                fail(f"openapi {name}: 401 unauthorized without security")
            if "requestBody" in op:
                for code in ("payload_too_large", "unsupported_media_type", "invalid_body", "invalid_text"):
                    if code not in everything:
                        fail(f"openapi {name}: takes a body but lists no {code}")
            if name in READS_QUERY:
                for code in ("invalid_body", "invalid_text"):
                    if code not in everything:
                        fail(f"openapi {name}: reads a query string but lists no {code}")
            if ("rate_limited" in everything) != (name in RATE_LIMITED):
                fail(f"openapi {name}: 429 rate_limited listed {'but' if name not in RATE_LIMITED else 'not, but'} the code limits it")
            if ("busy" in everything) != (name in BUSY):
                fail(f"openapi {name}: 503 busy listed {'but' if name not in BUSY else 'not, but'} it queues (bcrypt or session starts)")
            parameters = [resolved(p) for p in item.get("parameters", []) + op.get("parameters", [])]
            ids = [p for p in parameters if p["in"] == "path" and p["schema"].get("type") == "integer"]
            if ids and "invalid_id" not in everything:
                fail(f"openapi {name}: a path id but no invalid_id")
    print(f"openapi: responses of {operations} operations checked")


# -------------------------------------------------------------------- samples
def without(d, key):
    return {k: v for k, v in d.items() if k != key}


TS = "2026-11-25T10:00:00.123456Z"
USER = {"id": 3, "username": "alice", "display_name": None, "created_at": TS, "last_seen": None}
MEMBER = {"user_id": 3, "username": "alice", "display_name": "Alice", "is_admin": True, "joined_at": TS}
CHAT = {
    "id": 7, "name": "team", "is_group": True, "creator_id": 3, "created_at": TS,
    "updated_at": TS, "last_read_message_id": None, "unread_count": 0, "mention_count": 0, "member_count": 1,
}
# Events list members without `online`; REST bodies with it (as the caller sees them).
CHAT_DETAIL = {**CHAT, "members": [MEMBER]}
MANY_MEMBERS = [{**MEMBER, "user_id": i, "username": f"user{i}", "is_admin": i == 1} for i in range(1, 102)]
REST_MEMBER = {**MEMBER, "online": True}
REST_DETAIL = {**CHAT, "members": [REST_MEMBER]}
REST_MANY = [{**m, "online": m["user_id"] % 2 == 0} for m in MANY_MEMBERS]
# What `Chat::shared_view` leaves for chat_updated.
CHAT_SHARED = without(without(without(CHAT_DETAIL, "last_read_message_id"), "unread_count"), "mention_count")
MESSAGE = {
    "id": 42, "chat_id": 7, "sender_id": 3, "content": "hi", "is_edited": False,
    "client_id": "c-1", "created_at": TS, "updated_at": TS,
    "sender": {"id": 3, "username": "alice", "display_name": None}, "reply_to": None,
    "mentions": [], "reactions": [],
}
REPLY_TO = {"id": 41, "sender_id": 4, "content": "the original", "deleted": False}
DELETED_ORIGINAL = {"id": 41, "sender_id": None, "content": None, "deleted": True}
# The README's example exchange, verbatim.
README_CLIENT_MESSAGE = json.loads(
    '{"type":"message","payload":{"chat_id":7,"content":"hi","client_id":"c-1"},"ref":"r1"}'
)
README_ACK = json.loads(
    '{"type":"ack","payload":{"message_id":42,"event_id":1031,"chat_id":7,"client_id":"c-1","duplicate":false},"ref":"r1"}'
)
README_MESSAGE = json.loads(
    '{"type":"message","payload":{"event_id":1031,"message_id":42,"chat_id":7,"content":"hi",'
    '"sender_id":3,"username":"alice","display_name":null,"timestamp":"2026-11-25T10:00:00.123456Z",'
    '"client_id":"c-1","created_at":"2026-11-25T10:00:00.123456Z",'
    '"updated_at":"2026-11-25T10:00:00.123456Z","is_edited":false,"reply_to":null,"mentions":[]}}'
)


def frame(kind, payload, **extra):
    return {"type": kind, "payload": payload, **extra}


REST_SAMPLES = [
    # (schema, instance, valid?)
    ("User", USER, True),
    ("User", {**USER, "last_seen": TS, "display_name": "Alice"}, True),
    ("User", without(USER, "last_seen"), False),
    ("User", {**USER, "password_hash": "x"}, False),
    ("User", {**USER, "display_name": " Alice"}, False),
    ("User", {**USER, "username": "has space"}, False),
    ("AuthResponse", {"token": "v4.local.xyz", "expires_at": TS, "user": USER}, True),
    ("AuthResponse", {"token": "v3.local.xyz", "expires_at": TS, "user": USER}, False),
    ("Chat", CHAT, True),
    ("Chat", REST_DETAIL, True),
    ("Chat", {**CHAT, "name": None, "is_group": False, "creator_id": None, "last_read_message_id": 41,
              "unread_count": 2, "member_count": 2}, True),
    ("Chat", {**CHAT, "unread_count": 1000, "member_count": 1200, "members": REST_MANY[:100]}, True),
    ("Chat", {**CHAT, "members": REST_MANY}, False),
    ("Chat", {**CHAT, "unread_count": 1001}, False),
    ("Chat", {**CHAT, "unread_count": 1000, "mention_count": 1000}, True),
    ("Chat", {**CHAT, "mention_count": 1001}, False),
    ("Chat", without(CHAT, "mention_count"), False),
    ("Chat", without(CHAT, "member_count"), False),
    ("Chat", {**CHAT, "member_count": 0}, False),
    ("Chat", {**CHAT, "name": None}, False),
    ("Chat", {**CHAT, "name": "  padded  "}, False),
    ("Chat", {**CHAT, "dm_key": "3:4"}, False),
    ("Chat", {**CHAT, "created_at": "yesterday"}, False),
    ("ChatDetail", REST_DETAIL, True),
    ("ChatDetail", CHAT, False),
    ("ChatDetail", {**REST_DETAIL, "members": []}, False),
    # A member's presence is always told in a REST body.
    ("ChatDetail", CHAT_DETAIL, False),
    ("Member", {**REST_MEMBER, "online": False}, True),
    ("Member", MEMBER, False),
    ("ChatPresence", {"member_count": 1200, "online_count": 2, "online": [3, 9]}, True),
    ("ChatPresence", {"member_count": 5000, "online_count": 1001, "online": list(range(1, 1001))}, True),
    ("ChatPresence", {"member_count": 5000, "online_count": 1001, "online": list(range(1, 1002))}, False),
    ("ChatPresence", {"member_count": 2, "online_count": 0, "online": [], "chat_id": 7}, False),
    ("ChatPresence", {"member_count": 2, "online": []}, False),
    ("Message", MESSAGE, True),
    ("Message", {**MESSAGE, "sender_id": None, "sender": None, "client_id": None}, True),
    ("Message", {**MESSAGE, "is_edited": True, "updated_at": "2026-11-25T10:05:00Z"}, True),
    ("Message", without(MESSAGE, "client_id"), False),
    ("Message", {**MESSAGE, "sender": {"id": 3, "username": "alice"}}, False),
    ("Message", {**MESSAGE, "sender": None}, False),
    ("Message", {**MESSAGE, "sender_id": None}, False),
    ("Message", {**MESSAGE, "content": " hi "}, False),
    ("Message", {**MESSAGE, "reply_to": REPLY_TO}, True),
    ("Message", {**MESSAGE, "reply_to": DELETED_ORIGINAL}, True),
    ("Message", {**MESSAGE, "reply_to": {**REPLY_TO, "content": "x" * 200 + " "}}, False),
    ("Message", {**MESSAGE, "reply_to": {**REPLY_TO, "content": "x" * 199 + " "}}, True),
    ("Message", {**MESSAGE, "reply_to": {**REPLY_TO, "sender_id": None}}, True),
    ("Message", {**MESSAGE, "reply_to": {**DELETED_ORIGINAL, "content": "kept"}}, False),
    ("Message", {**MESSAGE, "reply_to": {**DELETED_ORIGINAL, "sender_id": 4}}, False),
    ("Message", {**MESSAGE, "reply_to": {**REPLY_TO, "content": None}}, False),
    ("Message", without(MESSAGE, "reply_to"), False),
    ("Message", {**MESSAGE, "reactions": [{"emoji": "👍", "count": 2, "me": True},
                                          {"emoji": ":party:", "count": 1, "me": False}]}, True),
    ("Message", {**MESSAGE, "reactions": [{"emoji": "👍", "count": 0, "me": False}]}, False),
    ("Message", {**MESSAGE, "reactions": [{"emoji": "👍", "count": 1}]}, False),
    ("Message", {**MESSAGE, "reactions": [{"emoji": f":e{i}:", "count": 1, "me": False} for i in range(21)]}, False),
    ("Message", without(MESSAGE, "reactions"), False),
    ("PinnedMessage", {**MESSAGE, "pinned_at": TS, "pinned_by": 3}, True),
    ("PinnedMessage", {**MESSAGE, "pinned_at": TS, "pinned_by": None}, True),
    ("PinnedMessage", MESSAGE, False),
    ("PinnedMessage", {**MESSAGE, "pinned_at": None, "pinned_by": 3}, False),
    ("Message", {**MESSAGE, "mentions": [4, 5]}, True),
    ("Message", {**MESSAGE, "mentions": [4, 4]}, False),
    ("Message", {**MESSAGE, "mentions": [0]}, False),
    ("Message", without(MESSAGE, "mentions"), False),
    ("ReadMarker", {"chat_id": 7, "last_read_message_id": 42, "unread_count": 0, "mention_count": 0}, True),
    ("ReadMarker", {"chat_id": 7, "last_read_message_id": 42, "unread_count": 1000, "mention_count": 3}, True),
    ("ReadMarker", {"chat_id": 7, "last_read_message_id": 42, "unread_count": 1200, "mention_count": 0}, False),
    ("ReadMarker", {"chat_id": 7, "last_read_message_id": 42, "unread_count": 0, "mention_count": 1001}, False),
    ("ReadMarker", {"chat_id": 7, "last_read_message_id": 42, "unread_count": 0}, False),
    ("ReadMarker", {"chat_id": 7, "last_read_message_id": None, "unread_count": 0, "mention_count": 0}, False),
    ("Health", {"status": "ok", "service": "chatapp", "version": "0.1.0", "timestamp": TS, "database": "ok"}, True),
    ("Health", {"status": "degraded", "service": "chatapp", "version": "0.1.0", "timestamp": TS, "database": "unavailable"}, True),
    ("Health", {"status": "fine", "service": "chatapp", "version": "0.1.0", "timestamp": TS, "database": "ok"}, False),
    ("Health", {"status": "ok", "service": "chatapp", "version": "0.1.0", "timestamp": TS, "database": "unavailable"}, False),
    ("Health", {"status": "ok", "service": "chatapp", "version": "0.1.0",
                "timestamp": "2026-12-05T01:41:27.558380906Z", "database": "ok"}, True),
    ("Liveness", {"status": "ok"}, True),
    ("Liveness", {"status": "ok", "database": True}, False),
    ("Ready", {"status": "ready"}, True),
    ("Ready", {"status": "draining"}, False),
    ("NotReady", {"status": "unavailable", "database": False, "listener": True}, True),
    ("NotReady", {"status": "draining", "database": True, "listener": True}, True),
    ("NotReady", {"status": "ready", "database": True, "listener": True}, False),
    ("NotReady", {"status": "unavailable"}, False),
    ("WsHealth", {"status": "ok", "node_id": "0123456789abcdef", "connections": 0, "connected_users": 0,
                  "active_rooms": 0, "events_delivered": 0, "slow_consumer_disconnects": 0}, True),
    ("Error", {"error": "content: must be 1 to 4000 characters after trimming", "code": "validation_failed",
               "fields": [{"field": "content", "message": "must be 1 to 4000 characters after trimming"}]}, True),
    ("Error", {"error": "chat not found", "code": "not_found"}, True),
    ("Error", {"error": "chat not found", "code": "not_found", "request_id": "01J9ZQ6V3N"}, True),
    ("Error", {"error": "too many requests; try again in 1814 ms", "code": "rate_limited"}, True),
    ("Error", {"error": "too many open connections, try again shortly", "code": "too_many_connections"}, True),
    ("Error", {"error": "x", "code": "not_found", "request_id": ""}, False),
    ("Error", {"error": "x", "code": "validation_failed"}, False),
    ("Error", {"error": "x", "code": "not_found", "fields": [{"field": "a", "message": "b"}]}, False),
    ("Error", {"error": "x", "code": "teapot"}, False),
    # request bodies
    ("RegisterRequest", {"username": "alice_smith", "password": "correct horse", "display_name": "  Alice  "}, True),
    ("RegisterRequest", {"username": "ab", "password": "correct horse"}, False),
    ("RegisterRequest", {"username": "alice", "password": "x"}, False),
    ("RegisterRequest", {"username": "alice", "password": "correct horse", "display_name": "x" * 101}, False),
    ("RegisterRequest", {"username": "alice", "password": "correct horse", "display_name": " " + "x" * 100 + "\n"}, True),
    ("RegisterRequest", {"username": "alice", "password": "correct\u0000horse"}, False),
    ("LoginRequest", {"username": "alice", "password": "correct horse"}, True),
    ("LoginRequest", {"username": "alice", "password": "a\u0000b"}, False),
    ("DeleteUserRequest", {}, True),
    ("DeleteUserRequest", {"current_password": "correct horse"}, True),
    ("DeleteUserRequest", {"current_password": 5}, False),
    ("UpdateUserRequest", {"display_name": None}, True),
    ("UpdateUserRequest", {"password": "new password", "current_password": "old password"}, True),
    ("UpdateUserRequest", {"password": "new password"}, False),
    ("UpdateUserRequest", {"password": None}, True),
    # Other fields are ignored by the server, unless they hold a NUL (400 invalid_text).
    ("UpdateUserRequest", {"": 0, "x": {"y": [1, {"z": "ok"}, None, 2.5]}}, True),
    ("UpdateUserRequest", {"x\u0000": 1}, False),
    ("UpdateUserRequest", {"x": ["a\u0000"]}, False),
    ("UpdateUserRequest", {"x": {"y": {"z\u0000": True}}}, False),
    ("CreateChatRequest", {"name": "team", "is_group": True, "member_ids": [4, 5]}, True),
    ("CreateChatRequest", {"is_group": True, "member_ids": [4]}, False),
    ("CreateChatRequest", {"name": "   ", "is_group": True}, False),
    ("CreateChatRequest", {"member_ids": [4]}, True),
    ("CreateChatRequest", {"is_group": False, "member_ids": []}, False),
    ("CreateChatRequest", {"is_group": True, "name": "x", "member_ids": [0]}, False),
    ("CreateChatRequest", {"is_group": True, "name": "a\u0000b"}, False),
    ("CreateChatRequest", {"is_group": True, "name": "x", "member_ids": list(range(1, 1001))}, True),
    ("AddMembersRequest", {"member_ids": [4]}, True),
    ("AddMembersRequest", {"member_ids": list(range(1, 1002))}, False),
    ("SetAdminRequest", {"is_admin": None}, False),
    ("ReadRequest", {"message_id": 42}, True),
    ("SendMessageRequest", README_CLIENT_MESSAGE["payload"], True),
    ("SendMessageRequest", {"chat_id": 7, "content": "  \n\t "}, False),
    ("SendMessageRequest", {"chat_id": 7, "content": "a\u0000b"}, False),
    ("SendMessageRequest", {"chat_id": 7, "content": "x" * 4000}, True),
    ("SendMessageRequest", {"chat_id": 7, "content": "x" * 4001}, False),
    ("SendMessageRequest", {"chat_id": 7, "content": " " + "x" * 4000 + " "}, True),
    ("SendMessageRequest", {"chat_id": 7, "content": "hi", "client_id": ""}, False),
    ("SendMessageRequest", {"chat_id": 7, "content": "hi", "reply_to_id": 41}, True),
    ("SendMessageRequest", {"chat_id": 7, "content": "hi", "reply_to_id": None}, True),
    ("SendMessageRequest", {"chat_id": 7, "content": "hi", "reply_to_id": 0}, False),
    ("EditMessageRequest", {"content": "edited"}, True),
    ("ReadRequest", {}, False),
]

SERVER_FRAMES = [
    (README_ACK, True),
    (README_MESSAGE, True),
    (frame("ready", {"user_id": 3, "last_event_id": 0, "chat_ids": [], "recovered": False}), True),
    (frame("ready", {"user_id": 3, "last_event_id": 1031, "chat_ids": [7, 9], "recovered": True}), True),
    (frame("message_updated", {**README_MESSAGE["payload"], "content": "edited", "is_edited": True}), True),
    (frame("message_deleted", {"event_id": 1032, "chat_id": 7, "message_id": 42}), True),
    (frame("chat_created", {**CHAT_DETAIL, "event_id": 1033}), True),
    (frame("chat_created", {**CHAT_DETAIL, "event_id": 1033, "is_group": False, "name": None,
                            "unread_count": 3, "mention_count": 1, "member_count": 2}), True),
    (frame("chat_created", {**CHAT_DETAIL, "event_id": 1033, "member_count": 1200, "members": MANY_MEMBERS[:100]}), True),
    (frame("chat_updated", {**CHAT_SHARED, "name": "renamed", "event_id": 1034}), True),
    (frame("chat_deleted", {"event_id": 1035, "chat_id": 7}), True),
    (frame("member_added", {"event_id": 1036, "chat_id": 7, "members": [{**MEMBER, "is_admin": False}]}), True),
    (frame("member_added", {"event_id": 1036, "chat_id": 7, "members": MANY_MEMBERS[:100]}), True),
    (frame("member_removed", {"event_id": 1037, "chat_id": 7, "user_id": 4, "removed_by": 3}), True),
    (frame("system", {"event_id": 1038, "chat_id": 7, "message": "alice added bob"}), True),
    (frame("typing", {"chat_id": 7, "user_id": 4, "username": "bob"}), True),
    (frame("read", {"chat_id": 7, "user_id": 4, "message_id": 42}), True),
    (frame("presence", {"user_id": 4, "online": True, "last_seen": TS}), True),
    (frame("presence", {"user_id": 4, "online": False, "last_seen": None}), True),
    (frame("presence_snapshot", {"users": [], "truncated": False}), True),
    (frame("presence_snapshot", {"users": [{"user_id": 4, "online": True, "last_seen": TS},
                                           {"user_id": 5, "online": False, "last_seen": None}],
                                 "truncated": True}), True),
    (frame("ack", {"message_id": 42, "event_id": None, "chat_id": 7, "client_id": "c-1", "duplicate": True}), True),
    (frame("ack", {"chat_id": 7, "subscribed": False}, ref={"any": ["json"]}), True),
    (frame("ack", {"chat_id": 7, "last_read_message_id": 42, "unread_count": 0, "mention_count": 0}, ref=None), True),
    (frame("pong", {}), True),
    (frame("pong", {}, ref=5), True),
    (frame("error", {"code": "not_found", "error": "chat not found", "ref": "r2"}), True),
    (frame("error", {"code": "invalid_json", "error": "frame is not valid JSON: ...", "ref": None}), True),
    (frame("error", {"code": "rate_limited", "error": "too many requests; try again in 42 ms", "ref": 58,
                     "retry_after_ms": 42}), True),
    (frame("error", {"code": "invalid_text", "error": "text must not contain NUL characters", "ref": "nul"}), True),
    (frame("error", {"code": "query_timeout", "error": "the request took too long", "ref": None}), True),
    (frame("message", {**README_MESSAGE["payload"], "reply_to": REPLY_TO}), True),
    (frame("message_updated", {**README_MESSAGE["payload"], "reply_to": DELETED_ORIGINAL}), True),
    (frame("message", without(README_MESSAGE["payload"], "reply_to")), False),
    (frame("error", {"code": "invalid_reply", "error": "reply_to_id: must name a message of this chat",
                     "ref": None}), True),
    (frame("reaction_added", {"event_id": 1040, "chat_id": 7, "message_id": 42, "user_id": 4, "emoji": "👍🏽"}), True),
    (frame("reaction_removed", {"event_id": 1041, "chat_id": 7, "message_id": 42, "user_id": 4, "emoji": ":+1:"}), True),
    (frame("reaction_added", {"event_id": 1040, "chat_id": 7, "message_id": 42, "emoji": "👍"}), False),
    (frame("reaction_removed", {"event_id": 1041, "chat_id": 7, "message_id": 42, "user_id": 4, "emoji": ""}), False),
    (frame("message_pinned", {"event_id": 1042, "chat_id": 7, "message_id": 42, "user_id": 3}), True),
    (frame("message_unpinned", {"event_id": 1043, "chat_id": 7, "message_id": 42, "user_id": 3}), True),
    (frame("message_pinned", {"event_id": 1042, "chat_id": 7, "message_id": 42}), False),
    (frame("message_unpinned", {"event_id": 1043, "chat_id": 7, "message_id": 42, "user_id": 3,
                                "pinned_at": TS}), False),
    # A replay after the sender deleted their account.
    (frame("message", {**README_MESSAGE["payload"], "sender_id": None, "username": None}), True),
    (frame("ack", {"chat_id": 7, "last_read_message_id": 42, "unread_count": 1000, "mention_count": 2}, ref=1), True),
    # broken ones
    (frame("message", without(README_MESSAGE["payload"], "event_id")), False),
    (frame("message", {**README_MESSAGE["payload"], "sender": None}), False),
    (frame("message", {**README_MESSAGE["payload"], "sender_id": None}), False),
    (frame("message", {**README_MESSAGE["payload"], "username": None}), False),
    (frame("message", {**README_MESSAGE["payload"], "sender_id": None, "username": None, "display_name": "Bob"}), False),
    (frame("ack", {**README_ACK["payload"], "duplicate": True}), False),
    (frame("ack", {**README_ACK["payload"], "event_id": None}), False),
    (frame("ack", {"chat_id": 7, "last_read_message_id": 4, "unread_count": 1200, "mention_count": 0}, ref=1), False),
    (frame("error", {"code": "rate_limited", "error": "x", "ref": 1}), False),
    (frame("error", {"code": "not_found", "error": "x", "ref": 1, "retry_after_ms": 5}), False),
    (frame("error", {"code": "too_many_sockets", "error": "x", "ref": None}), False),
    # chat_created carries the recipient's (empty) read marker, never another member's.
    (frame("chat_created", {**CHAT_DETAIL, "event_id": 7, "last_read_message_id": 2, "unread_count": 1}), False),
    (frame("chat_created", {**CHAT_DETAIL, "event_id": 1, "members": MANY_MEMBERS}), False),
    (frame("chat_created", {**without(CHAT_DETAIL, "member_count"), "event_id": 1}), False),
    # chat_updated carries no member's own marker or count.
    (frame("chat_updated", {**CHAT_DETAIL, "event_id": 1034}), False),
    (frame("chat_updated", {**CHAT_SHARED, "event_id": 1034, "unread_count": 0}), False),
    (frame("chat_updated", {**CHAT_SHARED, "event_id": 1034, "mention_count": 0}), False),
    (frame("member_added", {"event_id": 1, "chat_id": 7, "members": MANY_MEMBERS}), False),
    (frame("member_added", {"event_id": 1, "chat_id": 7, "members": []}), False),
    (frame("ack", {**README_ACK["payload"], "extra": 1}), False),
    (frame("ready", {"user_id": 3, "last_event_id": 0, "chat_ids": [], "recovered": False}, ref="r1"), False),
    (frame("error", {"code": "validation_failed", "error": "x", "ref": None, "fields": []}), False),
    (frame("error", {"code": "not_found", "error": "x"}), False),
    (frame("error", {"code": "not_found", "error": "x", "ref": None}, ref="r1"), False),
    (frame("pong", {"x": 1}), False),
    (frame("presence", {"user_id": 4, "online": True}), False),
    (frame("presence_snapshot", {"users": []}), False),
    (frame("presence_snapshot", {"users": [{"user_id": 4, "online": True}], "truncated": False}), False),
    (frame("presence_snapshot", {"users": [{"user_id": i, "online": False, "last_seen": None}
                                           for i in range(1, 1002)], "truncated": True}), False),
    # Presence is each viewer's own: an event's members never carry it.
    (frame("chat_created", {**REST_DETAIL, "event_id": 1033}), False),
    (frame("member_added", {"event_id": 1036, "chat_id": 7, "members": [REST_MEMBER]}), False),
    (frame("chat_created", CHAT_DETAIL), False),
    (frame("chat_created", {**CHAT, "event_id": 1}), False),
    (frame("member_removed", {"event_id": 1, "chat_id": 7, "user_id": 4}), False),
    (frame("dance", {}), False),
    ({"type": "message"}, False),
]

CLIENT_FRAMES = [
    (README_CLIENT_MESSAGE, True),
    ({"type": "ping"}, True),
    ({"type": "ping", "payload": None, "ref": 1}, True),
    (frame("join_chat", {"chat_id": 7}), True),
    (frame("leave_chat", {"chat_id": 7}, ref="x"), True),
    (frame("typing", {"chat_id": 7}), True),
    (frame("read", {"chat_id": 7, "message_id": 42}), True),
    (frame("message", {"chat_id": 7, "content": "hi", "client_id": None}), True),
    (frame("message", {"chat_id": 7, "content": "hi", "reply_to_id": 41}), True),
    (frame("message", {"chat_id": 7, "content": "hi", "reply_to_id": "41"}), False),
    ({"type": "ping", "payload": {}}, False),
    (frame("message", {"chat_id": 7, "content": ""}), False),
    (frame("message", {"chat_id": 0, "content": "hi"}), False),
    (frame("typing", {"chat_id": "x"}), False),
    (frame("read", {"chat_id": 7}), False),
    (frame("dance", {}), False),
]


def check_samples():
    checked = 0
    for name, instance, valid in REST_SAMPLES:
        errors = list(validator(OPENAPI_URI, name).iter_errors(instance))
        checked += 1
        if valid and errors:
            fail(f"openapi {name}: a valid sample is refused: {errors[0].message[:200]}")
        if not valid and not errors:
            fail(f"openapi {name}: a broken sample is accepted: {json.dumps(instance)[:200]}")
    for union, samples in (("ServerFrame", SERVER_FRAMES), ("ClientFrame", CLIENT_FRAMES)):
        v = validator(ASYNCAPI_URI, union)
        for instance, valid in samples:
            errors = list(v.iter_errors(instance))
            checked += 1
            if valid and errors:
                best = min(errors, key=lambda e: len(e.message))
                fail(f"asyncapi {union}: a valid frame is refused: {json.dumps(instance)[:160]}: {best.message[:200]}")
            if not valid and not errors:
                fail(f"asyncapi {union}: a broken frame is accepted: {json.dumps(instance)[:200]}")
    # Every example embedded in the documents validates too.
    for name, message in asyncapi["components"]["messages"].items():
        for example in message.get("examples", []):
            checked += 1
            for error in validator(ASYNCAPI_URI, name).iter_errors(example["payload"]):
                fail(f"asyncapi message {name}: its example is refused: {error.message[:200]}")
    print(f"{checked} samples checked")


def main():
    check_openapi_document()
    check_schemas("openapi", openapi, is_asyncapi=False)
    check_schemas("asyncapi", asyncapi, is_asyncapi=True)
    check_asyncapi_structure()
    check_openapi_responses()
    check_copies()
    check_samples()
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)
    print("contract ok")


main()
