"""The embeddings backend: a sentence-transformers model that turns texts (or token ids) into vectors.

An embeddings worker is a :class:`~workers.service.ModelWorker` built with a :class:`SentenceEmbedder` as the
backend of the ``embedding`` job kind and no generation engine (see workers/backends.py): it registers,
heartbeats, reads, acknowledges and reclaims jobs like any worker, and answers each ``embedding`` job while
admitting it, all of the job's inputs in as few forward passes as ``BATCH_SIZE`` allows. A generation job is
refused by the worker's routing of kinds, as a generation worker refuses an embedding job.

The model is loaded with the sentence-transformers library, so its own ``modules.json`` decides the pipeline
(transformer, pooling, normalisation) exactly as it was trained; only local paths are loaded, never the hub.
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import torch

from broker.errors import ContextLengthExceeded, InvalidRequest
from broker.schemas import Done, FinishReason, Job, JobKind, Usage
from workers.loading import resolve_device, resolve_dtype
from workers.prompts import longest_token_chars

log = logging.getLogger(__name__)

# Texts per forward pass: bounds the activations of a request with many long inputs (256 tokens x 32 texts).
BATCH_SIZE = 32


def is_sentence_transformers(model_path: str | Path) -> bool:
    """A sentence-transformers directory names its pipeline in ``modules.json``; a causal LM directory has none."""
    modules = Path(model_path).expanduser() / "modules.json"
    if not modules.is_file():
        return False
    try:
        return isinstance(json.loads(modules.read_text()), list)
    except ValueError:
        return False


def encode_vector(vector: Any) -> str:
    """OpenAI's ``encoding_format=base64``: the bytes of little-endian float32 values."""
    return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")


class SentenceEmbedder:
    """Embeds texts with a local sentence-transformers model: the backend of ``embedding`` jobs (an
    :class:`~workers.backends.Answerer`)."""

    kinds = frozenset({JobKind.EMBEDDING})
    what = "is an embeddings model"

    def __init__(self, model_path: str | Path, *, device: str = "auto", dtype: str = "auto") -> None:
        from sentence_transformers import SentenceTransformer

        device = resolve_device(device)
        path = Path(model_path).expanduser()
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        torch_dtype = resolve_dtype(dtype, device)
        if torch_dtype != torch.float32:
            self.model.to(torch_dtype)
        self.model.eval()
        self.device = self.model.device
        self.tokenizer = self.model.tokenizer
        # renamed in sentence-transformers 6; the old name warns there
        model: Any = self.model
        dimension_of = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dimensions = int(dimension_of() or 0)
        self.max_model_len = int(self.model.max_seq_length or self.tokenizer.model_max_length)
        # A text longer than this cannot fit (see longest_token_chars): refused before it is tokenised, as a
        # generation worker refuses a prompt, so one huge input cannot take the worker's memory
        self.max_input_chars = self.max_model_len * longest_token_chars(self.tokenizer) or None
        self._prefix, self._suffix = self._special_tokens()
        log.info("loaded embeddings model %s on %s (%d dimensions)", path, self.device, self.dimensions)

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts around a text (BERT's [CLS] … [SEP]), so that token-id inputs
        get the same framing as text inputs."""
        framed = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        bare = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        for start in range(len(framed) - len(bare) + 1):
            if framed[start : start + len(bare)] == bare:
                return list(framed[:start]), list(framed[start + len(bare) :])
        return [], []

    def _token_ids(self, inputs: list[str] | list[list[int]]) -> list[list[int]]:
        vocab = len(self.tokenizer)
        ids: list[list[int]] = []
        items: list[str | list[int]] = list(inputs)
        for i, item in enumerate(items):
            if isinstance(item, str):
                if self.max_input_chars and len(item) > self.max_input_chars:
                    raise ContextLengthExceeded(
                        f"This model's maximum context length is {self.max_model_len} tokens; input[{i}] has "
                        f"{len(item)} characters, more than {self.max_input_chars} can be (refused before "
                        "tokenising). Please reduce the length of the input.",
                        param="input",
                    )
                ids.append(list(self.tokenizer(item, add_special_tokens=True)["input_ids"]))
                continue
            bad = next((t for t in item if not 0 <= t < vocab), None)
            if bad is not None:
                raise InvalidRequest(
                    f"token id {bad} in input[{i}] is outside this model's vocabulary (0..{vocab - 1})"
                )
            ids.append(self._prefix + list(item) + self._suffix)
        return ids

    def answer(self, job: Job) -> Done:
        """An ``embedding`` job's answer: one vector per input, in ``done.embeddings``."""
        vectors, prompt_tokens = self.embed(job.inputs or [], job.dimensions)
        usage = Usage(prompt_tokens=prompt_tokens)
        return Done(seq=1, finish_reason=FinishReason.STOP, usage=usage, embeddings=vectors)

    def embed(self, inputs: list[str] | list[list[int]], dimensions: int | None) -> tuple[list[str], int]:
        """One base64 vector per input, in order, and the number of tokens read."""
        if dimensions is not None and dimensions != self.dimensions:
            raise InvalidRequest(
                f"This model does not support reducing its embeddings: its vectors have {self.dimensions} "
                f"dimensions, and {dimensions} were requested. Leave 'dimensions' out.",
                param="dimensions",
            )
        if not inputs:
            raise InvalidRequest("'input' must not be empty", param="input")
        ids = self._token_ids(inputs)
        for i, item in enumerate(ids):
            if len(item) > self.max_model_len:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {self.max_model_len} tokens, however input[{i}] has "
                    f"{len(item)} tokens. Please reduce the length of the input.",
                    param="input",
                )
        vectors: list[str] = []
        for start in range(0, len(ids), BATCH_SIZE):
            batch = self.tokenizer.pad({"input_ids": ids[start : start + BATCH_SIZE]}, return_tensors="pt")
            features = {k: v.to(self.device) for k, v in batch.items()}
            with torch.inference_mode():
                out = self.model(features)["sentence_embedding"]
            vectors.extend(encode_vector(row) for row in out.float().cpu().numpy())
        return vectors, sum(len(item) for item in ids)
