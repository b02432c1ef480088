"""What one exchange between a Python-backend model and Triton costs: a response `send`
(by number of output tensors), `is_cancelled()`, a gauge `set` and a counter `increment`,
each a round trip from the stub's process to the server's. Runs the real tritonserver
on a probe model of its own (written to a temporary repository), calls each `--calls`
times from a thread of the model, as the engine thread does, and prints microseconds per
call for `--rounds` requests.

    .venv/bin/python -m benchmarks.triton_round_trips [--calls 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import queue
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.stack import bare_tritonserver

_CONFIG = """name: "probe"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "CALLS" data_type: TYPE_INT32 dims: [1] } ]
output [ { name: "TIMINGS" data_type: TYPE_STRING dims: [1] },
         { name: "T0" data_type: TYPE_INT32 dims: [1] },
         { name: "T1" data_type: TYPE_STRING dims: [1] },
         { name: "T2" data_type: TYPE_STRING dims: [1] },
         { name: "T3" data_type: TYPE_STRING dims: [1] },
         { name: "T4" data_type: TYPE_STRING dims: [1] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

_MODEL = '''
import json, threading, time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        kinds = pb_utils.MetricFamily
        self.families = [kinds(name="probe_gauge", description="probe", kind=kinds.GAUGE),
                         kinds(name="probe_total", description="probe", kind=kinds.COUNTER)]
        self.gauge = self.families[0].Metric(labels={"probe": "1"})
        self.counter = self.families[1].Metric(labels={"probe": "1"})

    def execute(self, requests):
        for request in requests:
            calls = int(pb_utils.get_input_tensor_by_name(request, "CALLS").as_numpy()[0])
            threading.Thread(target=self.measure, args=(calls, request.get_response_sender())).start()

    def measure(self, calls, sender):
        def per_call(action):
            started = time.perf_counter()
            for i in range(calls):
                action(i)
            return (time.perf_counter() - started) / calls * 1e6

        def response(tensors):
            out = [pb_utils.Tensor("T0", np.array([1], np.int32))]
            out += [pb_utils.Tensor(f"T{j}", np.array([b"text"], dtype=object)) for j in range(1, tensors)]
            return pb_utils.InferenceResponse(output_tensors=out)

        timings = {
            "gauge set": per_call(self.gauge.set),
            "counter increment": per_call(lambda i: self.counter.increment(1)),
            "is_cancelled": per_call(lambda i: sender.is_cancelled()),
            "send, 1 tensor": per_call(lambda i: sender.send(response(1))),
            "send, 5 tensors": per_call(lambda i: sender.send(response(5))),
        }
        final = pb_utils.Tensor("TIMINGS", np.array([json.dumps(timings).encode()], dtype=object))
        sender.send(pb_utils.InferenceResponse(output_tensors=[final]),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''


def measure(calls: int, rounds: int, work_dir: Path) -> list[dict[str, float]]:
    """Per round, microseconds per call of each exchange."""
    import tritonclient.grpc as grpcclient

    model_dir = work_dir / "repository" / "probe"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(_CONFIG)
    (model_dir / "1" / "model.py").write_text(_MODEL)
    results: list[dict[str, float]] = []
    with bare_tritonserver(work_dir / "repository", work_dir / "tritonserver.log") as endpoints:
        client = grpcclient.InferenceServerClient(endpoints.triton_grpc_url)
        answers: queue.SimpleQueue = queue.SimpleQueue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            for _ in range(rounds):
                calls_input = grpcclient.InferInput("CALLS", [1], "INT32")
                calls_input.set_data_from_numpy(np.array([calls], dtype=np.int32))
                client.async_stream_infer("probe", [calls_input])
                while True:
                    result, error = answers.get(timeout=600)
                    if error is not None:
                        raise RuntimeError(str(error))
                    timings = result.as_numpy("TIMINGS")
                    if timings is not None:
                        results.append(json.loads(timings[0]))
                        break
        finally:
            client.stop_stream()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work_dir:
        results = measure(args.calls, args.rounds, Path(work_dir))
    print(f"microseconds per call, {args.calls} calls per round")
    print("| exchange | " + " | ".join(f"round {i + 1}" for i in range(len(results))) + " |")
    print("|---|" + "---|" * len(results))
    for name in results[0]:
        print(f"| {name} | " + " | ".join(f"{r[name]:.0f}" for r in results) + " |")


if __name__ == "__main__":
    main()
