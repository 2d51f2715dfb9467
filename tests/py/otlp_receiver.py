"""A small OTLP receiver for the tests (and for a look at the telemetry on a laptop).

Listens on 127.0.0.1 (a free port unless --port), accepts OTLP http/protobuf exports at
/v1/traces and /v1/metrics (what the collector sidecar receives on Cloud Run), and with --grpc
OTLP/gRPC exports too (the TraceService and MetricsService, on a second free port unless
--grpc-port); appends one JSON object a line to --out: {"signal": "traces"|"metrics",
"protocol": "http/protobuf"|"grpc", "body": <the request as protobuf JSON>}. Prints
{"port": N} (and "grpc_port") on stdout once listening. Stops on SIGTERM.

Needs opentelemetry-proto, and grpcio for --grpc (scripts/setup.sh installs both in the
`otlp` venv).
"""

import argparse
import gzip
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

SIGNALS = {
    "/v1/traces": ("traces", ExportTraceServiceRequest, ExportTraceServiceResponse),
    "/v1/metrics": ("metrics", ExportMetricsServiceRequest, ExportMetricsServiceResponse),
}


def start_grpc(port, record):
    """Serves OTLP/gRPC on 127.0.0.1:`port` (0: a free one); returns (server, port)."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            record("traces", "grpc", request)
            return ExportTraceServiceResponse()

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request, context):
            record("metrics", "grpc", request)
            return ExportMetricsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, help="JSON lines file to append to")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--grpc", action="store_true", help="also receive OTLP/gRPC")
    ap.add_argument("--grpc-port", type=int, default=0)
    args = ap.parse_args()
    lock = threading.Lock()
    out = open(args.out, "a", encoding="utf-8")

    def record(name, protocol, request):
        line = json.dumps({"signal": name, "protocol": protocol, "body": MessageToDict(request)})
        with lock:
            out.write(line + "\n")
            out.flush()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            known = SIGNALS.get(self.path)
            if known is None:
                self.send_error(404)
                return
            name, request_type, response_type = known
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_error(415, "http/protobuf only")
                return
            request = request_type()
            request.ParseFromString(body)
            record(name, "http/protobuf", request)
            reply = response_type().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    ports = {"port": server.server_address[1]}
    grpc_server = None
    if args.grpc:
        grpc_server, ports["grpc_port"] = start_grpc(args.grpc_port, record)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(json.dumps(ports), flush=True)
    server.serve_forever()
    if grpc_server is not None:
        grpc_server.stop(grace=1).wait()
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
