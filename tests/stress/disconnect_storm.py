"""Disconnect storm: 200 concurrent chat streams, each dropped after 1-5 SSE lines, then
non-streaming requests whose client times out; after each, the engine must be idle with
its KV blocks back at baseline within 2 s, and a new request must complete normally.

    python -m tests.stress.disconnect_storm [--streams 200] [--timeouts 100]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from tests.stack import ENGINE_PARAMETERS, default_weights_dir, running_stack, scratch_dir
from tests.stress import load

IDLE_WITHIN_S = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--timeouts", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    failed = False
    with scratch_dir("tritium-storm-") as work, running_stack(default_weights_dir(), work) as stack:
        print(f"engine parameters: {ENGINE_PARAMETERS}")
        assert load.completes_normally(stack)
        baseline = stack.metric("tritium_kv_blocks_used")
        started = time.monotonic()
        storm = asyncio.run(load.disconnect_storm(stack, args.streams, 5, args.seed))
        idle_after = load.wait_engine_idle(stack, baseline, 30)
        since_last_drop = time.monotonic() - storm.last_drop_at
        print(
            f"storm: {args.streams} streams, statuses {storm.statuses}, dropped {storm.dropped},"
            f" transport errors {len(storm.errors)}, took {time.monotonic() - started:.1f} s"
        )
        print(
            f"  idle (0 running, 0 waiting, KV {baseline:g} blocks) {idle_after:.2f} s after the"
            f" storm returned ({since_last_drop:.2f} s after the last drop)"
            if idle_after is not None
            else "  NOT idle within 30 s"
        )
        normal = load.completes_normally(stack)
        print(f"  next request completes normally: {normal}")
        failed |= idle_after is None or idle_after > IDLE_WITHIN_S or not normal
        failed |= storm.dropped != args.streams
        started = time.monotonic()
        timed_out = asyncio.run(load.time_out_requests(stack, args.timeouts, 3.0))
        idle_after = load.wait_engine_idle(stack, baseline, 30)
        normal = load.completes_normally(stack)
        print(
            f"timeouts: {timed_out} of {args.timeouts} non-streaming requests timed out (3 s);"
            f" idle {idle_after if idle_after is None else round(idle_after, 2)} s after;"
            f" next request completes normally: {normal}"
        )
        failed |= idle_after is None or idle_after > IDLE_WITHIN_S or not normal
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
