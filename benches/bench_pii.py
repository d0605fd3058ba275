"""PII analysis cost: bare Presidio vs the analyzer pool, conversations, and event-loop lag.

    python -m benches.bench_pii [--lag-workers N]

1. A 1 KB new message in the ``full`` profile: bare Presidio analyze+anonymize in this process
   vs ``AnalyzerPool.analyze`` (cache off) + anonymize, alternating, p50 of each.
2. A 10-turn conversation resent whole each turn (cache on): the 10th request vs its last
   message alone through a pool with the cache off, p50 over conversations.
3. Event-loop lag: a probe sleeps 1 ms in a loop and records how late it wakes while 8
   concurrent callers analyze 1-2 KB texts (half new, half repeated) for a few seconds.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time

from faker import Faker

from gateway.pii.engine import analyze_texts, build_analyzer, offline_environment
from gateway.pii.pool import AnalyzerPool

ENTITIES = ["PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN"]
ROUNDS = 40
fake = Faker("en_US")
fake.seed_instance(7)


def message(size: int) -> str:
    """Prompt-like prose of about ``size`` chars with a name, an e-mail, a phone and a card."""
    parts = [
        f"Hi, this is {fake.name()} ({fake.email()}).",
        f"Please call me at {fake.numerify('(###) 555-01##')} about card {fake.credit_card_number('visa16')}.",
    ]
    while sum(len(p) + 1 for p in parts) < size:
        parts.insert(1, fake.sentence(nb_words=12))
    return " ".join(parts)[:size]


def anonymize(engine: object, text: str, found: list) -> str:
    from presidio_anonymizer.entities import RecognizerResult

    results = [RecognizerResult(f.entity, f.start, f.end, f.score) for f in found]
    return engine.anonymize(text=text, analyzer_results=results).text  # type: ignore[attr-defined]


async def main(lag_workers: int | None) -> None:
    offline_environment()
    from presidio_anonymizer import AnonymizerEngine

    anonymizer = AnonymizerEngine()
    bare = build_analyzer("full")
    analyze_texts(bare, [message(1000)], ENTITIES, 0.4, ())  # warm
    nocache = AnalyzerPool("full", cache_size=0)
    cached = AnalyzerPool("full")
    await asyncio.gather(nocache.start(), cached.start())
    try:
        # 1. bare vs pool, alternating on fresh 1 KB messages
        t_bare, t_pool = [], []
        for _ in range(ROUNDS):
            text = message(1000)
            t0 = time.perf_counter()
            [found] = analyze_texts(bare, [text], ENTITIES, 0.4, ())
            anonymize(anonymizer, text, found)
            t_bare.append(time.perf_counter() - t0)
            text = message(1000)
            t0 = time.perf_counter()
            [found] = await nocache.analyze([text], entities=ENTITIES, threshold=0.4, timeout_s=30)
            anonymize(anonymizer, text, found)
            t_pool.append(time.perf_counter() - t0)
        b, p = statistics.median(t_bare) * 1e3, statistics.median(t_pool) * 1e3
        print(f"1 KB new message, full: bare p50 {b:.1f} ms, pool p50 {p:.1f} ms, ratio {p / b:.2f}x (target <= 1.5x)")

        # 2. 10-turn conversations
        t_turn10, t_last = [], []
        for _ in range(10):
            msgs = [message(300) for _ in range(10)]
            for turn in range(1, 10):
                await cached.analyze(msgs[:turn], entities=ENTITIES, threshold=0.4, timeout_s=30)
            t0 = time.perf_counter()
            await cached.analyze(msgs, entities=ENTITIES, threshold=0.4, timeout_s=30)
            t_turn10.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await nocache.analyze(msgs[-1:], entities=ENTITIES, threshold=0.4, timeout_s=30)
            t_last.append(time.perf_counter() - t0)
        c, last = statistics.median(t_turn10) * 1e3, statistics.median(t_last) * 1e3
        print(
            f"10-turn conversation (300 B messages): 10th request p50 {c:.1f} ms, last message alone {last:.1f} ms,"
            f" ratio {c / last:.2f}x (target <= 1.3x)"
        )

        # 3. loop lag under mixed load. The gateway process never loads presidio; drop this
        # process's in-process analyzer so its heap does not inflate GC pauses on the loop.
        del bare
        gc.collect()
        gc.freeze()
        gc_pauses: list[float] = []
        gc_t0 = [0.0]

        def on_gc(phase: str, info: dict) -> None:
            if phase == "start":
                gc_t0[0] = time.perf_counter()
            else:
                gc_pauses.append(time.perf_counter() - gc_t0[0])

        gc.callbacks.append(on_gc)
        # Lag is wall-clock overshoot; "busy" is the loop thread's CPU time over the same interval,
        # i.e. how long code on the loop kept the probe waiting (the rest is the OS scheduler).
        lags: list[float] = []
        busy: list[float] = []
        stop = asyncio.Event()

        async def probe() -> None:
            while not stop.is_set():
                t0, c0 = time.perf_counter(), time.thread_time()
                await asyncio.sleep(0.001)
                lags.append(time.perf_counter() - t0 - 0.001)
                busy.append(time.thread_time() - c0)

        # Texts are made up front: Faker on the loop would be lag of the bench's own making.
        repeated = [message(1500) for _ in range(4)]
        fresh = iter([message(1000 + 100 * (i % 10)) for i in range(2000)])

        lagged = cached
        if lag_workers is not None:  # e.g. one core left to the gateway's event loop
            lagged = AnalyzerPool("full", workers=lag_workers)
            await lagged.start()

        async def caller_on(pool: AnalyzerPool) -> int:
            n = 0
            deadline = time.perf_counter() + 5
            while time.perf_counter() < deadline:
                texts = [repeated[n % 4], next(fresh)] if n % 2 else [next(fresh) + next(fresh)]
                await pool.analyze(texts, entities=ENTITIES, threshold=0.4, timeout_s=30)
                n += 1
            return n

        probe_task = asyncio.create_task(probe())
        counts = await asyncio.gather(*(caller_on(lagged) for _ in range(8)))
        stop.set()
        await probe_task
        if lagged is not cached:
            await lagged.aclose()
        lags.sort()
        print(
            f"loop lag under load ({lagged.size} workers, {sum(counts)} analyses in 5 s, 8 callers):"
            f" max {lags[-1] * 1e3:.2f} ms,"
            f" p99 {lags[int(len(lags) * 0.99)] * 1e3:.2f} ms over {len(lags)} probes (target max < 5 ms);"
            f" loop busy max {max(busy) * 1e3:.2f} ms; longest GC pause {max(gc_pauses, default=0) * 1e3:.2f} ms"
        )
        gc.callbacks.remove(on_gc)
    finally:
        await asyncio.gather(nocache.aclose(), cached.aclose())


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benches.bench_pii", description=__doc__.split("\n")[0])
    parser.add_argument("--lag-workers", type=int, default=None, help="workers for the loop-lag part (default: cores)")
    asyncio.run(main(parser.parse_args().lag_workers))
