"""The official SDKs against a running gemini-gateway (started with `serve --demo`).

usage: python3 sdk_check.py http://127.0.0.1:PORT CLIENT_TOKEN
"""
import sys

import openai
from google import genai
from google.genai import types

base, token = sys.argv[1], sys.argv[2]
model = "gemini-2.0-flash"

# OpenAI SDK: base_url at the gateway's /v1, the gateway token as the API key.
oa = openai.OpenAI(base_url=f"{base}/v1", api_key=token)
answer = oa.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}])
# The rate-limit headers, as the SDK's raw response shows them: the client's 1000 RPM.
raw = oa.chat.completions.with_raw_response.create(
    model=model, messages=[{"role": "user", "content": "hello"}]
)
assert raw.headers.get("x-ratelimit-limit-requests") == "1000", dict(raw.headers)
remaining = int(raw.headers["x-ratelimit-remaining-requests"])
assert 0 < remaining < 1000, dict(raw.headers)
assert raw.headers["x-ratelimit-reset-requests"].endswith("s"), dict(raw.headers)
assert "Mock reply" in raw.parse().choices[0].message.content
assert "Mock reply" in answer.choices[0].message.content, answer
streamed = oa.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "hello there"}], stream=True
)
text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
assert "Mock reply" in text, text
assert any(m.id == model for m in oa.models.list()), "model list"
try:
    openai.OpenAI(base_url=f"{base}/v1", api_key="wrong-token-0000").chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}]
    )
    raise SystemExit("a wrong token was accepted")
except openai.AuthenticationError:
    pass
print("openai SDK: chat, rate-limit headers (with_raw_response), streamed chat, models, wrong token refused")

# google-genai SDK: base URL at the gateway, the gateway token as the API key.
g = genai.Client(api_key=token, http_options=types.HttpOptions(base_url=base))
reply = g.models.generate_content(model=model, contents="hello")
assert "Mock reply" in reply.text, reply
text = "".join(chunk.text or "" for chunk in g.models.generate_content_stream(model=model, contents="hello there"))
assert "Mock reply" in text, text
assert g.models.count_tokens(model=model, contents="hello").total_tokens > 0
assert any(m.name.endswith(model) for m in g.models.list()), "model list"
beta = genai.Client(api_key=token, http_options=types.HttpOptions(base_url=base, api_version="v1beta"))
assert "Mock reply" in beta.models.generate_content(model=model, contents="hello").text
print("google-genai SDK: generate, stream, countTokens, models (v1 and v1beta)")

# What lives in one project (interactions, caches, files, batches, stores) is served by that
# project's keys only: on a model the demo's small project does not limit (3 a minute on the
# model above), so that no call waits a minute for its quota.
model = "gemini-2.5-flash"

# Interactions (the SDK calls /v1/interactions by default): a conversation of three turns
# continued with previous_interaction_id, the last streamed, each turn on the project that
# holds the conversation (the mock answers 404 from any other); get, cancel, delete.
first = g.interactions.create(model=model, input="My name is Ada.")
assert first.id and "turn 1" in (first.output_text or ""), first
second = g.interactions.create(model=model, input="What is my name?", previous_interaction_id=first.id)
assert "turn 2" in (second.output_text or ""), second
text, last = "", None
for event in g.interactions.create(
    model=model, input="Once more?", previous_interaction_id=second.id, stream=True
):
    if event.event_type == "interaction.created":
        last = event.interaction.id
    elif event.event_type == "step.delta" and getattr(event.delta, "text", None):
        text += event.delta.text
assert "turn 3" in text and last, (text, last)
assert g.interactions.get(last).status == "completed"
background = g.interactions.create(model=model, input="take your time", background=True)
assert g.interactions.cancel(background.id).status == "cancelled"
g.interactions.delete(first.id)
try:
    g.interactions.get(first.id)
    raise SystemExit("a deleted interaction was still served")
except Exception as error:  # the SDK's NotFoundError (not a google.genai APIError)
    assert "404" in str(error), error
print("google-genai SDK: interactions create, continue, stream, get, cancel, delete")

# Context caches (the SDK calls /v1/cachedContents): created, used by generate_content on the
# project that holds it (the mock answers 403 from any other), read, extended, listed, deleted.
cache = g.caches.create(
    model=model,
    config=types.CreateCachedContentConfig(
        contents=[types.Content(role="user", parts=[types.Part(text="The manual. " * 800)])],
        ttl="600s",
    ),
)
assert cache.name.startswith("cachedContents/"), cache
for question in ("What does it say?", "And then?"):
    reply = g.models.generate_content(
        model=model, contents=question, config=types.GenerateContentConfig(cached_content=cache.name)
    )
    assert reply.usage_metadata.cached_content_token_count > 1000, reply.usage_metadata
assert g.caches.get(name=cache.name).name == cache.name
g.caches.update(name=cache.name, config=types.UpdateCachedContentConfig(ttl="7200s"))
assert [c.name for c in g.caches.list()] == [cache.name]
g.caches.delete(name=cache.name)
print("google-genai SDK: caches create, use, get, update, list, delete")

# Files (the SDK starts at /upload/v1/files and sends the bytes, 8 MiB a step, to the
# X-Goog-Upload-URL of the answer, which the gateway rewrites to itself): uploaded, used by 20
# generate_content calls and a cache on the project that holds it (the mock answers 403 from
# any other), read, listed, deleted.
import io

data = b"The manual, as a file. " * 420_000  # 9.2 MiB: two upload steps
uploaded = g.files.upload(
    file=io.BytesIO(data), config=types.UploadFileConfig(mime_type="text/plain", display_name="manual")
)
assert uploaded.name.startswith("files/") and uploaded.size_bytes == len(data), uploaded
for question in range(20):
    reply = g.models.generate_content(
        model=model,
        contents=[types.Part.from_uri(file_uri=uploaded.uri, mime_type="text/plain"), f"question {question}"],
    )
    assert "Mock reply" in reply.text, reply
from_file = g.caches.create(
    model=model,
    config=types.CreateCachedContentConfig(
        contents=[
            types.Content(
                role="user",
                parts=[
                    types.Part.from_uri(file_uri=uploaded.uri, mime_type="text/plain"),
                    types.Part(text="The manual. " * 800),
                ],
            )
        ],
        ttl="600s",
    ),
)
reply = g.models.generate_content(
    model=model, contents="And the file?", config=types.GenerateContentConfig(cached_content=from_file.name)
)
assert reply.usage_metadata.cached_content_token_count > 1000, reply.usage_metadata
g.caches.delete(name=from_file.name)
assert g.files.get(name=uploaded.name).size_bytes == len(data)
assert [f.name for f in g.files.list()] == [uploaded.name]
g.files.delete(name=uploaded.name)
assert list(g.files.list()) == []
print("google-genai SDK: files upload (two steps), use in 20 calls and a cache, get, list, delete")

# Batch Mode (the SDK calls /v1/models/{m}:batchGenerateContent and /v1/batches/{id}): an inline
# batch, and one whose requests name an uploaded file (run on the file's project), each polled
# until done; listed, cancelled, deleted. A batch whose requests are in a file is refused.
import time


def finished(job):
    for _ in range(100):
        job = g.batches.get(name=job.name)
        if job.done:
            return job
        time.sleep(0.1)
    raise SystemExit(f"batch {job.name} never finished: {job.state}")


inline_job = finished(
    g.batches.create(
        model=model,
        src=[{"contents": [{"role": "user", "parts": [{"text": f"question {i}"}]}]} for i in range(3)],
        config={"display_name": "inline"},
    )
)
assert inline_job.state.name == "JOB_STATE_SUCCEEDED", inline_job.state
answers = [r.response.text for r in inline_job.dest.inlined_responses]
assert len(answers) == 3 and all("Mock batch reply" in a for a in answers), answers
doc = g.files.upload(
    file=io.BytesIO(b"A short document."), config=types.UploadFileConfig(mime_type="text/plain")
)
file_part = {"file_data": {"file_uri": doc.uri, "mime_type": "text/plain"}}
with_file = finished(
    g.batches.create(model=model, src=[{"contents": [{"parts": [file_part, {"text": "Summarise it."}]}]}])
)
assert with_file.state.name == "JOB_STATE_SUCCEEDED", with_file.state
try:
    g.batches.create(model=model, src=doc.name)
    raise SystemExit("a batch from a file of requests was accepted")
except genai.errors.ClientError as refused:
    assert refused.code == 400, refused
assert {j.name for j in g.batches.list()} == {inline_job.name, with_file.name}
stopped = g.batches.create(model=model, src=[{"contents": [{"parts": [{"text": "stop me"}]}]}])
g.batches.cancel(name=stopped.name)
assert g.batches.get(name=stopped.name).state.name == "JOB_STATE_CANCELLED"
for job in (inline_job, with_file, stopped):
    g.batches.delete(name=job.name)
g.files.delete(name=doc.name)
print("google-genai SDK: batches inline and naming a file, polled, listed, cancelled, deleted; a file of requests refused")

# File Search stores (the SDK calls /v1/fileSearchStores): created, a file imported, searched by
# generate_content on the store's project (the mock answers 403 from any other), listed, deleted.
notes = g.files.upload(file=io.BytesIO(b"The notes."), config=types.UploadFileConfig(mime_type="text/plain"))
store = None
for _ in range(6):
    # A store on the file's project (a file of another project cannot be imported: 400).
    candidate = g.file_search_stores.create(config={"display_name": "notes"})
    try:
        operation = g.file_search_stores.import_file(file_search_store_name=candidate.name, file_name=notes.name)
        store = candidate
        break
    except genai.errors.ClientError as refused:
        assert refused.code == 400, refused
        g.file_search_stores.delete(name=candidate.name, config={"force": True})
assert store is not None, "no store landed on the file's project"
assert operation.name.startswith(store.name + "/operations/"), operation
tool = types.Tool(file_search=types.FileSearch(file_search_store_names=[store.name]))
for question in range(5):
    reply = g.models.generate_content(
        model=model, contents=f"What do the notes say? {question}", config=types.GenerateContentConfig(tools=[tool])
    )
    assert "Mock reply" in reply.text, reply
assert [s.name for s in g.file_search_stores.list()] == [store.name]
g.file_search_stores.delete(name=store.name, config={"force": True})
g.files.delete(name=notes.name)
print("google-genai SDK: File Search store create, import, search, list, delete")
