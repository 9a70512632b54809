"""A task command for tests/test_kfp_harness_processes.py: records what its process saw (argv,
environment, working directory, process ids) and exits with the status its parameter asks."""
import json
import os
import sys

if __name__ == "__main__":
    executor_input = json.loads(sys.argv[-1])
    with open(os.environ["PROBE_OUT"], "a") as f:
        f.write(json.dumps({"argv": sys.argv[1:-1], "pid": os.getpid(), "ppid": os.getppid(),
                            "cwd": os.getcwd(),
                            "pod_root": os.environ.get("CARDIO_LAUNCHER_LOCAL_ROOT")}) + "\n")
    print("probe: asked to exit", executor_input["inputs"]["parameterValues"]["status"])
    sys.exit(int(executor_input["inputs"]["parameterValues"]["status"]))
