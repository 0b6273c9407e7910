"""The ``mock`` engine: deterministic chat completions (and legacy completions and embeddings) for
demos, tests and benchmarks (DESIGN §5).

Output is a pure function of the request: words from a fixed vocabulary drawn by a PRNG seeded
with a BLAKE2b hash of ``model``, ``messages``, ``tools``, ``seed`` and the choice index, so the
same request gives the same answer and a different seed or conversation a different one.  Knobs
that only cut the output (``max_tokens``, ``stop``) are not hashed: they truncate the text the
request would otherwise get.

Tokens (:mod:`.text`): one tokenizer counts the prompt and the completion.  One generated token
is one chunk delta, so ``completion_tokens`` is the number of ``content`` / ``reasoning_content``
/ ``arguments`` deltas streamed, and equals the tokenizer's count of the texts they add up to.

Behaviour: 8-32 content tokens of prose by default; ``max_tokens`` / ``max_completion_tokens``
(reasoning included) truncate with ``finish_reason: "length"``; ``stop`` cuts the content before
the first stop string (``"stop"``); every one of ``n`` choices differs; ``reasoning_effort``
(other than ``"none"``) first emits ``reasoning_content`` (more for higher efforts);
``response_format`` ``json_object`` / ``json_schema`` makes the content JSON that fits
(:mod:`.structured`); ``tools`` with ``tool_choice`` other than ``"none"`` call one or, when
``parallel_tool_calls`` allows, several tools with arguments that fit their schemas
(:mod:`.tools`); ``logprobs`` / ``top_logprobs`` add plausible log probabilities to every
content token (:mod:`.logprobs`); ``service_tier`` is reported back as OpenAI does (``auto`` as
``default``, ``fast`` as ``priority``); ``stream_options.include_usage`` adds OpenAI's final
usage chunk.  Values the OpenAI specification forbids are 400s naming the parameter
(:mod:`.validate`).

Legacy completions (:mod:`.legacy`) use the same generator for each choice of each prompt
(``echo``, ``logprobs``, ``suffix`` as OpenAI's); embeddings (:mod:`.embeddings`) are unit vectors
seeded by a hash of the model and the input.

Streaming (:mod:`.chunks`): OpenAI's chunk shapes, one token per chunk.  With no delays the whole
stream is one batch; otherwise the engine sleeps ``ttft_s`` before the first token batch and
``itl_s`` before each next one, a batch holding one token of every choice still generating.
"""

from auditgate.engines.mock.engine import SYSTEM_FINGERPRINT, MockEngine
from auditgate.engines.mock.text import count_tokens, split_tokens

__all__ = ["SYSTEM_FINGERPRINT", "MockEngine", "count_tokens", "split_tokens"]
