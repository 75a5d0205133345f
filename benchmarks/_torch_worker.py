"""The PyTorch side of `benchmarks.train_step`, run in its own process.

A separate process keeps PyTorch's and XLA's thread pools from competing
while the other one is timed, and gives each side its own peak memory. The
harness talks to it over stdin/stdout, one line per message:

    worker -> "READY {info json}"     after building the model and one step
    harness -> "WARM n"  -> "DONE"    n untimed steps
    harness -> "RUN n"   -> "TIMES [seconds, ...]"
    harness -> "QUIT"    -> "MEM {json}" and exit
"""

from __future__ import annotations

import json
import resource
import sys
import time


def main() -> None:
    kwargs = json.loads(sys.argv[1])
    from benchmarks.peak import peak_memory_bytes
    from benchmarks.torch_reference import make_torch_train_step

    step, info = make_torch_train_step(**kwargs)
    info["first_loss"] = step()
    print("READY " + json.dumps(info), flush=True)
    faults, timed = 0, 0
    for line in sys.stdin:
        cmd, *arg = line.split()
        if cmd == "WARM":
            for _ in range(int(arg[0])):
                step()
            print("DONE", flush=True)
        elif cmd == "RUN":
            times = []
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(int(arg[0])):
                t0 = time.perf_counter()
                step()  # Returns loss.item(): the step has finished.
                times.append(time.perf_counter() - t0)
            faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
            timed += len(times)
            print("TIMES " + json.dumps(times), flush=True)
        elif cmd == "QUIT":
            break
    print("MEM " + json.dumps({"peak_host_bytes": peak_memory_bytes(),
                               "page_faults_per_step": faults / max(timed, 1)}), flush=True)


if __name__ == "__main__":
    main()
