"""A real Kafka client (confluent-kafka, librdkafka) for the Kafka tests.

  client.py create BOOTSTRAP TOPIC
  client.py produce BOOTSTRAP TOPIC STOPFILE [plain]  # prints "ack N SECONDS" per acknowledged record
                                               # (plain: no idempotence, still acks=all)
  client.py consume BOOTSTRAP TOPIC GROUP COUNT TIMEOUT  # prints "got N" per record, until COUNT distinct
  client.py produce-n BOOTSTRAP TOPIC COUNT    # COUNT records, all acknowledged, then "produced COUNT"
"""
import os
import sys
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def create(bootstrap, topic):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)], request_timeout=15)
    for f in futures.values():
        f.result(timeout=30)
    print("created", flush=True)


def produce(bootstrap, topic, stopfile, idempotence="idempotent"):
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": idempotence == "idempotent",
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 120000,
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 500,
    })
    start = time.monotonic()

    def delivered(err, msg):
        n = int(msg.value())
        if err is None:
            print("ack", n, round(time.monotonic() - start, 3), flush=True)
        else:
            print("fail", n, str(err).replace("\n", " "), flush=True)

    n = 0
    while not os.path.exists(stopfile):
        n += 1
        while True:
            try:
                producer.produce(topic, key=str(n % 7), value=str(n), on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        time.sleep(0.005)
    left = producer.flush(120)
    print("sent", n, "unflushed", left, flush=True)


def produce_n(bootstrap, topic, count):
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    failed = []

    def delivered(err, msg):
        if err is not None:
            failed.append(str(err))

    for n in range(count):
        producer.produce(topic, value=str(n).encode(), callback=delivered)
    left = producer.flush(60)
    if left or failed:
        sys.exit(f"{left} records unacknowledged, failed: {failed}")
    print("produced", count, flush=True)


def consume(bootstrap, topic, group, wanted, timeout):
    """Consumes until `wanted` is seen: a count of distinct records, or
    `@FILE` naming the records (one per line) that must all come back. A
    count alone is not enough after a refused produce: a record whose
    produce was answered with an error may still have been written, and
    counting it stops the consumer one record short of the last one."""
    if wanted.startswith("@"):
        with open(wanted[1:]) as f:
            want = {int(line) for line in f if line.strip()}
        done = lambda seen: want <= seen
    else:
        count = int(wanted)
        done = lambda seen: len(seen) >= count
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        # tansu 0.6.0's ListOffsets(latest, read_committed) query needs
        # PostgreSQL 16; its storage here is 15 (see storage.sql).
        "isolation.level": "read_uncommitted",
    })
    consumer.subscribe([topic])
    seen = set()
    deadline = time.monotonic() + timeout
    while not done(seen) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            print("error", msg.error(), flush=True)
            continue
        n = int(msg.value())
        if n not in seen:
            seen.add(n)
            print("got", n, flush=True)
    consumer.close()
    print("consumed", len(seen), flush=True)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "create":
        create(*args)
    elif mode == "produce":
        produce(*args)
    elif mode == "produce-n":
        produce_n(args[0], args[1], int(args[2]))
    elif mode == "consume":
        consume(args[0], args[1], args[2], args[3], float(args[4]))
    else:
        sys.exit("unknown mode " + mode)
