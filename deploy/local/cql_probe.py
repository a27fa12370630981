#!/usr/bin/env python3
"""Minimal CQL native-protocol v4 client (standard library only).

Used by `deploy/local/stack` as Cassandra's readiness probe, and handy for a quick query:

    python3 deploy/local/cql_probe.py [--host 127.0.0.1] [--port 9042] [--timeout 5] ["CQL statement"]

Default statement: SELECT release_version FROM system.local. It sends STARTUP (CQL_VERSION 3.0.0),
expects READY, sends one QUERY at consistency ONE and prints the result: rows as tab-separated
values (text/int/bigint/boolean/uuid decoded, other types as hex), or the result kind for
DDL/DML. Exit status 0 on success, 1 on any error (server ERROR frame, socket error, timeout).
"""
import argparse
import socket
import struct
import sys
import uuid

OP_ERROR, OP_STARTUP, OP_READY, OP_QUERY, OP_RESULT = 0x00, 0x01, 0x02, 0x07, 0x08
CONSISTENCY_ONE = 0x0001


def short_string(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def frame(stream, opcode, body):
    return struct.pack(">BBhBi", 0x04, 0, stream, opcode, len(body)) + body


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by server")
        buf += chunk
    return buf


def read_frame(sock):
    version, _flags, _stream, opcode, length = struct.unpack(">BBhBi", read_exact(sock, 9))
    if version != 0x84:
        raise ValueError("unexpected response version 0x%02x" % version)
    return opcode, read_exact(sock, length)


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def int(self):
        return struct.unpack(">i", self.take(4))[0]

    def short(self):
        return struct.unpack(">H", self.take(2))[0]

    def string(self):
        return self.take(self.short()).decode()

    def bytes(self):
        n = self.int()
        return None if n < 0 else self.take(n)

    def option(self):
        type_id = self.short()
        if type_id == 0x0000:  # custom
            self.string()
        elif type_id in (0x0020, 0x0022):  # list, set
            self.option()
        elif type_id == 0x0021:  # map
            self.option()
            self.option()
        elif type_id == 0x0030:  # UDT
            self.string()
            self.string()
            for _ in range(self.short()):
                self.string()
                self.option()
        elif type_id == 0x0031:  # tuple
            for _ in range(self.short()):
                self.option()
        return type_id


def decode(type_id, value):
    if value is None:
        return "null"
    if type_id in (0x0001, 0x000A, 0x000D):  # ascii, text, varchar
        return value.decode()
    if type_id in (0x0002, 0x0005, 0x0009, 0x000B, 0x0013, 0x0014):  # bigint, counter, int, timestamp, smallint, tinyint
        return str(int.from_bytes(value, "big", signed=True))
    if type_id == 0x0004:
        return "true" if value != b"\x00" else "false"
    if type_id in (0x000C, 0x000F):  # uuid, timeuuid
        return str(uuid.UUID(bytes=value))
    return "0x" + value.hex()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9042)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("query", nargs="?", default="SELECT release_version FROM system.local")
    args = ap.parse_args()
    try:
        with socket.create_connection((args.host, args.port), timeout=args.timeout) as sock:
            body = struct.pack(">H", 1) + short_string("CQL_VERSION") + short_string("3.0.0")
            sock.sendall(frame(1, OP_STARTUP, body))
            opcode, body = read_frame(sock)
            if opcode == OP_ERROR:
                r = Reader(body)
                raise RuntimeError("STARTUP error 0x%04x: %s" % (r.int(), r.string()))
            if opcode != OP_READY:
                raise RuntimeError("expected READY, got opcode 0x%02x" % opcode)
            q = args.query.encode()
            body = struct.pack(">i", len(q)) + q + struct.pack(">HB", CONSISTENCY_ONE, 0)
            sock.sendall(frame(2, OP_QUERY, body))
            opcode, body = read_frame(sock)
    except (OSError, ValueError, RuntimeError, struct.error) as e:
        print("cql_probe: %s:%d: %s" % (args.host, args.port, e), file=sys.stderr)
        return 1
    r = Reader(body)
    if opcode == OP_ERROR:
        print("cql_probe: server error 0x%04x: %s" % (r.int(), r.string()), file=sys.stderr)
        return 1
    if opcode != OP_RESULT:
        print("cql_probe: unexpected opcode 0x%02x" % opcode, file=sys.stderr)
        return 1
    kind = r.int()
    if kind == 0x0001:
        print("(void)")
    elif kind == 0x0003:
        print("(keyspace %s)" % r.string())
    elif kind == 0x0005:
        print("(schema change: %s %s %s)" % (r.string(), r.string(), r.string()))
    elif kind == 0x0002:
        flags, ncols = r.int(), r.int()
        if flags & 0x0002:
            r.bytes()  # paging state
        types, names = [], []
        if not flags & 0x0004:
            if flags & 0x0001:
                r.string()
                r.string()
            for _ in range(ncols):
                if not flags & 0x0001:
                    r.string()
                    r.string()
                names.append(r.string())
                types.append(r.option())
        print("\t".join(names))
        for _ in range(r.int()):
            print("\t".join(decode(types[i] if types else -1, r.bytes()) for i in range(ncols)))
    else:
        print("(result kind %d)" % kind)
    return 0


if __name__ == "__main__":
    sys.exit(main())
