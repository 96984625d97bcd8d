"""Triton Python-backend model that turns text into the encoder's inputs with the artifact's tokenizer.json.

`bertship deploy triton` copies this file as `<name>_tokenizer/1/model.py`; it runs inside Triton's Python backend
and needs only `tokenizers` and numpy there. bertship itself never imports it. Its settings (max_length, pad_id,
input names, whether a TEXT_PAIR input exists) come from the `parameters` of the model's config.pbtxt, so the file
is the same for every artifact.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer


class TritonPythonModel:
    """TEXT (and TEXT_PAIR) [batch, 1] bytes -> input_ids, attention_mask[, token_type_ids] [batch, longest] int64."""

    def initialize(self, args):
        """Read the settings from the model config and load tokenizer.json from this model version's folder."""
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_length = int(params["max_length"])
        self.pad_id = int(params["pad_id"])
        self.input_names = params["input_names"].split(",")
        self.text_pairs = params.get("text_pairs", "false") == "true"
        path = os.path.join(args["model_repository"], args["model_version"], "tokenizer.json")
        self.tokenizer = Tokenizer.from_file(path)
        self.tokenizer.no_padding()
        # Longer texts are cut at max_length, as the bertship runtime does by default.
        self.tokenizer.enable_truncation(self.max_length)

    def execute(self, requests):
        """One response per request; a request with bad text gets an error response, the others are unaffected."""
        responses = []
        for request in requests:
            try:
                arrays = self._encode(request)
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
                continue
            tensors = [pb_utils.Tensor(name, arrays[name]) for name in self.input_names]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def _encode(self, request):
        texts = _strings(pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy(), "TEXT")
        if self.text_pairs:
            pairs = _strings(pb_utils.get_input_tensor_by_name(request, "TEXT_PAIR").as_numpy(), "TEXT_PAIR")
            if len(pairs) != len(texts):
                raise ValueError(f"got {len(texts)} TEXT but {len(pairs)} TEXT_PAIR — send one pair per text")
            encodings = self.tokenizer.encode_batch(list(zip(texts, pairs)))
        else:
            encodings = self.tokenizer.encode_batch(texts)
        longest = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
            types[row, : len(e.ids)] = e.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _strings(array, name):
    """A [batch, 1] (or [batch]) array of bytes or str as a list of str; ValueError on bytes that are not UTF-8."""
    texts = []
    for i, item in enumerate(np.asarray(array, dtype=object).reshape(-1)):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{name}[{i}] is not UTF-8 ({exc.reason} at byte {exc.start}) — send UTF-8 text")
        texts.append(str(item))
    if not texts:
        raise ValueError(f"{name} is empty — send at least one text")
    return texts
