"""Vision-language requests end to end through the server (tiny Qwen2-VL built offline).

Outputs are checked against mlx-vlm's own single-request greedy generation of the same prompt and
image, so a wrong embedding merge, a wrong mrope position or a batch mix-up shows as different text.
"""

from __future__ import annotations

import json
import threading
import time

import anthropic
import httpx
import openai
import pytest
from vision_helpers import openai_content, reference_greedy, reference_greedy_video

from vllm_mlx.media.decode import MediaLimits, decode_video
from vllm_mlx_testing.vision_models import (
    build_tiny_vision_model,
    data_url,
    random_image,
    random_video,
)

N = 12  # greedy tokens compared
QUESTION = [{"type": "text", "text": "What is in this picture?"}, {"type": "image"}]


@pytest.fixture(scope="module")
def qwen2vl(models_dir):
    return build_tiny_vision_model(models_dir / "tiny-qwen2-vl", "qwen2_vl")


@pytest.fixture(scope="module")
def server(start_server, qwen2vl):
    # "localhost" is exempt from the private-address check (for the http test); 127.0.0.1 is not
    return start_server(qwen2vl, "--served-model-name", "vl", "--max-num-seqs", "8", "--media-allowed-hosts", "localhost")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)


IMAGES = {k: random_image(k) for k in range(1, 5)}


def chat(client, content, **kw):
    kw.setdefault("max_tokens", N)
    kw.setdefault("temperature", 0)
    extra = kw.pop("extra_body", {}) | {"ignore_eos": True}
    return client.chat.completions.create(model="vl", messages=[{"role": "user", "content": content}],
                                          extra_body=extra, **kw)


def ask(client, images, content=QUESTION, **kw):
    return chat(client, openai_content(content, [data_url(IMAGES[i]) for i in images]), **kw)


def test_image_by_data_url_matches_mlx_vlm(client, qwen2vl):
    out = ask(client, [1])
    assert out.choices[0].message.content == reference_greedy(qwen2vl, QUESTION, [IMAGES[1]], N)
    assert out.usage.completion_tokens == N
    assert out.usage.prompt_tokens > 16  # the text plus the image's placeholder tokens


def test_different_images_same_text_are_independent(client, qwen2vl, server):
    """Placeholder tokens are the same for every image: the prefix cache must not mix them up."""
    first = ask(client, [2]).choices[0].message.content
    second = ask(client, [3])
    assert second.choices[0].message.content == reference_greedy(qwen2vl, QUESTION, [IMAGES[3]], N)
    assert first != second.choices[0].message.content
    before = httpx.get(f"{server.base_url}/v1/cache/stats").json()["vision_embeddings"]
    again = ask(client, [2])
    assert again.choices[0].message.content == first
    # the resent request reuses its cached prompt (keys/values): the image is not even looked up
    assert again.usage.prompt_tokens_details.cached_tokens >= again.usage.prompt_tokens - 1
    after = httpx.get(f"{server.base_url}/v1/cache/stats").json()["vision_embeddings"]
    assert after["encoded_items"] == before["encoded_items"]


def test_vision_embedding_cache_hit_on_resend(client, server, qwen2vl):
    """A resent image is not re-encoded: in the next turn of a conversation (its keys/values are
    reused), and after different text (the vision-embedding cache hits)."""
    url = data_url(random_image(40))

    def stats():
        return httpx.get(f"{server.base_url}/v1/cache/stats").json()["vision_embeddings"]

    before = stats()
    turn1 = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                          {"type": "text", "text": "Describe it."}]}]
    r1 = client.chat.completions.create(model="vl", messages=turn1, max_tokens=4, temperature=0)
    turn2 = turn1 + [{"role": "assistant", "content": r1.choices[0].message.content or "ok"},
                     {"role": "user", "content": "And the colours?"}]
    client.chat.completions.create(model="vl", messages=turn2, max_tokens=4, temperature=0)
    assert stats()["encoded_items"] == before["encoded_items"] + 1
    # different leading text: the prompt's keys/values cannot be reused, the embedding can
    content = [{"type": "text", "text": "Something else first."}, {"type": "image"}]
    out = chat(client, openai_content(content, [url]))
    after = stats()
    assert after["encoded_items"] == before["encoded_items"] + 1 and after["hits"] == before["hits"] + 1
    assert out.choices[0].message.content == reference_greedy(qwen2vl, content, [random_image(40)], N)
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert "vllm_mlx_vision_cache_hits" in metrics


def test_prefix_hit_over_the_first_image_encodes_only_the_second(client, qwen2vl, server):
    """A prompt whose cached prefix covers image A: only image B goes through the vision tower."""
    a, b = random_image(50), random_image(51)
    first = [{"type": "text", "text": "Look at"}, {"type": "image"}]
    chat(client, openai_content(first, [data_url(a)]), max_tokens=1)
    before = httpx.get(f"{server.base_url}/v1/cache/stats").json()["vision_embeddings"]
    both = first + [{"type": "text", "text": "and then at"}, {"type": "image"}]
    out = chat(client, openai_content(both, [data_url(a), data_url(b)]))
    after = httpx.get(f"{server.base_url}/v1/cache/stats").json()["vision_embeddings"]
    assert out.usage.prompt_tokens_details.cached_tokens > 16  # image A's tokens came from the cache
    assert (after["encoded_items"] - before["encoded_items"], after["hits"] - before["hits"]) == (1, 0)
    assert out.choices[0].message.content == reference_greedy(qwen2vl, both, [a, b], N)


def test_two_images_in_one_message(client, qwen2vl):
    content = [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "text", "text": "with"},
               {"type": "image"}]
    out = ask(client, [1, 2], content)
    assert out.choices[0].message.content == reference_greedy(qwen2vl, content, [IMAGES[1], IMAGES[2]], N)
    swapped = ask(client, [2, 1], content)
    assert swapped.choices[0].message.content == reference_greedy(qwen2vl, content, [IMAGES[2], IMAGES[1]], N)
    assert swapped.usage.prompt_tokens == out.usage.prompt_tokens


def test_streaming_arrives_token_by_token(client, qwen2vl):
    stream = ask(client, [1], max_tokens=24, stream=True)
    pieces, times = [], []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            times.append(time.monotonic())
    assert len(pieces) >= 10  # one delta per token (or a few held back for UTF-8), not one blob
    assert "".join(pieces) == reference_greedy(qwen2vl, QUESTION, [IMAGES[1]], 24)


def test_batched_with_text_and_other_images(client, qwen2vl, server):
    """Vision rows (different images, different mrope deltas) and a text row decode in one batch."""
    LONG = 200  # long enough that the three overlap even when the CPU is busy
    results, peak = {}, [0]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], httpx.get(f"{server.base_url}/health").json()["engine"]["running"])
            time.sleep(0.01)

    def run(key, fn):
        results[key] = fn()

    jobs = {
        "img1": lambda: ask(client, [1], max_tokens=LONG).choices[0].message.content,
        "img4": lambda: ask(client, [4], max_tokens=LONG).choices[0].message.content,
        "text": lambda: chat(client, "Tell me a story about the sea.", max_tokens=LONG).choices[0].message.content,
    }
    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()
    assert peak[0] >= 2, "the requests never ran together"
    assert results["img1"] == reference_greedy(qwen2vl, QUESTION, [IMAGES[1]], LONG)
    assert results["img4"] == reference_greedy(qwen2vl, QUESTION, [IMAGES[4]], LONG)
    story = [{"type": "text", "text": "Tell me a story about the sea."}]
    assert results["text"] == reference_greedy(qwen2vl, story, [], LONG)


def test_per_request_controls_on_vision_requests(client):
    # seeded sampling reproduces; a different seed differs
    a = ask(client, [1], temperature=1.0, seed=7, max_tokens=16).choices[0].message.content
    b = ask(client, [1], temperature=1.0, seed=7, max_tokens=16).choices[0].message.content
    c = ask(client, [1], temperature=1.0, seed=8, max_tokens=16).choices[0].message.content
    assert a == b and a != c
    # n continuations share one prefill of the image prompt
    two = ask(client, [1], n=2)
    assert [c.message.content for c in two.choices] == [ask(client, [1]).choices[0].message.content] * 2
    # penalties apply to the vision row (greedy output changes, and the request is still reproducible)
    plain = ask(client, [1], max_tokens=32).choices[0].message.content
    penalised = ask(client, [1], max_tokens=32, frequency_penalty=2.0, presence_penalty=2.0).choices[0].message.content
    assert penalised != plain
    assert ask(client, [1], max_tokens=32, frequency_penalty=2.0,
               presence_penalty=2.0).choices[0].message.content == penalised
    # stop string and logprobs
    full = ask(client, [1]).choices[0].message.content
    stop = full[3:5]
    cut = ask(client, [1], stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].message.content == full[: full.index(stop)]
    lp = ask(client, [1], logprobs=True, top_logprobs=2, max_tokens=4)
    assert len(lp.choices[0].logprobs.content) == 4 and len(lp.choices[0].logprobs.content[0].top_logprobs) == 2
    # structured output from a vision request
    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 8}},
              "required": ["colour"], "additionalProperties": False}
    out = ask(client, [1], max_tokens=40, extra_body={"ignore_eos": False},
              response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    assert set(json.loads(out.choices[0].message.content)) == {"colour"}


def test_anthropic_image_blocks(server, client, qwen2vl):
    ac = anthropic.Anthropic(base_url=server.base_url, api_key="x", max_retries=0)
    png = IMAGES[1]
    import base64

    msg = ac.messages.create(model="vl", max_tokens=N, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": base64.b64encode(png).decode()}}]}],
        extra_body={"ignore_eos": True, "temperature": 0})
    assert msg.content[0].text == reference_greedy(qwen2vl, QUESTION, [png], N)
    same = ask(client, [1])
    assert msg.usage.input_tokens + msg.usage.cache_read_input_tokens == same.usage.prompt_tokens  # image tokens count
    counted = ac.messages.count_tokens(model="vl", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": base64.b64encode(png).decode()}}]}])
    assert counted.input_tokens == same.usage.prompt_tokens
    with pytest.raises(anthropic.BadRequestError) as err:
        ac.messages.create(model="vl", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "bm90IGFuIGltYWdl"}}]}])
    assert err.value.body["type"] == "error" and "does not match media_type" in err.value.body["error"]["message"]
    broken_png = base64.b64encode(png[:40] + b"garbage" * 8).decode()  # a PNG's start, then nothing usable
    with pytest.raises(anthropic.BadRequestError) as err:
        ac.messages.create(model="vl", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": broken_png}}]}])
    assert "could not be decoded" in err.value.body["error"]["message"]


def test_responses_input_image(client, qwen2vl):
    resp = client.responses.create(model="vl", max_output_tokens=N, temperature=0, input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is in this picture?"},
        {"type": "input_image", "image_url": data_url(IMAGES[1])}]}], extra_body={"ignore_eos": True})
    assert resp.output_text == reference_greedy(qwen2vl, QUESTION, [IMAGES[1]], N)


def test_bad_images_are_400_in_openai_shape(client, server):
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, [{"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}])
    assert "could not be decoded" in err.value.body["message"] and err.value.body["param"] == "messages.0.content.0"
    with pytest.raises(openai.BadRequestError, match="private|loopback|not allowed|refused"):
        chat(client, [{"type": "image_url", "image_url": {"url": f"{server.base_url}/health"}}])
    with pytest.raises(openai.BadRequestError, match="needs a URL"):
        chat(client, [{"type": "image_url", "image_url": {}}])
    # the engine is fine afterwards
    assert ask(client, [1], max_tokens=2).usage.completion_tokens == 2


def test_video_frames_at_requested_fps(client, qwen2vl):
    url = data_url(random_video(seconds=2.0, fps=8), "video/mp4")

    def video(**opts):
        part = {"type": "video_url", "video_url": {"url": url, **opts}}
        return chat(client, [{"type": "text", "text": "What happens?"}, part], max_tokens=4)

    two = video(fps=2.0)  # 4 frames = 2 temporal groups
    four = video(fps=4.0)  # 8 frames = 4 groups (the processor shrinks frames to its pixel budget)
    capped = video(fps=4.0, max_frames=4)  # 4 frames again
    assert four.usage.prompt_tokens != two.usage.prompt_tokens
    assert capped.usage.prompt_tokens == two.usage.prompt_tokens
    assert two.usage.completion_tokens == 4
    frames = decode_video(random_video(seconds=2.0, fps=8), MediaLimits(), fps=2.0).frames
    assert len(frames) == 4
    assert two.choices[0].message.content == reference_greedy_video(
        qwen2vl, [{"type": "text", "text": "What happens?"}, {"type": "video"}], frames, 2.0, 4)
    with pytest.raises(openai.BadRequestError, match="video could not be decoded"):
        chat(client, [{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,bm90IGEgdmlkZW8="}}])


def test_image_by_http_url(client, qwen2vl):
    import http.server

    png = random_image(77)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = png if self.path == "/cat.png" else b"<html>not an image</html>"
            self.send_response(200 if self.path == "/cat.png" else 404)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        port = httpd.server_address[1]
        out = chat(client, openai_content(QUESTION, [f"http://localhost:{port}/cat.png"]))
        assert out.choices[0].message.content == reference_greedy(qwen2vl, QUESTION, [png], N)
        with pytest.raises(openai.BadRequestError, match="404"):
            chat(client, openai_content(QUESTION, [f"http://localhost:{port}/missing.png"]))
    finally:
        httpd.shutdown()


def test_deterministic_mode_runs_vision_rows_alone(start_server, qwen2vl, client):
    det = start_server(qwen2vl, "--served-model-name", "vl", "--deterministic")
    dc = openai.OpenAI(base_url=f"{det.base_url}/v1", api_key="x", max_retries=0)
    assert ask(dc, [3]).choices[0].message.content == reference_greedy(qwen2vl, QUESTION, [IMAGES[3]], N)


def test_capabilities_report_image_and_video_input(server):
    caps = httpx.get(f"{server.base_url}/v1/capabilities").json()
    assert caps["model"]["multimodal"] is True
    assert caps["modalities"]["input"] == ["text", "image", "video"]


def test_cache_clear_empties_the_vision_embedding_cache(client, server):
    url = data_url(random_image(41))
    content = [{"type": "text", "text": "Look."}, {"type": "image"}]

    def stats():
        return httpx.get(f"{server.base_url}/v1/cache/stats").json()["vision_embeddings"]

    chat(client, openai_content(content, [url]))
    assert stats()["entries"] >= 1
    assert httpx.post(f"{server.base_url}/v1/cache/clear").json() == {"cleared": True}
    cleared = stats()
    assert cleared["entries"] == 0 and cleared["bytes"] == 0
    chat(client, openai_content(content, [url]))  # must be encoded again
    assert stats()["encoded_items"] == cleared["encoded_items"] + 1
