"""Compatibility check: kafka-python and aiokafka against the local broker (ops/kafka.sh).

Run with the broker up:  python ops/compat/kafka_check.py [--bootstrap 127.0.0.1:9092]

Checks, each printed as PASS/FAIL (exit status 1 if any fails):
  1. KafkaAdminClient creates a 6-partition topic.
  2. Idempotent producer (enable_idempotence=True, acks='all') sends 1,000 records.
  3. Transactional producer: one committed and one aborted transaction; a read_committed
     consumer sees only the committed records (a read_uncommitted one sees both).
  4. Two consumers in one group split the 6 partitions and together read all 1,000 records.
  5. aiokafka (the client under faust): AIOKafkaConsumer reads the 1,000 records, an idempotent
     AIOKafkaProducer sends 100 more, and a transactional AIOKafkaProducer commits/aborts.
Topics are named lw-compat-<random> and deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiokafka
import kafka
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition as AIOTopicPartition
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

PARTITIONS = 6
RECORDS = 1000

results: list[tuple[str, bool, str]] = []


def check(name: str) -> Callable[[Callable[..., str]], Callable[..., str | None]]:
    """Run the decorated step, record PASS/FAIL with its summary line, and keep going on failure."""

    def wrap(fn: Callable[..., str]) -> Callable[..., str | None]:
        def run(*args: Any, **kwargs: Any) -> str | None:
            start = time.monotonic()
            try:
                detail = fn(*args, **kwargs)
            except Exception as exc:
                results.append((name, False, f"{type(exc).__name__}: {exc}"))
                print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
                return None
            took = time.monotonic() - start
            results.append((name, True, detail))
            print(f"PASS {name} ({took:.1f}s): {detail}", flush=True)
            return detail

        return run

    return wrap


def drain(consumer: KafkaConsumer, expected: int, timeout_s: float = 30.0) -> list[Any]:
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
        if len(records) >= expected:
            # One more short poll so that surplus records (a failure) would be noticed.
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
            break
    return records


@check("admin: create topics (6 partitions)")
def create_topics(bootstrap: str, topics: list[str]) -> str:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="lw-compat-admin")
    try:
        admin.create_topics([NewTopic(t, num_partitions=PARTITIONS, replication_factor=1) for t in topics])
        described = admin.describe_topics(topics)
        # kafka-python 3.x names the key "name" (DescribeTopicPartitions); 2.x used "topic".
        counts = {d.get("name", d.get("topic")): len(d["partitions"]) for d in described}
        assert all(counts[t] == PARTITIONS for t in topics), counts
        broker = admin._client.check_version()  # (major, minor) negotiated via ApiVersions
        return f"{counts}; broker API version seen by kafka-python: {broker}"
    finally:
        admin.close()


@check("kafka-python: idempotent producer, acks=all, 1,000 records")
def idempotent_produce(bootstrap: str, topic: str) -> str:
    producer = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5)
    try:
        futures = [
            producer.send(topic, key=f"k{i % 50}".encode(), value=f"event-{i}".encode())
            for i in range(RECORDS)
        ]
        producer.flush(timeout=30)
        metas = [f.get(timeout=30) for f in futures]
    finally:
        producer.close(timeout=10)
    per_partition: dict[int, int] = {}
    for m in metas:
        per_partition[m.partition] = per_partition.get(m.partition, 0) + 1
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    finally:
        consumer.close()
    total = sum(ends.values())
    assert total == RECORDS, f"end offsets sum {total} != {RECORDS}"
    return f"{len(metas)} acks, per partition {dict(sorted(per_partition.items()))}, end offsets sum {total}"


@check("kafka-python: transactions + read_committed")
def transactions(bootstrap: str, topic: str) -> str:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"lw-compat-tx-{uuid.uuid4().hex[:8]}", acks="all"
    )
    try:
        producer.init_transactions()
        producer.begin_transaction()
        for i in range(10):
            producer.send(topic, key=b"tx", value=f"committed-{i}".encode())
        producer.commit_transaction()
        producer.begin_transaction()
        for i in range(5):
            producer.send(topic, key=b"tx", value=f"aborted-{i}".encode())
        producer.flush()
        producer.abort_transaction()
        # A final committed record, after the aborted ones, so read_committed must skip them.
        producer.begin_transaction()
        producer.send(topic, key=b"tx", value=b"committed-last")
        producer.commit_transaction()
    finally:
        producer.close(timeout=10)

    def read(isolation: str, expected: int) -> list[str]:
        c = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            isolation_level=isolation,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        try:
            return [r.value.decode() for r in drain(c, expected, timeout_s=20)]
        finally:
            c.close()

    committed = read("read_committed", 11)
    uncommitted = read("read_uncommitted", 16)
    assert not [v for v in committed if v.startswith("aborted")], committed
    assert len(committed) == 11, committed
    assert len([v for v in uncommitted if v.startswith("aborted")]) == 5, uncommitted
    return (
        f"read_committed saw {len(committed)} (all committed, 0 aborted); "
        f"read_uncommitted saw {len(uncommitted)} incl. 5 aborted"
    )


@check("kafka-python: consumer group of two splits partitions")
def consumer_group(bootstrap: str, topic: str) -> str:
    group = f"lw-compat-group-{uuid.uuid4().hex[:8]}"
    consumers = [
        KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            client_id=f"member-{n}",
            auto_offset_reset="earliest",
            enable_auto_commit=True,
            auto_commit_interval_ms=500,
        )
        for n in range(2)
    ]
    counts = [0, 0]
    assignments: list[set[int]] = [set(), set()]
    stop = threading.Event()
    lock = threading.Lock()

    def loop(n: int) -> None:
        c = consumers[n]
        while not stop.is_set():
            polled = c.poll(timeout_ms=200)
            with lock:
                counts[n] += sum(len(b) for b in polled.values())
                assignments[n] = {tp.partition for tp in c.assignment()}

    threads = [threading.Thread(target=loop, args=(n,), daemon=True) for n in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            with lock:
                done = (
                    sum(counts) >= RECORDS
                    and all(assignments)
                    and not (assignments[0] & assignments[1])
                    and len(assignments[0] | assignments[1]) == PARTITIONS
                )
            if done:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # let auto-commit run once more
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        for c in consumers:
            c.close()
    a0, a1 = sorted(assignments[0]), sorted(assignments[1])
    assert a0 and a1 and not set(a0) & set(a1) and len(a0) + len(a1) == PARTITIONS, (a0, a1)
    assert sum(counts) == RECORDS, counts
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        if hasattr(admin, "list_group_offsets"):  # kafka-python 3.x
            committed = admin.list_group_offsets(group)[group]
        else:  # kafka-python 2.x
            committed = admin.list_consumer_group_offsets(group)
    finally:
        admin.close()
    committed_total = sum(o.offset for o in committed.values())
    return (
        f"member-0 partitions {a0} read {counts[0]}, member-1 partitions {a1} read {counts[1]}; "
        f"committed offsets sum {committed_total}"
    )


async def _aiokafka_steps(bootstrap: str, topic: str, tx_topic: str) -> str:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"lw-compat-aio-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        seen = 0
        deadline = time.monotonic() + 30
        while seen < RECORDS and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            seen += sum(len(b) for b in batches.values())
        assert seen == RECORDS, f"AIOKafkaConsumer read {seen}"
        await consumer.commit()
        partitions = sorted(tp.partition for tp in consumer.assignment())
    finally:
        await consumer.stop()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        metas = await asyncio.gather(
            *[producer.send_and_wait(topic, key=f"a{i}".encode(), value=b"aio") for i in range(100)]
        )
    finally:
        await producer.stop()
    assert len(metas) == 100

    tx = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"lw-compat-aiotx-{uuid.uuid4().hex[:8]}"
    )
    await tx.start()
    try:
        async with tx.transaction():
            await tx.send_and_wait(tx_topic, key=b"aio", value=b"aio-committed")
        await tx.begin_transaction()
        await tx.send_and_wait(tx_topic, key=b"aio", value=b"aio-aborted")
        await tx.abort_transaction()
    finally:
        await tx.stop()

    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await reader.start()
    try:
        tps = [AIOTopicPartition(tx_topic, p) for p in range(PARTITIONS)]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        values: list[bytes] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for batch in (await reader.getmany(timeout_ms=500)).values():
                values.extend(r.value for r in batch)
            if b"aio-committed" in values:
                break
        # one more poll to be sure no aborted record shows up
        for batch in (await reader.getmany(timeout_ms=500)).values():
            values.extend(r.value for r in batch)
    finally:
        await reader.stop()
    assert b"aio-committed" in values and b"aio-aborted" not in values, values
    return (
        f"AIOKafkaConsumer (group) read {seen} from partitions {partitions}; idempotent AIOKafkaProducer "
        f"sent 100; transactional AIOKafkaProducer commit visible, abort hidden under read_committed"
    )


@check("aiokafka: consumer, idempotent producer, transactions")
def aiokafka_check(bootstrap: str, topic: str, tx_topic: str) -> str:
    return asyncio.run(_aiokafka_steps(bootstrap, topic, tx_topic))


def delete_topics(bootstrap: str, topics: list[str]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics(topics)
    except Exception as exc:  # cleanup only
        print(f"note: could not delete {topics}: {exc}")
    finally:
        admin.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--keep-topics", action="store_true", help="do not delete the topics afterwards")
    args = parser.parse_args()
    print(f"kafka-python {kafka.__version__}, aiokafka {aiokafka.__version__}, bootstrap {args.bootstrap}")

    suffix = uuid.uuid4().hex[:8]
    topic, tx_topic = f"lw-compat-{suffix}", f"lw-compat-tx-{suffix}"
    try:
        if create_topics(args.bootstrap, [topic, tx_topic]) is None:
            return 1
        idempotent_produce(args.bootstrap, topic)
        transactions(args.bootstrap, tx_topic)
        consumer_group(args.bootstrap, topic)
        aiokafka_check(args.bootstrap, topic, tx_topic)
    finally:
        if not args.keep_topics:
            delete_topics(args.bootstrap, [topic, tx_topic])
    failed = [name for name, ok, _ in results if not ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
