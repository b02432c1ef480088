"""The Triton tensor contract of Tritium's LLM models, written once.

Every LLM model in a Tritium model repository is a decoupled Triton model with the same
tensors; the adapter, the model shim (`engine/triton_model.py`), the null model
(`benchmarks/null_model/`) and the benchmark's Triton client all speak it through this
package. It imports nothing but the standard library and numpy, so each of them can.

- `contract.tensors`: the input and output tensors (one table each), the model config's
  input/output sections rendered from them, and the request/response codecs;
- `contract.sampling`: the fields of the `sampling_parameters` JSON object, with types,
  defaults and limits, and their validation;
- `contract.outputs`: what a response says about each choice (`ChoiceDelta`), and the
  finish reasons;
- `contract.errors`: the error kinds a model reports and how their messages are spelled;
- `contract.python_backend`: the base of a Python-backend model of the contract (request
  decoding, error responses, in-band cancel requests), for the shim and the null model.

`python -m contract.docs` writes the contract section of docs/api.md from these tables
(a test checks the doc is current).
"""
