#!/usr/bin/env python3
"""A gRPC peer that is not tonic: grpcio's server and client on raw bytes
(generic handlers, no .proto), for the integration tests (support/grpc.rs).

  server --port P --name N
      Serves test.Echo (Unary, ServerStream, ClientStream, Bidi, Fail, Slow,
      Big) and grpc.health.v1.Health/Check on 127.0.0.1:P (0: a free port);
      prints "listening <port>" once serving, runs until killed.
  client --target H:P --call unary|server_stream|client_stream|bidi|health
         [--method /svc/Method] [--data X ...] [--metadata k=v ...]
         [--timeout-ms T]
      Prints one JSON line: {"code", "details", "messages" (base64),
      "initial_metadata", "trailing_metadata" ([[k, v] ...], a -bin value
      base64 without padding)}; exits 0 whatever the status.
"""

import argparse
import base64
import json
import queue
import sys
import time
from concurrent import futures

import grpc

MAX_MESSAGE = 64 << 20
OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]
CODES = {code.value[0]: code for code in grpc.StatusCode}
HEALTH_SERVING = b"\x08\x01"


def echo_handlers(name):
    def unary(request, context):
        context.send_initial_metadata((("x-served-by", name),))
        context.set_trailing_metadata((("x-trailer", "t1"),))
        return b"echo:" + request

    def server_stream(request, context):
        for i in range(int(request)):
            yield b"msg-%d" % i

    def client_stream(requests, context):
        messages = list(requests)
        return b"%d:" % len(messages) + b"|".join(messages)

    def bidi(requests, context):
        for message in requests:
            yield b"re:" + message

    def fail(request, context):
        code_text, _, text = request.decode().partition(":")
        code = int(code_text)
        context.set_trailing_metadata(
            (
                ("grpc-status-details-bin", b"details-for-%d" % code),
                ("x-why", "because"),
            )
        )
        if code == 0:
            return b""
        context.abort(CODES.get(code, grpc.StatusCode.UNKNOWN), text)

    def slow(request, context):
        until = time.monotonic() + int(request) / 1000
        while time.monotonic() < until:
            if not context.is_active():
                return b""
            time.sleep(min(0.01, max(0.0, until - time.monotonic())))
        return b"slept"

    def big(request, context):
        n = int(request)
        pattern = bytes(range(251))
        return (pattern * (n // 251 + 1))[:n]

    unary_unary = grpc.unary_unary_rpc_method_handler
    return grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": unary_unary(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Fail": unary_unary(fail),
            "Slow": unary_unary(slow),
            "Big": unary_unary(big),
        },
    )


def health_handler():
    return grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {"Check": grpc.unary_unary_rpc_method_handler(lambda r, c: HEALTH_SERVING)},
    )


def serve(args):
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        handlers=[echo_handlers(args.name), health_handler()],
        options=OPTIONS + [("grpc.so_reuseport", 0)],
    )
    port = server.add_insecure_port("127.0.0.1:%d" % args.port)
    if port == 0:
        sys.exit("cannot listen on 127.0.0.1:%d" % args.port)
    server.start()
    print("listening %d" % port, flush=True)
    server.wait_for_termination()


DEFAULT_METHODS = {
    "unary": "/test.Echo/Unary",
    "server_stream": "/test.Echo/ServerStream",
    "client_stream": "/test.Echo/ClientStream",
    "bidi": "/test.Echo/Bidi",
    "health": "/grpc.health.v1.Health/Check",
}


def metadata_json(pairs):
    out = []
    for key, value in pairs or ():
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode().rstrip("=")
        out.append([key, value])
    return out


def call(args):
    method = args.method or DEFAULT_METHODS[args.call]
    data = [d.encode() for d in args.data]
    metadata = []
    for pair in args.metadata:
        key, _, value = pair.partition("=")
        metadata.append((key, value.encode() if key.endswith("-bin") else value))
    timeout = args.timeout_ms / 1000 if args.timeout_ms is not None else None
    channel = grpc.insecure_channel(args.target, options=OPTIONS)
    messages = []
    kind = args.call
    if kind in ("unary", "health"):
        stub = channel.unary_unary(method)
        try:
            reply, rpc = stub.with_call(data[0] if data else b"", metadata=metadata, timeout=timeout)
            messages.append(reply)
        except grpc.RpcError as e:
            rpc = e
    elif kind == "client_stream":
        stub = channel.stream_unary(method)
        try:
            reply, rpc = stub.with_call(iter(data), metadata=metadata, timeout=timeout)
            messages.append(reply)
        except grpc.RpcError as e:
            rpc = e
    elif kind == "server_stream":
        rpc = channel.unary_stream(method)(data[0] if data else b"", metadata=metadata, timeout=timeout)
        try:
            for reply in rpc:
                messages.append(reply)
        except grpc.RpcError:
            pass
    elif kind == "bidi":
        # Chat-style turns: one message, its reply, then the next.
        outgoing = queue.Queue()

        def requests():
            while True:
                item = outgoing.get()
                if item is None:
                    return
                yield item

        rpc = channel.stream_stream(method)(requests(), metadata=metadata, timeout=timeout)
        try:
            for message in data:
                outgoing.put(message)
                messages.append(next(rpc))
            outgoing.put(None)
            for reply in rpc:
                messages.append(reply)
        except (grpc.RpcError, StopIteration):
            outgoing.put(None)
    else:
        sys.exit("unknown --call %s" % kind)
    print(
        json.dumps(
            {
                "code": rpc.code().value[0],
                "details": rpc.details() or "",
                "messages": [base64.b64encode(m).decode() for m in messages],
                "initial_metadata": metadata_json(rpc.initial_metadata()),
                "trailing_metadata": metadata_json(rpc.trailing_metadata()),
            }
        ),
        flush=True,
    )
    channel.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("server")
    server.add_argument("--port", type=int, default=0)
    server.add_argument("--name", default="python")
    client = commands.add_parser("client")
    client.add_argument("--target", required=True)
    client.add_argument("--call", required=True, choices=sorted(DEFAULT_METHODS))
    client.add_argument("--method")
    client.add_argument("--data", action="append", default=[])
    client.add_argument("--metadata", action="append", default=[])
    client.add_argument("--timeout-ms", type=int)
    args = parser.parse_args()
    if args.command == "server":
        serve(args)
    else:
        call(args)


if __name__ == "__main__":
    main()
