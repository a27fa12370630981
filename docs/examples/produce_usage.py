#!/usr/bin/env python3
"""Produce usage events to billing.usage as Avro in the Confluent wire format.

Each value is the magic byte 0x00, the schema id as a 4-byte big-endian integer (usage events are schema id 1),
then the Avro binary datum of schemas/avro/usage_event.avsc. The key is "tenant_id/customer_id" and the
content-type header says "application/vnd.confluent.avro".

    pip install confluent-kafka fastavro
    python3 docs/examples/produce_usage.py --brokers 127.0.0.1:9092 --topic billing.usage \
        --tenant acme --customer cus-1 --metric api_calls --count 10
"""

import argparse
import io
import json
import struct
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import fastavro
from confluent_kafka import Producer

USAGE_SCHEMA_ID = 1
CONFLUENT_MAGIC = b"\x00"
DEFAULT_SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "avro" / "usage_event.avsc"


def load_schema(path):
    with open(path, encoding="utf-8") as f:
        return fastavro.parse_schema(json.load(f))


def encode_usage_event(schema, event):
    """Confluent-framed Avro bytes of one usage event (a dict with the schema's fields).

    `timestamp` is epoch milliseconds (int) or an aware datetime; `properties` maps strings to strings:
    send numbers as their exact decimal text, e.g. "12.5", never as floats.
    """
    datum = io.BytesIO()
    fastavro.schemaless_writer(datum, schema, event)
    return CONFLUENT_MAGIC + struct.pack(">I", USAGE_SCHEMA_ID) + datum.getvalue()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="billing.usage")
    parser.add_argument("--schema", default=str(DEFAULT_SCHEMA), help="path to usage_event.avsc")
    parser.add_argument("--tenant", default="acme")
    parser.add_argument("--customer", default="cus-1")
    parser.add_argument("--metric", default="api_calls")
    parser.add_argument("--value", default="1", help="the `value` property, as exact decimal text")
    parser.add_argument("--count", type=int, default=1)
    args = parser.parse_args()

    schema = load_schema(args.schema)
    # Idempotent producer with acks=all, like the gateway: a retry never duplicates, an ack means durable.
    producer = Producer({
        "bootstrap.servers": args.brokers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        # Keys must land where the Java client's murmur2 puts them (docs/producing.md, "Partitioner").
        "partitioner": "murmur2_random",
    })
    failures = []

    def on_delivery(err, msg):
        if err is not None:
            failures.append(err)
            print(f"failed: {err}", file=sys.stderr)
        else:
            print(f"delivered {msg.key().decode()} to {msg.topic()}[{msg.partition()}]@{msg.offset()}")

    for _ in range(args.count):
        event = {
            "tenant_id": args.tenant,
            "event_id": str(uuid.uuid4()),  # the idempotency key: reuse it when you resend the same event
            "customer_id": args.customer,
            "metric_code": args.metric,
            "timestamp": datetime.now(timezone.utc),
            "properties": {"value": args.value},
        }
        producer.produce(
            args.topic,
            key=f"{args.tenant}/{args.customer}",  # must be tenant_id/customer_id, or rating dead-letters it
            value=encode_usage_event(schema, event),
            headers=[("content-type", b"application/vnd.confluent.avro")],
            on_delivery=on_delivery,
        )
        producer.poll(0)
    remaining = producer.flush(30)
    if failures or remaining:
        sys.exit(f"{len(failures)} failed, {remaining} not delivered")


if __name__ == "__main__":
    main()
