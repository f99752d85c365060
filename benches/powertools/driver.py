"""Fresh idempotent calls per second through AWS Powertools for Python's
idempotency utility (RedisCachePersistenceLayer), the baseline of tempox's load
bench. Every call has a new key, as in the bench's `fresh` rows: Powertools
writes an in-progress record (SET NX), runs the body, then writes the result.

usage: driver.py PORT PROCESSES SECONDS

Prints one number: completed calls per second over all processes.
"""

import multiprocessing
import os
import sys
import time
import warnings


def run(port, seconds, tag, counts):
    from aws_lambda_powertools.utilities.idempotency import (
        IdempotencyConfig,
        idempotent_function,
    )
    from aws_lambda_powertools.utilities.idempotency.persistence.redis import (
        RedisCachePersistenceLayer,
    )
    import redis

    # Outside Lambda there is no remaining-time to read; Powertools says so
    # once per call.
    warnings.simplefilter("ignore")
    client = redis.Redis(host="127.0.0.1", port=port)
    layer = RedisCachePersistenceLayer(client=client)
    # No in-process cache: every call goes to Redis, as tempox's do.
    config = IdempotencyConfig(event_key_jmespath="order_id", use_local_cache=False)

    @idempotent_function(data_keyword_argument="order", persistence_store=layer, config=config)
    def charge(order):
        return {"charged": order["amount"]}

    done = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        result = charge(order={"order_id": f"{tag}-{done}", "amount": done})
        if result != {"charged": done}:
            raise SystemExit(f"unexpected result {result!r}")
        done += 1
    counts.put(done)


def main():
    port, processes, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    # Powertools reads this to name its keys; any function name will do.
    os.environ.setdefault("AWS_LAMBDA_FUNCTION_NAME", "tempox-load-baseline")
    counts = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(target=run, args=(port, seconds, f"pt-{os.getpid()}-{i}", counts))
        for i in range(processes)
    ]
    for w in workers:
        w.start()
    total = sum(counts.get(timeout=seconds + 60) for _ in workers)
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise SystemExit(f"a driver process failed ({w.exitcode})")
    print(f"{total / seconds:.0f}")


if __name__ == "__main__":
    main()
