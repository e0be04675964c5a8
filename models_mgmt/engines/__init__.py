"""Engine adapters: how the gateway talks to whatever serves a model.

Every engine offers the same async interface, so the gateway does not care which it has:
  request(endpoint, body) -> dict            a whole response, OpenAI's shape
  open_stream(endpoint, body) -> AsyncIterator[dict]
                                             opens the stream (raising engine errors before any
                                             byte is sent) and yields OpenAI chunk objects
  count_tokens(text) -> int | None           the model's own count, where the engine has one
  count_prompt_tokens(endpoint, body) -> int | None
                                             the prompt as the model sees it (its template), or
                                             None where the engine cannot tell
The body is the client's, with `model` already set to the engine's name for the model.
"""

from models_mgmt.engines.errors import EngineError, EngineRejected, EngineTimeout
from models_mgmt.models import ServedModel

__all__ = ["EngineError", "EngineRejected", "EngineTimeout", "engine_for"]


def engine_for(model: ServedModel):
    if model.engine == ServedModel.Engine.LOCAL:
        from models_mgmt.engines import local

        return local.engine_for(model)
    from models_mgmt.engines.openai_compat import OpenAICompatibleEngine

    return OpenAICompatibleEngine(base_url=model.base_url)
